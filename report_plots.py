"""Figures that explain trained runs: history, confusion matrix, saliency, filters, embeddings.

    python report_plots.py runs/cnn-20261124-100739 runs/mobilenet-20261124-101502 --out out/figures
    python report_plots.py --figures history,compare          # every run directly in runs/

Per run, FIG_DIR/<run name>/ (with parent folders where two runs share a name) gets history.png,
confusion.png (+ confusion_matrix.csv, classification_report.csv/.md), saliency.png, filters_<layer>.png,
activations_<layer>.png, embedding_pca.png (embedding_tsne.png with --tsne), complexity.png (+ complexity.csv/.md) and
mistakes.png. FIG_DIR/ gets parameters_vs_accuracy.png, histories.png and runs.csv/.md.
The validation split is recreated from each run's config.json (data, val_split, split_seed, equalize).
"""

import argparse
import dataclasses

from fersuite import cli

cli.quiet_backend_logs()

# figures
FIGURES = (
    "history", "confusion", "saliency", "filters", "activations", "features", "complexity", "mistakes", "compare",
)


def figure_list(text):
    """'all' or a comma-separated subset of FIGURES."""
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    if chosen == ("all",):
        return FIGURES
    unknown = [name for name in chosen if name not in FIGURES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown figure '{','.join(unknown) or text}'; choose from all,{','.join(FIGURES)}"
        )
    return chosen


def parse_args(argv=None):
    parser = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run directories (default: every run in --runs-dir)")
    parser.add_argument(
        "--runs-dir",
        default="runs",
        help="where to look when no RUN_DIR is given, and a folder deeper, as a sweep keeps its runs "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        default="out/figures",
        metavar="FIG_DIR",
        help="folder for the figures: FIG_DIR/<run>/ per run, the comparison in FIG_DIR (default: %(default)s)",
    )
    parser.add_argument(
        "--figures",
        type=figure_list,
        default=FIGURES,
        help=f"comma-separated, e.g. history,confusion; any of {', '.join(FIGURES)} (default: all)",
    )

    data = parser.add_argument_group("data")
    data.add_argument("--data", help="CSV to evaluate on (default: each run's config.json 'data')")
    data.add_argument(
        "--split",
        choices=("train", "validation", "test"),
        default="validation",
        help="labeled split to evaluate (default: %(default)s)",
    )
    data.add_argument("--max-images", type=cli.positive_int, help="use only the split's first N images (default: all)")

    samples = parser.add_argument_group("samples")
    samples.add_argument(
        "--saliency-images",
        type=cli.positive_int,
        default=7,
        help="faces, round-robin over the classes (default: %(default)s)",
    )
    samples.add_argument(
        "--filters",
        type=cli.positive_int,
        default=16,
        help="filters and activation maps to draw (default: %(default)s)",
    )
    samples.add_argument(
        "--layer",
        help="conv layer for filters/activations, in every run given; a model without convolutions is skipped "
        "(default: each model's middle conv layer wider than 1x1)",
    )
    samples.add_argument(
        "--steps",
        type=cli.positive_int,
        default=40,
        help="gradient-ascent steps per filter image (default: %(default)s)",
    )
    samples.add_argument(
        "--face",
        type=cli.non_negative_int,
        default=0,
        help="index in the split of the face for activation maps (default: %(default)s)",
    )
    samples.add_argument(
        "--mistakes", type=cli.positive_int, default=16, help="most confident mistakes to show (default: %(default)s)"
    )
    samples.add_argument(
        "--embedding-images",
        type=cli.positive_int,
        default=2000,
        help="random sample for the feature embedding (default: %(default)s)",
    )
    samples.add_argument(
        "--tsne", action="store_true", help="also draw a t-SNE embedding (slow: keep --embedding-images small)"
    )
    samples.add_argument("--seed", type=cli.seed, default=0, help="(default: %(default)s)")
    samples.add_argument("--batch-size", type=cli.positive_int, default=256, help="(default: %(default)s)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from fersuite import plots

    runs = plots.distinct_names([plots.load_run(path) for path in args.runs or plots.find_runs(args.runs_dir)])
    cache = plots.RunCache()
    options = plots.Options(**{field.name: getattr(args, field.name) for field in dataclasses.fields(plots.Options)})
    plots.check_runs(runs, args.figures, options, cache)
    plots.output_dir(args.out)
    for run in runs:
        print(f"{run.name}:")
        plots.report_run(run, args.out, args.figures, options, cache)
    if "compare" in args.figures:
        plots.report_comparison(runs, args.out)


if __name__ == "__main__":
    cli.run(main)
