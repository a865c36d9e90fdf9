"""Predict emotions with one or more trained models: a Kaggle submission, scores, or image files.

    python predict.py --model runs/cnn-.../best.keras --data ../shared/data/fer2013/test.csv.xz --out submission.csv
    python predict.py --model a.keras --model b.keras --tta flip --data test.csv.xz   # ensemble, mirror TTA only
    python predict.py --model best.keras face1.png face2.jpg                           # image files

test.csv (id,feature) -> `id,label` submission (--out, default submission.csv). fer2013.csv
(emotion,pixels,Usage) -> PublicTest/PrivateTest accuracy (Kaggle's public/private scores); a labeled
train.csv -> accuracy; for these a submission is written only when --out is given.
Without --model, every model shipped in models/ (two CNNs, the MobileNet and the DNN) is used as an
ensemble; models/README.md has the figures.

    python predict.py --validation --model a.keras --model b.keras --data train.csv.xz   # tune

--validation scores each model and the ensemble on the validation split that train_*.py held
out, to choose models and TTA without touching the test set. Unless given, --val-split,
--split-seed and --equalize are those of the models' runs (config.json beside RUN/best.keras),
else the training scripts' defaults, as for the shipped models; a fer2013.csv holds out its
PublicTest rows whatever the split flags say.
"""

import csv
import sys
from pathlib import Path

from fersuite import cli

cli.quiet_backend_logs()

MODELS_DIR = Path(__file__).resolve().parent / "models"
# Every shipped model: 0.7224 on validation with zoom TTA against 0.7116 for the CNN alone
# (models/README.md). Subsets differ by a few faces, within one standard error, so none is picked.
DEFAULT_ENSEMBLE = ("cnn.keras", "cnn_dropout.keras", "mobilenet.keras", "dnn.keras")
SUBMISSION = "submission.csv"


def parse_args():
    from fersuite.evaluation import TTA_CHOICES

    parser = cli.Parser(description=__doc__, formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "images",
        nargs="*",
        help="image files of cropped faces (PNG/JPG, any size or colour; resized to 48x48 and "
        "histogram-equalized unless they already are, see --equalize) to classify",
    )
    parser.add_argument(
        "--model",
        action="append",
        help=f".keras file; repeat for an ensemble (default: {' + '.join(DEFAULT_ENSEMBLE)} in {MODELS_DIR.name}/)",
    )
    parser.add_argument(
        "--data",
        help="CSV to predict: test.csv (id,feature, or pixels alone: ids are the row numbers), fer2013.csv "
        "or a labeled train.csv",
    )
    parser.add_argument(
        "--out",
        help=f"submission file, compressed if it ends in .gz, .bz2, .xz or .zip "
        f"(default: {SUBMISSION} for a test.csv; none for labeled data)",
    )
    parser.add_argument(
        "--force", action="store_true", help="overwrite an existing submission (never --data or a --model)"
    )
    parser.add_argument(
        "--tta",
        choices=TTA_CHOICES,
        default="zoom",
        help="test-time augmentation, views averaged: flip = the face and its mirror; "
        "crops = those and 4 shifted crops; zoom = the face and its mirror, each also 10%% closer and farther "
        "(6 views; +0.6 points over flip for the shipped ensemble on validation) (default: %(default)s)",
    )
    cli.add_equalize(parser, default_text="as the models' runs trained, else auto")
    parser.add_argument("--batch-size", type=cli.positive_int, default=256, help="(default: %(default)s)")
    parser.add_argument(
        "--validation",
        action="store_true",
        help="score each model and the ensemble on the validation split of a labeled --data; writes no submission",
    )
    parser.add_argument(
        "--val-split",
        type=cli.open_fraction,
        help="with --validation: as given to train_*.py (default: the models' runs', else 0.1)",
    )
    parser.add_argument(
        "--split-seed",
        type=cli.numpy_seed,
        help="with --validation: as given to train_*.py (default: the models' runs', else 0)",
    )
    args = parser.parse_args()
    if args.validation and not args.data:
        parser.error("--validation needs --data with labels")
    if not args.images and not args.data:
        parser.error("give --data CSV or image files")
    models = [name for name in args.images if name.endswith(".keras")]
    if models:
        parser.error(
            f"{models[0]} is a model, not an image: give each model with its own --model "
            "(a glob such as runs/*/best.keras names several)"
        )
    if args.validation and (args.out or args.force):
        parser.error("--validation scores the held-out split and writes no submission; drop --out/--force")
    given = parser.given()
    if "equalize" not in given:
        args.equalize = None  # as the models trained: main() reads it from their runs
    split_flags = sorted({"val_split", "split_seed"} & given)
    if split_flags and not args.validation:
        parser.error(f"--{split_flags[0].replace('_', '-')} applies only with --validation")
    if args.images and args.data:
        parser.error("give either --data or image files, not both")
    if args.images and args.out:
        parser.error(
            "--out writes a submission for --data; "
            "the predictions for image files are printed (redirect them to a file)"
        )
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


