"""Parameters vs validation accuracy: CNN (34k to 5.9M parameters) and MobileNet (5k to 844k)
at five sizes each, two orders of magnitude per family.

    KERAS_BACKEND=jax python bench/sweep.py --data ../shared/data/fer2013/train.csv.xz --epochs 60
    python bench/sweep.py --quick            # 1 epoch per size on the bundled sample, to try it
    python bench/sweep.py --sizes cnn-374k,cnn-1.5M --epochs 60   # some sizes only

Each size is an ordinary `train_*.py` run (its own run directory under --runs-dir, with
metrics.json); the sweep then prints a table and writes runs.csv/.md, parameters_vs_accuracy.png (HW8's
question) and histories.png with report_plots' helpers. An interrupted sweep
continues where it stopped: a size whose run already finished, on the same data with the same
--epochs and flags, is not trained again (one that diverged is). A change to a training script's
defaults is not seen: give such a sweep its own --runs-dir.
"""

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))  # for `python bench/sweep.py` as well as `python -m bench.sweep`
from fersuite import cli
from fersuite.errors import UserError

cli.quiet_backend_logs()

# (family, label, flags): five sizes per family, each about 4x the one before.
SIZES = [
    ("cnn", "cnn-34k", ["--filters", "8,12,16,24,32", "--dense", "32"]),
    ("cnn", "cnn-90k", ["--filters", "8,16,24,32,64", "--dense", "64"]),
    ("cnn", "cnn-374k", ["--filters", "16,32,48,64,128", "--dense", "128,128"]),
    ("cnn", "cnn-1.5M", ["--filters", "32,64,96,128,256", "--dense", "256,256"]),
    ("cnn", "cnn-5.9M", []),
    ("mobilenet", "mobilenet-5k", ["--alpha", "0.25"]),
    ("mobilenet", "mobilenet-17k", ["--alpha", "0.5"]),
    ("mobilenet", "mobilenet-60k", ["--alpha", "1.0"]),
    ("mobilenet", "mobilenet-220k", ["--alpha", "2.0"]),
    ("mobilenet", "mobilenet-844k", ["--alpha", "4.0"]),
]
LABELS = [label for _, label, _ in SIZES]


def parse_args():
    parser = cli.Parser(
        prog=cli.module_prog(__spec__), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=cli.absolute_path, default=str(cli.DEFAULT_TRAIN), help="(default: %(default)s)")
    parser.add_argument("--epochs", type=cli.positive_int, default=60, help="per size (default: %(default)s)")
    parser.add_argument(
        "--runs-dir", type=cli.absolute_path, default=str(PROJECT / "runs" / "sweep"), help="(default: %(default)s)"
    )
    parser.add_argument(
        "--out",
        type=cli.absolute_path,
        default=None,
        help=f"folder for runs.csv/.md and the figures (default: {PROJECT / 'bench' / 'sweep'}, "
        "with --quick its quick/ folder)",
    )
    parser.add_argument("--families", default="cnn,mobilenet", help="(default: %(default)s)")
    parser.add_argument(
        "--sizes",
        default=None,
        help=f"comma-separated labels, a subset of {', '.join(LABELS)} (default: every size of --families)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 epoch per size on the bundled sample (unless --epochs, --data given)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args()
    if args.quick:
        given = parser.given()
        args.data = args.data if "data" in given else str(cli.SAMPLE)
        args.epochs = args.epochs if "epochs" in given else 1
    args.families = cli.chosen_names(parser, args.families, sorted({family for family, _, _ in SIZES}))
    args.sizes = set(args.sizes.split(",")) if args.sizes else set(LABELS)
    unknown = sorted(args.sizes - set(LABELS))
    if unknown:
        parser.error(f"unknown size {', '.join(unknown)}; the sizes are {', '.join(LABELS)}")
    return args


def recorded_settings(command):
    """A run's command line as config.json records it (shell-quoted since session 29), less the script,
    --data and --runs-dir (paths, which may have moved since)."""
    try:
        words = shlex.split(command)
    except ValueError:  # an older, unquoted record with a quote character in a path: the size is trained again
        return None
    start = next((index for index, word in enumerate(words) if word.startswith("--")), len(words))
    tokens = words[start:]
    flags = {index for index, token in enumerate(tokens) if token in ("--data", "--runs-dir")}
    return [token for index, token in enumerate(tokens) if index not in flags and index - 1 not in flags]


def finished_run(runs_dir, label, digest, settings):
    """The newest finished run of one size (not interrupted, not diverged) on the data with this content
    digest, trained with these settings (epochs and the size's flags), wherever the project, the data or
    the runs folder lay. Each size has its own runs folder, where a --quick run must not stand in for a
    full one."""
    for metrics_path in sorted((Path(runs_dir) / label).glob("*/metrics.json"), reverse=True):
        config_path = metrics_path.parent / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        same = config.get("data_digest") == digest and recorded_settings(config.get("command", "")) == settings
        metrics = json.loads(metrics_path.read_text())
        if same and not metrics.get("interrupted") and metrics.get("diverged_epoch") is None:
            return metrics_path.parent
    return None


def command_paths(family, label, args):
    """A size's training command up to its settings: the script, the data and the runs folder."""
    script = str(PROJECT / f"train_{family}.py")
    return [sys.executable, script, "--data", args.data, "--runs-dir", str(Path(args.runs_dir) / label)]


def run_sizes(args):
    """Train each missing size; returns (label, run directory) of all sizes, in SIZES order."""
    from fersuite.data import file_digest

    digest = file_digest(args.data) if Path(args.data).is_file() else None  # once: train.csv.xz is 63 MB
    sizes = []
    for family, label, flags in SIZES:
        if family not in args.families or label not in args.sizes:
            continue
        recognised_by = ["--epochs", str(args.epochs), "--quiet", *flags]
        run_dir = finished_run(args.runs_dir, label, digest, recognised_by)
        if run_dir is None:
            line = [*command_paths(family, label, args), *recognised_by]
            print(shlex.join(line), flush=True)
            if args.dry_run:
                continue
            cli.run_script(line)
            run_dir = finished_run(args.runs_dir, label, digest, recognised_by)
            if run_dir is None:
                raise UserError(f"{label}: trained, but no finished run of its settings is in {args.runs_dir}/{label}")
        sizes.append((label, run_dir))
    return sizes


def main():
    args = parse_args()
    if args.out is None:  # a quick sweep on the sample must not replace a real sweep's figures
        args.out = str(PROJECT / "bench" / "sweep" / ("quick" if args.quick else ""))
    sizes = run_sizes(args)
    if args.dry_run or not sizes:
        return
    from fersuite import plots

    runs = [replace(plots.load_run(run_dir), label=label) for label, run_dir in sizes]
    print(plots.markdown_table(plots.run_summary(runs)), end="")
    each = f"{args.epochs} epoch{'s' if args.epochs > 1 else ''} each"
    plots.report_comparison(runs, args.out, title=f"Model size vs validation accuracy, {each}")


if __name__ == "__main__":
    cli.run(main)
