"""A whole GPU session in one command: the CNN and the MobileNet trained side by side on the one
GPU for a fixed time each, GPU utilisation sampled throughout, both models shipped and every run's
small files packed to bring back.

    KERAS_BACKEND=jax python -m bench.gpu_session --data pack/train.npz.xz --minutes 7 --out $OUT
    python -m bench.gpu_session --quick --out /tmp/gpu-session     # the sample, tiny networks: try it here (~1 minute)

The lent machine gives a session 15 minutes of device time in all, its start (1-2 minutes)
included, and one command may run 10 minutes: so one prepared command does everything. Each
family is an ordinary `train_<family>.py` run with `--time-budget`, which spreads the cosine schedule
over the minutes given, so the run ends decayed whatever the chip's speed. `--minutes 7` leaves
about 1.5 minutes for start-up, the confusion matrices and shipping within a 10-minute command.

Into --out (at most 8 files come back from the machine, 16 MiB each): `<family>.keras` (shipped:
float16, no optimizer; `--int8` for int8 kernels), `runs.tar.gz` (each run's config.json,
history.csv, metrics.json and confusion_matrix.csv), `<family>.log` (written as the run goes, so
it comes back even from a command stopped at its limit) and `summary.json`.
"""

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd

from bench.gpu import GpuSampler, gpu_name, minutes_to

PROJECT = Path(__file__).resolve().parent.parent
SAMPLE = PROJECT / "data" / "fer2013_sample.csv.xz"
DEFAULT_DATA = PROJECT / "pack" / "train.npz.xz"
RUN_FILES = ("config.json", "history.csv", "metrics.json", "confusion_matrix.csv")
QUICK_NETWORKS = {"cnn": "--filters 4,8 --dense 16", "mobilenet": "--alpha 0.25"}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="(default: %(default)s)")
    parser.add_argument("--minutes", type=float, default=7.0, help="training time of each run, side by side (default: %(default)s)")
    parser.add_argument("--out", required=True, help="folder for what comes back ($OUT on the lent machine)")
    parser.add_argument("--runs-dir", default=str(PROJECT / "runs" / "gpu-session"), help="(default: %(default)s)")
    parser.add_argument("--families", default="cnn,mobilenet", help="trained side by side (default: %(default)s)")
    parser.add_argument("--cnn-args", default="", help="extra train_cnn.py flags, one string, e.g. '--filters 32,64,128,256,256'")
    parser.add_argument("--mobilenet-args", default="", help="extra train_mobilenet.py flags, one string")
    parser.add_argument("--dnn-args", default="", help="extra train_dnn.py flags, one string")
    parser.add_argument("--int8", action="store_true", help="ship int8 kernels (fersuite.ship --int8)")
    parser.add_argument("--threshold", type=float, default=0.70, help="report the minutes each run took to reach this val accuracy (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="the bundled sample, tiny networks, 0.05 minutes each")
    return parser.parse_args()


def start_run(family, args, runs_dir, out):
    """One train_<family>.py process; JAX takes GPU memory as it needs it, so two runs share the chip."""
    extra = getattr(args, f"{family}_args").split()
    line = [
        sys.executable, str(PROJECT / f"train_{family}.py"), "--data", args.data, "--time-budget", str(args.minutes),
        "--epochs", "1000", "--runs-dir", str(runs_dir / family), "--quiet", *extra,
    ]
    print(" ".join(line), flush=True)
    log = open(out / f"{family}.log", "w")  # noqa: SIM115  closed in main() once the run ends
    environment = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(line, cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT, env=environment), log


def newest_run(runs_dir):
    runs = sorted(path for path in Path(runs_dir).glob("*") if (path / "config.json").is_file())
    return runs[-1] if runs else None


def ship(run_dir, destination, int8):
    line = [sys.executable, "-m", "fersuite.ship", str(run_dir / "best.keras"), str(destination), "--force", *(["--int8"] if int8 else [])]
    subprocess.run(line, cwd=PROJECT, check=True)


def summarise(family, run_dir, threshold, returncode):
    row = {"family": family, "run": str(run_dir), "returncode": returncode}
    if run_dir is None or not (run_dir / "history.csv").is_file():
        return row
    history = pd.read_csv(run_dir / "history.csv")
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    row.update(
        parameters=json.loads((run_dir / "config.json").read_text())["parameters"],
        epochs=len(history),
        best_val_accuracy=metrics.get("best_val_accuracy"),
        best_epoch=metrics.get("best_epoch"),
        first_epoch_seconds=round(float(history["seconds"].iloc[0]), 2),
        median_epoch_seconds=round(float(history["seconds"].iloc[1:].median()), 2) if len(history) > 1 else None,
        training_minutes=round(float(history["seconds"].sum()) / 60, 2),
        minutes_to_threshold=minutes_to(history, threshold),
    )
    return row


def pack(runs, out):
    """Each run's small files in one archive: at most 8 files come back from the machine."""
    with tarfile.open(out / "runs.tar.gz", "w:gz") as archive:
        for family, run_dir in runs.items():
            for name in RUN_FILES:
                if run_dir is not None and (run_dir / name).is_file():
                    archive.add(run_dir / name, arcname=f"{family}/{run_dir.name}/{name}")


def main():
    args = parse_args()
    if args.quick:
        args.data, args.minutes = str(SAMPLE), 0.05
        for family, flags in QUICK_NETWORKS.items():
            setattr(args, f"{family}_args", f"{flags} --batch-size 16 --warmup-epochs 0 {getattr(args, f'{family}_args')}")
    out, runs_dir = Path(args.out), Path(args.runs_dir) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    families = args.families.split(",")
    print(f"GPU: {gpu_name() or 'none found'}; backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}; {args.minutes:g} minutes per run", flush=True)
    started = time.perf_counter()
    with GpuSampler() as sampler:
        processes = {family: start_run(family, args, runs_dir, out) for family in families}
        codes = {}
        for family, (process, log) in processes.items():
            codes[family] = process.wait()
            log.close()
    runs = {family: newest_run(runs_dir / family) for family in families}
    rows = []
    for family in families:
        if codes[family] == 0:
            ship(runs[family], out / f"{family}.keras", args.int8)
        rows.append(summarise(family, runs[family], args.threshold, codes[family]))
    pack(runs, out)
    summary = {
        "gpu": gpu_name(),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "gpu_utilisation_median_percent": sampler.second_half_median(),
        "gpu_utilisation_samples": len(sampler.samples),
        "runs": rows,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    if any(codes.values()):
        raise SystemExit(f"a run failed: {codes}; see its log in {out}")


if __name__ == "__main__":
    main()
