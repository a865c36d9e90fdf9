r"""A whole GPU session in one command: several runs trained side by side on the one GPU for a
fixed time each, GPU utilisation sampled throughout, every model shipped and every run's small
files packed to bring back.

    KERAS_BACKEND=jax python -m bench.gpu_session --data pack/train.npz.xz --minutes 7 --out $OUT
    KERAS_BACKEND=jax python -m bench.gpu_session --minutes 7 --out $OUT \
        --run cnn --run "cnn --random-erasing 0.5 --label-smoothing 0.1" --run "mobilenet --alpha 1.0"
    python -m bench.gpu_session --quick --out /tmp/gpu-session     # the sample, tiny networks: try it here (~1 minute)

A run is a family and its `train_<family>.py` flags, after any NAME=value settings of that run's
environment: `--run "XLA_FLAGS=--xla_gpu_autotune_level=0 mobilenet"` spares the MobileNet the
minutes XLA spends timing convolution algorithms for each of its many layer shapes (bench/RESULTS.md,
session 12). One 5.9M CNN run leaves part of an H200 idle: four side by side trained about 49,000
images/s together, against 34,600 for one alone (bench/RESULTS.md, session 12), so one session
can compare several recipes (or seeds for an ensemble) at once.

The lent machine gives a session 15 minutes of device time in all, its start (1-2 minutes)
included, and one command may run 10 minutes: so one prepared command does everything. Each run
is an ordinary `train_<family>.py` process with `--time-budget`, which spreads the cosine schedule
over the minutes given, so the run ends decayed whatever the chip's speed. `--minutes 7` leaves
about 1.5 minutes for start-up, the confusion matrices and shipping within a 10-minute command;
`--stop-by` is the safety net: runs still training then are interrupted as by Ctrl-C (each keeps its
best model and writes its metrics) and everything is still shipped and packed.

Into --out (at most 8 files come back from the machine, 16 MiB each, so at most 5 CNN and DNN
runs): `<name>.keras` for each CNN and DNN run (shipped: float32 layers, float16 weights, no
optimizer; `--int8` for int8 kernels), `runs.tar.gz` (each run's config.json, history.csv,
metrics.json and confusion_matrix.csv, and the MobileNets' shipped `<name>.keras`, 0.1-1.7 MB
each, so up to 3 MobileNet runs can go beside 5 others), `runs.log` (every run's output, each
line prefixed by its run's name and written as it comes, so it comes back even from a command
stopped at its limit) and `summary.json`. A name is the family, numbered from the second run of
a family on: cnn, cnn-2, ...
"""

import argparse
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pandas as pd

from bench.gpu import FAMILIES, GpuSampler, first_at, gpu_name, minutes_to
from fersuite.atomic import atomic_path, write_json
from fersuite.cli import PROJECT, SAMPLE, absolute_path, module_prog

DEFAULT_DATA = PROJECT / "pack" / "train.npz.xz"
RUN_FILES = ("config.json", "history.csv", "metrics.json", "confusion_matrix.csv")
MAX_FILES = 5  # CNN and DNN models; + runs.tar.gz, runs.log and summary.json = the 8 files that come back
ARCHIVED = ("mobilenet",)  # families whose shipped models are small enough to travel in runs.tar.gz
MAX_RUNS = MAX_FILES + 3  # runs beyond 5 share the chip more thinly; 8 is plenty
# --quick: tiny networks, and mixed precision as on a GPU, so shipping a float16-trained model is tried too.
QUICK_FLAGS = {
    "cnn": "--filters 4,8 --dense 16",
    "dnn": "--units 16",
    "mobilenet": "--alpha 0.25",
}


