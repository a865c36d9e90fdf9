"""Inference speed (images/s) of each family along predict.py's path, in batches and one image
at a time, without test-time augmentation, with the mirror image (--tta flip) and with predict.py's
default, the image and its mirror at three scales (--tta zoom, 6 views).

    python -m bench.inference                    # about 2 minutes on 2 idle cores, more when shared
    python -m bench.inference --quick            # smoke run
    python -m bench.inference --families cnn --images 4096 --single-calls 200 --rounds 5

The models are untrained: built with the default builders and the training preprocessing
(RandomAffine, identity at inference, then Rescaling), saved to a temporary .keras file and
loaded back with fersuite.evaluation.load_model, as predict.py loads a trained model. Speed does
not depend on the weights, only on the network.

  batch        fersuite.evaluation.predict_probabilities (predict.py's call: model.predict,
               batch 256) on --images faces from the test CSV
  single       one face per call, --single-calls calls, three ways: predict_probabilities (what
               predict.py does for one image file), model.predict_on_batch and model(x); with
               flip or zoom, every way runs the model once on the face's views stacked, as
               predict_probabilities does, and averages, so the ways differ only in the call
A warm-up of each measure along the timed call's path comes first (tracing). Every figure is the
median of --rounds rounds in which all of them take turns, so a change in the machine's load falls
on all of them.
"""

import tempfile
from pathlib import Path

import keras
import numpy as np

from bench import common
from fersuite import AUGMENTATION, INPUT_SHAPE, NUM_CLASSES
from fersuite.cli import DEFAULT_TEST, chosen_names, positive_int
from fersuite.data import load_table
from fersuite.evaluation import load_model, predict_probabilities, tta_views
from fersuite.models import BUILDERS, build_cnn, dnn_units_for_budget, preprocessing_layers

FAMILIES = ("cnn", "dnn", "mobilenet")
TTA_MODES = ("none", "flip", "zoom")


def saved_and_loaded(family, directory, cnn_parameters):
    """An untrained model of the family, through a .keras file like a trained one."""
    options = {"units": dnn_units_for_budget(cnn_parameters, INPUT_SHAPE, NUM_CLASSES)} if family == "dnn" else {}
    model = BUILDERS[family](INPUT_SHAPE, NUM_CLASSES, preprocessing_layers(augment=AUGMENTATION), **options)
    path = Path(directory) / f"{family}.keras"
    model.save(path)
    return load_model(path)


def averaged_views(run):
    """Single-image TTA: one call on the stacked views, then the mean of their probabilities."""

    def predict(face, tta):
        views = np.concatenate(tta_views(face, tta)).astype("float32")
        return np.asarray(run(views)).reshape(-1, len(face), NUM_CLASSES).mean(axis=0)

    return predict


def single_image_ways(model):
    return {
        "predict_probabilities": lambda face, tta: predict_probabilities([model], face, tta, batch_size=256),
        "predict_on_batch": averaged_views(model.predict_on_batch),
        "model(x)": averaged_views(lambda x: keras.ops.convert_to_numpy(model(x, training=False))),
    }


def batch_rate(model, pixels, tta, batch_size):
    predict_probabilities([model], pixels[: batch_size + 1], tta, batch_size)  # model.predict, as timed
    return common.timed(lambda: predict_probabilities([model], pixels, tta, batch_size), len(pixels))


def single_rate(predict, pixels, tta, calls):
    predict(pixels[:1], tta)

    def one_at_a_time():
        for index in range(calls):
            row = index % len(pixels)
            predict(pixels[row : row + 1], tta)

    return common.timed(one_at_a_time, calls)


def main():
    parser = common.parser(__doc__, __spec__)
    parser.add_argument("--data", default=str(DEFAULT_TEST), help="faces to predict (default: %(default)s)")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated (default: %(default)s)")
    parser.add_argument(
        "--images", type=positive_int, default=768, help="faces for the batch figure (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=256, help="predict.py's default (default: %(default)s)"
    )
    parser.add_argument(
        "--single-calls",
        type=positive_int,
        default=20,
        help="calls for each single-image figure (default: %(default)s)",
    )
    args = parser.parse_args()
    families = chosen_names(parser, args.families, FAMILIES)
    if args.quick:
        args.images, args.single_calls, args.rounds = 512, 5, 2

    machine = common.MachineReport()
    machine.start()
    pixels = load_table(args.data).pixels[: args.images]
    print(
        f"batch: {len(pixels):,} faces, batch size {args.batch_size}; single: {args.single_calls} calls of one face; "
        f"median (min-max) of {args.rounds} rounds; images per second and per CPU-second of this process"
    )
    cnn_parameters = build_cnn(INPUT_SHAPE, NUM_CLASSES).count_params()
    measures, parameters = {}, {}
    with tempfile.TemporaryDirectory(prefix="fersuite-bench-") as directory:
        for family in families:
            model = saved_and_loaded(family, directory, cnn_parameters)
            parameters[family] = model.count_params()
            for tta in TTA_MODES:
                measures[family, tta, f"batch {args.batch_size}", "predict_probabilities"] = (
                    lambda model=model, tta=tta: batch_rate(model, pixels, tta, args.batch_size)
                )
            for way, predict in single_image_ways(model).items():
                for tta in TTA_MODES:
                    measures[family, tta, "single", way] = lambda predict=predict, tta=tta: single_rate(
                        predict, pixels, tta, args.single_calls
                    )
    results = common.interleaved(measures, args.rounds)
    for family in families:
        print(f"{family} ({parameters[family]:,} parameters, untrained)")
        for (name, tta, size, way), rates in results.items():
            if name == family:
                print(f"  tta {tta:4s}  {size:10s} {way:21s} {common.spread(rates)}")
    machine.end()


if __name__ == "__main__":
    main()
