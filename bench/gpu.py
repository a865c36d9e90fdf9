"""GPU figures (issue 6, item 5): seconds per epoch of each family at its default recipe with
mixed precision on and off, GPU utilisation while it trains, and the FLOP rate it reaches
against the chip's peak; and, from finished runs, the training minutes (the epochs' own seconds,
without data loading or checkpoint saves) to a validation accuracy.

    KERAS_BACKEND=jax python -m bench.gpu --data pack/train.npz.xz
    python -m bench.gpu --time-to 0.70 runs/cnn-20261124-140000      # minutes to 0.70 in a run
    python -m bench.gpu --quick                                      # smoke run on the sample

Each measure is an ordinary `train_<family>.py` run with `--epochs 2` and the script's default
recipe, so the figure is what a user gets; it is the second epoch's seconds from history.csv
(the first one compiles), validation on the 2,871 held-out faces included (about 4 % of an epoch's
multiply-adds). While it runs, `nvidia-smi` is sampled every 0.5 s; the utilisation is the median
of the samples taken during that timed epoch (its last 3 s at least). Training costs about 3x the forward multiply-adds
(forward, and two products in the backward pass), so the FLOP rate is
6 x multiply-adds per image (fersuite.complexity) x training images/s.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))  # for `python bench/gpu.py` as well as `python -m bench.gpu`
from fersuite import cli

FAMILIES = ("cnn", "dnn", "mobilenet")
# Dense fp16/bf16 tensor-core peak in TFLOP/s (NVIDIA data sheets, without sparsity).
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


class GpuSampler:
    """nvidia-smi's utilisation.gpu every 0.5 s in a background thread (nothing without nvidia-smi)."""

    def __init__(self):
        self.samples, self.times = [], []
        self._process = None

    def __enter__(self):
        try:
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "500"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            return self
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self):
        for line in self._process.stdout:
            if line.strip().isdigit():
                self.samples.append(int(line.strip()))
                self.times.append(time.time())

    def __exit__(self, *exc):
        if self._process:
            self._process.terminate()
            self._process.wait()

    def second_half_median(self):
        half = self.samples[len(self.samples) // 2 :]
        return statistics.median(half) if half else None

    def median_between(self, start, end):
        """The median of the samples taken from start to end (time.time() seconds), or None."""
        inside = [sample for sample, when in zip(self.samples, self.times) if start <= when <= end]
        return statistics.median(inside) if inside else None


def gpu_name():
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else None


def peak_for(name):
    for key, value in PEAK_TFLOPS.items():
        if name and all(part in name for part in key.split()):
            return value
    return None


def multiply_adds(model_path):
    from fersuite import complexity
    from fersuite.evaluation import load_model

    return int(complexity.layer_table(load_model(model_path))["multiply_adds"].sum())


def measure(family, precision, args, runs_dir):
    """One 2-epoch run of the family's script; its second-epoch seconds, img/s and GPU utilisation."""
    line = [
        sys.executable, str(PROJECT / f"train_{family}.py"), "--data", args.data, "--epochs", str(args.epochs),
        "--mixed-precision", precision, "--runs-dir", str(runs_dir), "--quiet",
    ]
    with GpuSampler() as sampler:
        cli.run_script(line, stdout=subprocess.DEVNULL)
    run_dir = next(Path(runs_dir).iterdir())
    history = pd.read_csv(run_dir / "history.csv")
    config = json.loads((run_dir / "config.json").read_text())
    seconds = float(history["seconds"].iloc[-1])
    timed_epoch_end = float(history["finished_at"].iloc[-1])
    return {
        "family": family,
        "mixed_precision": precision,
        "parameters": config["parameters"],
        "seconds_per_epoch": round(seconds, 2),
        "first_epoch_seconds": round(float(history["seconds"].iloc[0]), 2),
        "images_per_second": round(config["train_rows"] / seconds, 1),
        # at least 3 s: a DNN epoch (0.3-0.5 s on an H200) would hold one sample or none
        "gpu_utilisation_percent": sampler.median_between(timed_epoch_end - max(seconds, 3.0), timed_epoch_end),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "multiply_adds_per_image": multiply_adds(run_dir / "best.keras"),
        "val_accuracy_last_epoch": round(float(history["val_accuracy"].iloc[-1]), 4),
    }


def first_at(history, threshold):
    """The index of the first epoch whose val_accuracy reached threshold, or None."""
    reached = history.index[history["val_accuracy"] >= threshold]
    return reached[0] if len(reached) else None


def minutes_to(history, threshold):
    """Minutes of training (sum of epoch seconds, without data loading, teacher predictions or checkpoint
    saves) until val_accuracy first reached threshold, or None."""
    reached = first_at(history, threshold)
    return None if reached is None else round(float(history["seconds"][: reached + 1].sum()) / 60, 2)


def time_to(threshold, run_dirs):
    for run_dir in run_dirs:
        history = pd.read_csv(Path(run_dir) / "history.csv")
        minutes = minutes_to(history, threshold)
        if minutes is not None:
            first = first_at(history, threshold)
            print(f"{run_dir}: val_accuracy {history['val_accuracy'][first]:.4f} >= {threshold} at epoch "
                  f"{history['epoch'][first]}, {minutes:.2f} min of training")
        else:
            print(f"{run_dir}: never reached {threshold} (best {history['val_accuracy'].max():.4f} "
                  f"in {len(history)} epochs, {history['seconds'].sum() / 60:.2f} min)")


def main():
    parser = cli.Parser(
        prog=cli.module_prog(__spec__), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=cli.absolute_path, default=str(cli.DEFAULT_TRAIN), help="(default: %(default)s)")
    parser.add_argument("--families", default=",".join(FAMILIES), help="(default: %(default)s)")
    parser.add_argument(
        "--epochs", type=cli.positive_int, default=2, help="per measure; the last one is timed (default: %(default)s)"
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="the chip's dense fp16 peak (default: from the GPU's name)"
    )
    parser.add_argument(
        "--time-to", type=float, metavar="ACCURACY", help="instead: minutes to this val accuracy in RUN_DIRs"
    )
    parser.add_argument("--quick", action="store_true", help="the bundled sample, 2 epochs, to try the script")
    parser.add_argument("run_dirs", nargs="*", help="finished runs, with --time-to")
    args = parser.parse_args()
    families = cli.chosen_names(parser, args.families, FAMILIES)
    if args.time_to is not None:
        if not args.run_dirs:
            parser.error("--time-to needs at least one RUN_DIR")
        time_to(args.time_to, args.run_dirs)
        return
    if args.quick:
        args.data = str(cli.SAMPLE)
    name = gpu_name()
    peak = args.peak_tflops or peak_for(name)
    print(f"GPU: {name or 'none found'}; peak {peak or '?'} TFLOP/s dense fp16; data {args.data}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for family in families:
            for precision in ("on", "off"):
                started = time.perf_counter()
                row = measure(family, precision, args, Path(scratch) / f"{family}-{precision}")
                row["run_wall_seconds"] = round(time.perf_counter() - started, 1)
                row["tflops"] = round(6 * row["multiply_adds_per_image"] * row["images_per_second"] / 1e12, 2)
                row["share_of_peak"] = round(row["tflops"] / peak, 4) if peak else None
                rows.append(row)
                print(json.dumps(row), flush=True)
    from fersuite.plots import markdown_table

    print(markdown_table(pd.DataFrame(rows)))


if __name__ == "__main__":
    cli.run(main)
