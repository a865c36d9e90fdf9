"""Histogram equalization and the shipped models: what raw faces would cost without fersuite.contrast.

    python -m bench.contrast                     # train.csv.xz's validation split: ~10 minutes on 2 cores
    python -m bench.contrast --quick             # the bundled sample's PublicTest rows, the MobileNet alone

The team's copy of FER2013 is histogram-equalized; a user's raw fer2013.csv and photos are not. The
validation faces of --data are scored by predict.py's default ensemble (--tta, zoom by default) as:
  copy             the faces as they are (equalized)
  copy again       equalized once more by OpenCV's formula, which did not make the copy
  raw stand-in     each face given a random gamma (0.5-2) and contrast (0.4-1) with a random offset:
                   narrower, uneven histograms, as in raw faces
  raw, as read     the stand-in through fersuite.contrast.as_trained, what the suite does with it
The flatness line is what fersuite.contrast judges a file by (median over faces; under FLAT = equalized).
"""

import numpy as np

from bench import common
from fersuite import contrast, evaluation
from fersuite.cli import DEFAULT_TRAIN, PROJECT, SAMPLE, chosen_names, run
from fersuite.data import load_splits
from fersuite.errors import UserError
from fersuite.evaluation import TTA_CHOICES

SHIPPED = ("cnn", "cnn_dropout", "mobilenet", "dnn")


def raw_standin(faces, seed=0):
    """Each face with a random gamma, contrast and offset: what an unequalized camera crop looks like."""
    rng = np.random.default_rng(seed)
    shape = (len(faces), 1, 1, 1)
    gamma = np.exp(rng.uniform(np.log(0.5), np.log(2.0), len(faces))).reshape(shape)
    scale = rng.uniform(0.4, 1.0, len(faces)).reshape(shape)
    offset = rng.uniform(0.0, 1.0, len(faces)).reshape(shape) * (1 - scale)
    return np.round(255 * (scale * (faces / 255.0) ** gamma + offset)).clip(0, 255).astype(np.uint8)


def main():
    parser = common.parser(__doc__, __spec__)
    parser.add_argument("--data", default=str(DEFAULT_TRAIN), help="an equalized FER CSV (default: %(default)s)")
    parser.add_argument("--models", default=",".join(SHIPPED), help="shipped models to average (default: %(default)s)")
    parser.add_argument("--tta", choices=TTA_CHOICES, default="zoom", help="(default: %(default)s)")
    args = parser.parse_args()
    names = chosen_names(parser, args.models, SHIPPED, "--models")
    if args.quick:
        if {"data", "models"} & parser.given():
            parser.error("--quick scores the bundled sample with the MobileNet; drop --data/--models")
        args.data, names = str(SAMPLE), ["mobilenet"]

    validation = load_splits(args.data, 0.1, 0).get("validation")
    if validation is None:
        raise UserError(f"{args.data}: has no labeled rows to hold out for validation")
    raw = raw_standin(validation.pixels)
    variants = {
        "copy": validation.pixels,
        "copy again": contrast.equalize(validation.pixels),
        "raw stand-in": raw,
        "raw, as read": contrast.as_trained(raw),
    }
    print(f"{args.data}: {len(validation):,} validation faces; models {', '.join(names)}; tta {args.tta}")
    changed = np.abs(variants["copy again"].astype(int) - validation.pixels).mean()
    print(f"equalizing the copy again moves its pixels by {changed:.2f} grey levels on average")
    print(f"median flatness (equalized under {contrast.FLAT}): " + "; ".join(
        f"{name} {np.median(contrast.flatness(pixels)):.1f}" for name, pixels in variants.items()
    ))
    models = [evaluation.load_model(PROJECT / "models" / f"{name}.keras") for name in names]
    print("accuracy: " + "  ".join(names) + "  ensemble")
    for name, pixels in variants.items():
        each = [evaluation.predict_probabilities([model], pixels, args.tta) for model in models]
        scores = [evaluation.accuracy(validation.labels, probabilities) for probabilities in each]
        scores.append(evaluation.accuracy(validation.labels, np.mean(each, axis=0)))
        print(f"  {name:13s} " + "  ".join(f"{score:.4f}" for score in scores), flush=True)


if __name__ == "__main__":
    run(main)