def read_table(args):
    """--data with its faces read as the models' runs read theirs; when --equalize auto equalizes them,
    standard error says so."""
    from fersuite import data

    table = data.load_table(args.data, equalize=args.equalize)
    data.report_equalized(args.data, table.equalized_as_read, args.equalize, lambda line: print(line, file=sys.stderr))
    return table


def validation_split(args, paths):
    """The split train_*.py held out: --val-split and --split-seed as the models' runs trained unless
    given (a fer2013.csv holds out its PublicTest rows whatever they are)."""
    from fersuite import data, evaluation
    from fersuite.errors import UserError

    table = read_table(args)
    if table.layout != "fer2013":
        if args.val_split is None:
            args.val_split = evaluation.trained_setting(paths, data.val_split, "--val-split")
        if args.split_seed is None:
            args.split_seed = evaluation.trained_setting(paths, data.split_seed, "--split-seed")
    validation = data.split_table(table, args.val_split or 0.1, args.split_seed or 0).get("validation")
    if validation is None:
        raise UserError(f"{args.data}: has no labeled rows to hold out for validation")
    return validation


def warn_of_other_faces(args, paths, validation):
    """A run that validated on other faces than this split's (its config.json says) has trained on some
    of them: its score here is inflated. Runs from before the faces' hash are compared by count; a run
    that read its faces with another --equalize (given here) is named for that."""
    from fersuite import data, evaluation

    digest = data.faces_digest(validation.pixels)
    for path in paths:
        run = evaluation.run_config(path)
        rows = run.get("validation_rows", len(validation))
        if run and data.equalize_mode(run) != args.equalize:
            print(
                f"warning: {path} was trained on faces read with --equalize {data.equalize_mode(run)}, "
                f"scored here with --equalize {args.equalize}",
                file=sys.stderr,
            )
        elif run.get("validation_digest", digest) != digest or rows != len(validation):
            print(
                f"warning: {path} validated on other faces ({rows:,}) than this split's ({len(validation):,}): "
                "some may be faces it trained on",
                file=sys.stderr,
            )


def score_validation(args, paths, models):
    """Accuracy of each model and of their ensemble on the held-out validation split."""
    from fersuite import evaluation

    validation = validation_split(args, paths)
    warn_of_other_faces(args, paths, validation)
    print(f"validation split: {len(validation.labels):,} images, tta {args.tta}")
    each, ensemble = evaluation.each_and_ensemble(models, validation.pixels, args.tta, args.batch_size, paths)
    for path, probabilities in zip(paths, each):
        print(f"{evaluation.accuracy(validation.labels, probabilities):.4f}  {path}")
    if len(models) > 1:
        print(f"{evaluation.accuracy(validation.labels, ensemble):.4f}  ensemble of {len(models)}")


def main():
    args = parse_args()
    from fersuite import EMOTIONS, data, evaluation
    from fersuite.errors import UserError

    paths = model_paths(args)
    if args.equalize is None:  # as the models' runs read their faces
        args.equalize = evaluation.trained_setting(paths, data.equalize_mode, "--equalize")
    table = None
    if args.data and not args.validation:
        table = read_table(args)
        if not len(table.ids[evaluation.submission_rows(table)]):
            raise UserError(f"{args.data}: no PublicTest or PrivateTest rows to predict (every Usage is Training)")
        if args.out is None and table.layout == "unlabeled":
            args.out = SUBMISSION
        if args.out is not None:
            cli.check_output(args.out, args.force, inputs=[args.data, *paths])
    models = [evaluation.load_model(path) for path in paths]

    if args.validation:
        score_validation(args, paths, models)
        return

    if args.images:
        faces = data.load_images(args.images, args.equalize, log=lambda line: print(line, file=sys.stderr))
        probabilities = evaluation.predict_probabilities(models, faces.pixels, args.tta, args.batch_size, names=paths)
        rows = [(name, EMOTIONS[row.argmax()], f"{row.max():.3f}") for name, row in zip(faces.ids, probabilities)]
        csv.writer(sys.stdout, lineterminator="\n").writerows([("file", "emotion", "confidence"), *rows])
        return

    rows = evaluation.submission_rows(table)
    probabilities = evaluation.predict_probabilities(
        models, table.pixels[rows], args.tta, args.batch_size, verbose=cli.progress(), names=paths
    )
    for name, score, images in evaluation.labeled_scores(table, probabilities):
        print(f"{name}: {score:.4f} on {images} images")
    if args.out is None:
        return
    evaluation.write_submission(args.out, table.ids[rows], probabilities)
    print(
        f"wrote {args.out}: {len(probabilities)} rows (id,label); models {' + '.join(map(str, paths))}, tta {args.tta}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    cli.run(main)