def parse_args():
    parser = argparse.ArgumentParser(
        prog=module_prog(__spec__), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=absolute_path, default=str(DEFAULT_DATA), help="(default: %(default)s)")
    parser.add_argument(
        "--minutes", type=float, default=7.0, help="training time of each run, side by side (default: %(default)s)"
    )
    parser.add_argument(
        "--out", type=absolute_path, required=True, help="folder for what comes back ($OUT on the lent machine)"
    )
    parser.add_argument(
        "--runs-dir", type=absolute_path, default=str(PROJECT / "runs" / "gpu-session"), help="(default: %(default)s)"
    )
    parser.add_argument(
        "--run",
        action="append",
        metavar="'[NAME=value ...] FAMILY [FLAGS]'",
        help=f"one run: environment settings for it, a family ({', '.join(FAMILIES)}) and its train_<family>.py flags; "
        f"repeat, at most {MAX_RUNS}, {MAX_FILES} of them CNN or DNN (default: cnn and mobilenet)",
    )
    parser.add_argument("--int8", action="store_true", help="ship int8 kernels (fersuite.ship --int8)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.70,
        help="report the minutes each run took to reach this val accuracy (default: %(default)s)",
    )
    parser.add_argument(
        "--stop-by",
        type=float,
        metavar="UNIX_SECONDS",
        help="interrupt every run still training at this time (as Ctrl-C does: each keeps its best model and "
        "metrics; 30 s later, killed), then ship and pack what there is; e.g. $(( $(date +%%s) + 520 )) at "
        "the command's start leaves a 590 s command 70 s (default: none)",
    )
    parser.add_argument("--quick", action="store_true", help="the bundled sample, tiny networks, 0.05 minutes each")
    args = parser.parse_args()
    args.runs = named_runs(args.run or ["cnn", "mobilenet"], parser)
    if args.stop_by is not None and args.stop_by <= time.time():
        parser.error(f"--stop-by {args.stop_by:.0f} has passed: give a time to come, in Unix seconds")
    return args


def named_runs(specs, parser):
    """{name: (family, flags, environment)} in the order given; the second cnn is cnn-2, and so on."""
    if len(specs) > MAX_RUNS:
        parser.error(f"at most {MAX_RUNS} --run")
    runs, counts = {}, {}
    for spec in specs:
        words = spec.split()
        settings = list(itertools.takewhile(lambda word: re.fullmatch(r"[A-Za-z_]\w*=.*", word), words))
        family, *flags = words[len(settings) :] or [""]
        if family not in FAMILIES:
            parser.error(f"--run {spec!r}: the family must be one of {', '.join(FAMILIES)}")
        counts[family] = counts.get(family, 0) + 1
        environment = dict(setting.split("=", 1) for setting in settings)
        runs[family if counts[family] == 1 else f"{family}-{counts[family]}"] = (family, flags, environment)
    if sum(count for family, count in counts.items() if family not in ARCHIVED) > MAX_FILES:
        parser.error(
            f"at most {MAX_FILES} CNN and DNN --run: "
            "each model comes back as its own file, and only 8 files come back from the machine"
        )
    return runs


def copy_lines(name, source, log):
    for line in source:
        log.write(f"[{name}] {line}")
        log.flush()


def start_run(name, family, flags, environment, args, runs_dir, log):
    """One train_<family>.py process; JAX takes GPU memory as it needs it, so the runs share the chip."""
    line = [
        sys.executable, str(PROJECT / f"train_{family}.py"), "--data", args.data, "--time-budget", str(args.minutes),
        "--epochs", "1000", "--runs-dir", str(runs_dir / name), "--quiet", *flags,
    ]
    print(f"[{name}] {' '.join([*(f'{key}={value}' for key, value in environment.items()), *line])}", flush=True)
    settings = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PYTHONUNBUFFERED": "1", **environment}
    process = subprocess.Popen(
        line, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=settings
    )
    reader = threading.Thread(target=copy_lines, args=(name, process.stdout, log), daemon=True)
    reader.start()
    return process, reader


def wait_for(processes, stop_by, grace=30.0):
    """Each run's exit status, and the names of those interrupted at stop_by (time.time() seconds): each
    gets one SIGINT, as Ctrl-C (a second would cut its metrics short), and `grace` seconds, shared, to
    write its metrics before it is killed."""
    codes, stopped = {}, []
    for name, (process, _) in processes.items():
        try:
            codes[name] = process.wait(timeout=None if stop_by is None else max(0.0, stop_by - time.time()))
        except subprocess.TimeoutExpired:
            break
    for name, (process, _) in processes.items():
        if name not in codes and process.poll() is None:
            print(f"[{name}] still training at --stop-by: interrupted, keeping its best model", flush=True)
            process.send_signal(signal.SIGINT)
            stopped.append(name)
    killed_at = time.time() + grace
    for name, (process, reader) in processes.items():
        if name not in codes:
            try:
                codes[name] = process.wait(timeout=max(0.0, killed_at - time.time()))
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        reader.join()
    return codes, stopped


