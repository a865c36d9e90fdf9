"""Shared by the benchmark scripts: the machine and its load, the training-speed timer, flags.

Every figure is printed with the context needed to judge it (cores, backend, other busy
processes, load average), because on a shared CPU the same script gives different numbers.
"""

import argparse
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import keras
import numpy as np

from fersuite import backend
from fersuite.cli import Parser, module_prog, positive_int

BATCH_SIZE = 128
# Building many models in one process makes TensorFlow warn about retracing; that is expected here.
logging.getLogger("tensorflow").setLevel(logging.ERROR)


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def hardware():
    """One line for RESULTS.md: cores, CPU, backend and library versions."""
    versions = backend.versions()
    engine = versions["backend"]
    engine_version = versions.get(engine, "")
    return f"{os.cpu_count()}-core CPU ({cpu_model()}), {engine} {engine_version}, Keras {versions['keras']}"


def _process_ticks():
    """CPU ticks used so far by every other process, by pid (from /proc/<pid>/stat)."""
    ticks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
    return ticks


def _command(pid):
    try:
        text = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
    return " ".join(text.split())[:110] or "?"


def busy_processes(window=1.0, threshold=0.1):
    """Other processes using more than `threshold` of a core over `window` seconds."""
    before = _process_ticks()
    time.sleep(window)
    after = _process_ticks()
    hertz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, ticks in after.items():
        share = (ticks - before.get(pid, ticks)) / hertz / window
        if share > threshold:
            busy.append((share, pid, _command(pid)))
    return sorted(busy, reverse=True)


def _busy_seconds():
    """CPU seconds the whole machine has spent busy (not idle, not waiting on I/O) since boot."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


class MachineReport:
    """Prints the machine, its load and its busy processes at the start and end of a run, and at
    the end how many cores other processes kept busy on average while the benchmark ran."""

    def start(self):
        self._print("start")
        self.machine = _busy_seconds()
        self.own = sum(os.times()[:2])
        self.started = time.perf_counter()

    def end(self):
        elapsed = time.perf_counter() - self.started
        own = sum(os.times()[:2]) - self.own
        others = max(0.0, _busy_seconds() - self.machine - own)
        self._print("end")
        print(
            f"[end] over {elapsed:.0f} s: this benchmark used {own / elapsed:.2f} cores, "
            f"other processes {others / elapsed:.2f} of {os.cpu_count()} cores on average"
        )

    def _print(self, label):
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
        print(f"[{label}] {datetime.now():%Y-%m-%d %H:%M:%S}  {hardware()}  load average {load}")
        busy = busy_processes()
        for share, pid, command in busy:
            print(f"[{label}] busy process: {share:4.0%} of a core, pid {pid}: {command}")
        if not busy:
            print(f"[{label}] no other busy process")


def parser(description, spec):
    """argparse with the flags every script shares; `spec`, the module's __spec__, names it in usage."""
    result = Parser(
        prog=module_prog(spec), description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    result.add_argument("--quick", action="store_true", help="a short smoke run (tiny sizes) to check the script works")
    result.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="each figure is the median of this many interleaved rounds (default: %(default)s)",
    )
    return result


def compile_like_suite(model):
    """Adam + cross-entropy + accuracy, as fersuite.training compiles the MobileNet and the DNN (jit
    left on 'auto'; the CNN's AdamW adds one weight-decay update per step)."""
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"]
    )
    return model


@dataclass
class Rate:
    """`images` done in `wall` seconds of wall-clock time and `cpu` seconds of this process's CPU
    time (all its threads). On a shared machine the wall figure depends on the other jobs; images
    per CPU-second depends less on them (not at all only on an idle machine: shared caches and
    threads spinning while they wait still count), so it is printed next to it for comparisons."""

    images: int
    wall: float
    cpu: float

    @property
    def per_second(self):
        return self.images / self.wall

    @property
    def per_cpu_second(self):
        return self.images / self.cpu


def timed(call, images):
    """Run call() once; the Rate of `images` over its wall and CPU time."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return Rate(images, time.perf_counter() - wall, time.process_time() - cpu)


class StepTimer(keras.callbacks.Callback):
    """Wall and CPU time at the end of every training batch, taken once its logs are numbers, so
    each stamp comes after its step has really finished. Marked async-safe like the suite's own
    callbacks: on JAX, Keras then reads the logs in a worker thread and fit need not wait for each
    step, as in a training script (a timer that made it wait would time another loop)."""

    async_safe = True

    def __init__(self):
        super().__init__()
        self.stamps = {}

    def on_train_batch_end(self, batch, logs=None):
        self.stamps[batch] = (time.perf_counter(), time.process_time())

    def rate(self, warmup, batch_size):
        """Steady state: the batches after the first `warmup` (tracing, compiling)."""
        last = max(self.stamps)
        (wall_start, cpu_start), (wall_end, cpu_end) = self.stamps[warmup - 1], self.stamps[last]
        return Rate((last + 1 - warmup) * batch_size, wall_end - wall_start, cpu_end - cpu_start)


def fit_rate(model, inputs, labels, warmup, steps, batch_size=BATCH_SIZE, callbacks=()):
    """model.fit for warmup + steps batches of NumPy arrays (or one PyDataset); Rate of the last `steps`."""
    timer = StepTimer()
    callbacks = [*callbacks, timer]
    if labels is None:
        model.fit(inputs, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=callbacks)
    else:
        count = (warmup + steps) * batch_size
        model.fit(
            inputs[:count],
            labels[:count],
            batch_size=batch_size,
            epochs=1,
            shuffle=True,
            verbose=0,
            callbacks=callbacks,
        )
    return timer.rate(warmup, batch_size)


def repeat_to(pixels, labels, count):
    """At least `count` rows, cycling through the data when a quick run loaded fewer."""
    rows = np.arange(count) % len(pixels)
    return pixels[rows], labels[rows]


def interleaved(measures, rounds):
    """Run every measure once per round, in turn, so a change in the machine's load while the
    benchmark runs hits all of them alike; returns each measure's values, one per round."""
    values = {name: [] for name in measures}
    for round_number in range(1, rounds + 1):
        for name, measure in measures.items():
            values[name].append(measure())
        print(f"  round {round_number}/{rounds} done", flush=True)
    return values


def median_rate(rates):
    return statistics.median(rate.per_second for rate in rates)


def median_cpu_rate(rates):
    return statistics.median(rate.per_cpu_second for rate in rates)


def spread(rates):
    """'median (min-max) images/s, median images per CPU-second' of one measure's rounds."""
    speeds = [rate.per_second for rate in rates]
    return (
        f"{statistics.median(speeds):10,.1f} ({min(speeds):,.1f}-{max(speeds):,.1f}) /s"
        f"  {median_cpu_rate(rates):10,.1f} /CPU-s"
    )


def ratio(numerator, denominator, target=None):
    """'a / b' of median images/s, and of median images per CPU-second in brackets; with a target,
    whether the images/s ratio reaches it."""
    wall = median_rate(numerator) / median_rate(denominator)
    cpu = median_cpu_rate(numerator) / median_cpu_rate(denominator)
    verdict = "" if target is None else f", target >= {target:g}: {'met' if wall >= target else 'MISSED'}"
    return f"{wall:.2f} (per CPU-second {cpu:.2f}){verdict}"
