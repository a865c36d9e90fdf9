"""Predict emotions with one or more trained models: a Kaggle submission, scores, or image files.

    python predict.py --model runs/cnn-.../best.keras --data ../shared/data/fer2013/test.csv.xz --out submission.csv
    python predict.py --model a.keras --model b.keras --tta flip --data test.csv.xz   # ensemble, mirror TTA only
    python predict.py --model best.keras face1.png face2.jpg                           # image files

test.csv (id,feature) -> `id,label` submission. fer2013.csv (emotion,pixels,Usage) -> also prints
PublicTest/PrivateTest accuracy (Kaggle's public/private scores). A labeled train.csv -> accuracy.
Without --model, every model shipped in models/ (two CNNs, the MobileNet and the DNN) is used as an
ensemble; models/README.md has the figures.

    python predict.py --validation --model a.keras --model b.keras --data train.csv.xz   # tune

--validation scores each model and the ensemble on the validation split that train_*.py held
out (same --val-split and --split-seed), to choose models and TTA without touching the test set.
"""

import os
import sys
from pathlib import Path

from fersuite import cli

cli.quiet_backend_logs()

MODELS_DIR = Path(__file__).resolve().parent / "models"
# Every shipped model: 0.7259 on validation with zoom TTA against 0.7116 for the CNN alone
# (models/README.md). Subsets differ by a few faces, within one standard error, so none is picked.
DEFAULT_ENSEMBLE = ("cnn.keras", "cnn_dropout.keras", "mobilenet.keras", "dnn.keras")


def parse_args():
    from fersuite.evaluation import TTA_CHOICES

    parser = cli.Parser(description=__doc__, formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", help="image files (PNG/JPG, any size or colour) to classify")
    parser.add_argument("--model", action="append", help=f".keras file; repeat for an ensemble (default: {' + '.join(DEFAULT_ENSEMBLE)} in {MODELS_DIR.name}/)")
    parser.add_argument("--data", help="CSV to predict: test.csv (id,feature), fer2013.csv or a labeled train.csv")
    parser.add_argument("--out", default="submission.csv", help="submission file (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing submission")
    parser.add_argument("--tta", choices=TTA_CHOICES, default="zoom", help="test-time augmentation, views averaged: flip = the face and its mirror; crops = those and 4 shifted crops; zoom = the face and its mirror, each also 10%% closer and farther (6 views; +0.9 points over flip for the shipped ensemble on validation) (default: %(default)s)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=256, help="(default: %(default)s)")
    parser.add_argument("--validation", action="store_true", help="score each model and the ensemble on the validation split of a labeled --data; writes no submission")
    parser.add_argument("--val-split", type=cli.open_fraction, default=0.1, help="with --validation: as given to train_*.py (default: %(default)s)")
    parser.add_argument("--split-seed", type=int, default=0, help="with --validation: as given to train_*.py (default: %(default)s)")
    args = parser.parse_args()
    if args.validation and not args.data:
        parser.error("--validation needs --data with labels")
    if not args.images and not args.data:
        parser.error("give --data CSV or image files")
    if args.images and args.data:
        parser.error("give either --data or image files, not both")
    return args


def model_paths(args):
    from fersuite.errors import UserError

    if args.model:
        return args.model
    shipped = [MODELS_DIR / name for name in DEFAULT_ENSEMBLE]
    missing = [str(path) for path in shipped if not path.is_file()]
    if missing:
        raise UserError(f"no --model given and the default model is missing: {', '.join(missing)}")
    return shipped


def check_output(path, force):
    """Refuse before any work is done, so nothing is half-done or overwritten by accident."""
    from fersuite.errors import UserError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a file name for the submission")
    if path.exists() and not force:
        raise UserError(f"{path}: already exists; pass --force to overwrite it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{parent}: output directory does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{parent}: output directory is not writable")


def score_validation(args, paths, models):
    """Accuracy of each model and of their ensemble on the held-out validation split."""
    from fersuite import data, evaluation
    from fersuite.errors import UserError

    validation = data.load_splits(args.data, args.val_split, args.split_seed).get("validation")
    if validation is None:
        raise UserError(f"{args.data}: has no labeled rows to hold out for validation")
    print(f"validation split: {len(validation.labels):,} images, tta {args.tta}")
    total = 0
    for path, model in zip(paths, models):
        probabilities = evaluation.predict_probabilities([model], validation.pixels, args.tta, args.batch_size)
        total = total + probabilities
        print(f"{evaluation.accuracy(validation.labels, probabilities):.4f}  {path}")
    if len(models) > 1:
        print(f"{evaluation.accuracy(validation.labels, total):.4f}  ensemble of {len(models)}")


def main():
    args = parse_args()
    from fersuite import EMOTIONS, data, evaluation

    if args.data and not args.validation:
        check_output(args.out, args.force)
    paths = model_paths(args)
    models = [evaluation.load_model(path) for path in paths]

    if args.validation:
        score_validation(args, paths, models)
        return

    if args.images:
        faces = data.load_images(args.images)
        probabilities = evaluation.predict_probabilities(models, faces.pixels, args.tta, args.batch_size)
        print("file,emotion,confidence")
        for name, row in zip(faces.ids, probabilities):
            print(f"{name},{EMOTIONS[row.argmax()]},{row.max():.3f}")
        return

    table = data.load_table(args.data)
    rows = table.usage != "Training" if table.layout == "fer2013" else slice(None)
    probabilities = evaluation.predict_probabilities(models, table.pixels[rows], args.tta, args.batch_size, verbose=1, names=paths)
    if table.layout == "fer2013":
        for usage, label in (("PublicTest", "public"), ("PrivateTest", "private")):
            chosen = table.usage[rows] == usage
            if chosen.any():
                score = evaluation.accuracy(table.labels[rows][chosen], probabilities[chosen])
                print(f"{label} ({usage}) accuracy: {score:.4f} on {chosen.sum()} images")
    elif table.layout == "labeled":
        print(f"accuracy: {evaluation.accuracy(table.labels, probabilities):.4f} on {len(table.labels)} images")
    evaluation.write_submission(args.out, table.ids[rows], probabilities)
    print(f"wrote {args.out}: {len(probabilities)} rows (id,label); models {' + '.join(map(str, paths))}, tta {args.tta}", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main)