def newest_run(runs_dir):
    runs = sorted(path for path in Path(runs_dir).glob("*") if (path / "config.json").is_file())
    return runs[-1] if runs else None


def ship(run_dir, destination, int8):
    """Start shipping one run's best model; the runs ship side by side, as each takes seconds of
    start-up and loading that would add up inside the command's 10 minutes."""
    line = [
        sys.executable, "-m", "fersuite.ship", str(run_dir / "best.keras"), str(destination), "--force",
        *(["--int8"] if int8 else []),
    ]
    return subprocess.Popen(line, cwd=PROJECT)


def summarise(name, family, flags, environment, run_dir, threshold, returncode, launched):
    row = {
        "name": name,
        "family": family,
        "flags": " ".join(flags),
        "environment": environment,
        "run": str(run_dir),
        "returncode": returncode,
    }
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
        wall_minutes_to_threshold=wall_minutes_to(history, threshold, launched),
    )
    return row


def wall_minutes_to(history, threshold, launched):
    """Minutes from the run's launch (imports, data loading, teachers and compiles included) to the end
    of the first epoch at threshold, or None."""
    reached = first_at(history, threshold)
    if reached is None or "finished_at" not in history:
        return None
    return round((float(history["finished_at"][reached]) - launched) / 60, 2)


def pack(runs, models, out):
    """Each run's small files and the small shipped models in one archive: at most 8 files come
    back from the machine."""
    with atomic_path(out / "runs.tar.gz", suffix=".tar.gz") as temporary, tarfile.open(temporary, "w:gz") as archive:
        for name, run_dir in runs.items():
            for file_name in RUN_FILES:
                if run_dir is not None and (run_dir / file_name).is_file():
                    archive.add(run_dir / file_name, arcname=f"{name}/{run_dir.name}/{file_name}")
        for model in models:
            archive.add(model, arcname=model.name)


def main():
    args = parse_args()
    if args.quick:
        args.data, args.minutes = str(SAMPLE), 0.05
        args.runs = {
            name: (
                family,
                [
                    *QUICK_FLAGS[family].split(), "--batch-size", "16", "--warmup-epochs", "0",
                    "--mixed-precision", "on", *flags,
                ],
                environment,
            )
            for name, (family, flags, environment) in args.runs.items()
        }
    out, runs_dir = Path(args.out), Path(args.runs_dir) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    gpu = gpu_name()
    print(f"GPU: {gpu or 'none found'}; backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}; "
          f"{args.minutes:g} minutes per run", flush=True)
    started, launched = time.perf_counter(), time.time()
    with GpuSampler() as sampler, open(out / "runs.log", "w") as log:
        processes = {name: start_run(name, *run, args, runs_dir, log) for name, run in args.runs.items()}
        codes, stopped = wait_for(processes, args.stop_by)
    runs = {name: newest_run(runs_dir / name) for name in args.runs}
    destinations = {
        name: (runs_dir if family in ARCHIVED else out) / f"{name}.keras" for name, (family, *_) in args.runs.items()
    }
    finished = [
        name
        for name in args.runs
        if codes[name] == 0 or (name in stopped and runs[name] is not None and (runs[name] / "best.keras").is_file())
    ]
    shipping = {name: ship(runs[name], destinations[name], args.int8) for name in finished}
    shipped = {name: process.wait() == 0 for name, process in shipping.items()}
    rows = [
        {
            **summarise(name, *run, runs[name], args.threshold, codes[name], launched),
            "stopped_at_deadline": name in stopped,
            "shipped": shipped.get(name, False),
        }
        for name, run in args.runs.items()
    ]
    pack(runs, [destinations[name] for name, done in shipped.items() if done and args.runs[name][0] in ARCHIVED], out)
    summary = {
        "gpu": gpu,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "gpu_utilisation_median_percent": sampler.second_half_median(),
        "gpu_utilisation_samples": len(sampler.samples),
        "runs": rows,
    }
    write_json(out / "summary.json", summary)
    print(json.dumps(summary, indent=2))
    failed = {name: code for name, code in codes.items() if code != 0 and name not in stopped}
    unshipped = [name for name in args.runs if not shipped.get(name)]
    if failed or unshipped:
        raise SystemExit(f"runs failed: {failed}; not shipped: {unshipped}; see {out / 'runs.log'}")


if __name__ == "__main__":
    main()
