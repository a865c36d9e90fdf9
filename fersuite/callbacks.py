"""The Keras callbacks of a training run: checkpoints and history, the time budget, NaN and Ctrl-C.

Each does one job at an epoch or batch boundary of fit's own loop. StopOnNaN, the one that runs
after every training batch, is marked safe for Keras to run off the loop's thread, so that under
JAX fit need not wait for each step (the others run once an epoch, or only note a Ctrl-C)."""

import contextlib
import json
import math
import os
import signal
import threading
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from fersuite.atomic import save_model, write_text
from fersuite.errors import UserError

MONITOR = "val_accuracy"
COSINE_FLOOR = 0.01  # a cosine schedule ends at this share of its peak learning rate
RESUME_STATE = "resume_state.json"  # inside last.keras: epochs done and patience counters
BEST_RECORD = "best_record.json"  # inside best.keras: the history row of the epoch it holds
COUNTERS = ("wait", "best", "best_epoch", "cooldown_counter")  # of EarlyStopping and ReduceLROnPlateau


LOCK = "training.lock"  # held by the process training in a run directory


@contextlib.contextmanager
def training_lock(run_dir):
    """Held while a process trains in run_dir, so a second --resume of a run still training is refused:
    both would write best.keras, last.keras and history.csv, each by its own best score. The system lets
    go of it when the process ends, even killed. No lock where there can be none (no fcntl, as on
    Windows; a file system without flock; no such folder, which the caller then refuses)."""
    handle = _locked(Path(run_dir) / LOCK)
    if handle is None:
        yield
        return
    try:
        yield
    finally:
        (Path(run_dir) / LOCK).unlink(missing_ok=True)  # left behind only by a killed process
        handle.close()


def _locked(path):
    """The lock file, open and locked exclusively; None where there can be no lock."""
    try:
        import fcntl
    except ImportError:
        return None
    while True:
        try:
            handle = open(path, "a")  # noqa: SIM115  open while the run trains; training_lock closes it
        except OSError:
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UserError(f"{path.parent}: another process is training in it; wait for it or stop it first") from None
        except OSError:
            handle.close()
            return None
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()  # its holder removed this file as it ended: lock the one at the path now


def lock_state(run_dir):
    """'running' while a process holds run_dir's training lock, 'killed' when a process left it behind,
    None without one (the run ended, or predates the lock, or there can be none)."""
    try:
        import fcntl

        with open(Path(run_dir) / LOCK) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return "running"
            return "killed"
    except (ImportError, OSError):
        return None


def read_entry(path, name=RESUME_STATE):
    """What a run saved beside a .keras file's weights (last.keras's resume state, best.keras's
    history row), or None if it holds none."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(name))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def best_row(history):
    """The row of a history table with the best validation accuracy (the first, on a tie), or None before any."""
    if history is None or MONITOR not in history or not history[MONITOR].notna().any():
        return None
    return history.loc[history[MONITOR].idxmax()]


@contextlib.contextmanager
def averaged_weights(model):
    """With --ema, the optimizer's moving average of the weights in their place (what validation
    scored; keras.callbacks.SwapEMAWeights swaps it in around each evaluation), then the weights back.

    The average smooths the swings of the weights while the learning rate is high; at the end of a
    short cosine run it trails them (bench/RESULTS.md), hence off by default. When fit ends Keras
    writes the average into the weights, so a last.keras saved then holds it."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    if not getattr(optimizer, "use_ema", False):
        yield
        return
    pairs = list(zip(optimizer._trainable_variables, optimizer._model_variables_moving_average))
    weights = [keras.ops.convert_to_numpy(variable) for variable, _ in pairs]
    for variable, average in pairs:
        variable.assign(average)
    try:
        yield
    finally:
        for (variable, _), value in zip(pairs, weights):
            variable.assign(value)


class RunCheckpoint(keras.callbacks.Callback):
    """After each epoch, atomically: history.csv, best.keras on a new best, and every
    `resume_every` seconds, on a new best and at the end last.keras with the resume state inside.

    Owning history and the best score here (rather than CSVLogger + ModelCheckpoint) keeps a
    resumed run's history free of repeated epochs and its best model from being overwritten
    by a worse one. last.keras holds the optimizer too (118 MB for the 5.9M CNN): on a GPU,
    where an epoch takes a second, saving it after each one cost a third of the run's time.
    The first epoch is always saved, so an interrupted run can always be resumed; each new best is
    too, so a resume never runs again the epoch best.keras holds (a Ctrl-C 60 fast epochs after the
    last save left a best from epochs the resumed run then replaced in history.csv).

    `patient`: the EarlyStopping / ReduceLROnPlateau callbacks, which must come before this one in
    fit's list: their counters (epochs without a new best) are saved with last.keras and put back
    after they zero them at the start of a resumed fit, which then stops and decays where the
    uninterrupted run would have.
    """

    def __init__(self, run_dir, history=None, best_record=None, resume_every=60.0, patient=(), counters=None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.rows = list(history or [])
        self.session_start = len(self.rows)  # rows before it come from the sessions before a resume
        # best.keras's epoch: after a resume it may be one that was run again since, not in self.rows
        self.best_record = best_record
        self.resume_every = resume_every
        self.patient = list(patient)
        self.counters = counters or {}
        self.diverged_epoch = None
        self._epoch_start = None
        self._saved_epochs = None
        self._saved_at = -math.inf

    @property
    def best(self):
        return -math.inf if self.best_record is None else self.best_record[MONITOR]

    def on_train_begin(self, logs=None):
        for callback in self.patient:
            for name, value in self.counters.get(type(callback).__name__, {}).items():
                setattr(callback, name, value)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        # ReduceLROnPlateau, which runs first, puts the epoch's rate in the logs before it lowers it
        logs.setdefault("learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        logs["seconds"] = time.perf_counter() - self._epoch_start
        row = {"epoch": epoch + 1, **{key: float(value) for key, value in logs.items()}}
        row["finished_at"] = time.time()  # the clock, to line an epoch up with GPU samples or a session's start
        self.rows.append(row)
        if not math.isfinite(logs.get("loss", 0.0)):
            self.diverged_epoch = epoch + 1
            self.model.stop_training = True
        elif logs.get(MONITOR, -math.inf) > self.best:
            with averaged_weights(self.model):
                save_model(
                    self.model,
                    self.run_dir / "best.keras",
                    include_optimizer=False,
                    entries={BEST_RECORD: json.dumps(row)},
                )
            self.best_record = row  # only once best.keras holds it: a Ctrl-C during the save keeps the old one
        write_text(self.run_dir / "history.csv", pd.DataFrame(self.rows).to_csv(index=False))
        # with every new best too: a resume never runs again the epoch best.keras holds, so that epoch
        # keeps its row in history.csv and metrics.json, best.keras and the history figure agree
        due = time.perf_counter() - self._saved_at >= self.resume_every or self.best_record is row
        if self.diverged_epoch is None and due:
            self.save_resume_state(epoch + 1)

    def on_train_end(self, logs=None):
        if self.diverged_epoch is None and self.rows and self._saved_epochs != self.rows[-1]["epoch"]:
            self.save_resume_state(int(self.rows[-1]["epoch"]))

    def save_resume_state(self, epochs_done):
        counters = {
            type(callback).__name__: {
                name: _number(getattr(callback, name)) for name in COUNTERS if hasattr(callback, name)
            }
            for callback in self.patient
        }
        state = {"epochs_done": epochs_done, "counters": counters}
        save_model(self.model, self.run_dir / "last.keras", entries={RESUME_STATE: json.dumps(state)})
        self._saved_epochs, self._saved_at = epochs_done, time.perf_counter()


def _number(value):
    """A counter as JSON can hold it (a best score may be a NumPy float, or None before any epoch)."""
    return None if value is None else value.item() if hasattr(value, "item") else value


def budget_learning_rate(peak, epoch, warmup_epochs, epochs, progress):
    """Learning rate for `epoch` (0-based) of a --time-budget run: linear warm-up from peak/10 over
    warmup_epochs, then cosine decay over whichever ends first, the epochs or the time budget.

    progress: the share of the epochs that the budget holds that is done (0..1)."""
    warmup_epochs = min(warmup_epochs, epochs - 1)
    if epoch < warmup_epochs:
        return peak * (0.1 + 0.9 * epoch / warmup_epochs)
    progress = min(1.0, max(progress, epoch / epochs))
    total = epoch / progress if progress > 0 else math.inf  # the epochs the run will have in all
    decayed = min(1.0, (epoch - warmup_epochs) / max(1.0, total - warmup_epochs))  # from the end of the warm-up
    return peak * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * decayed)))


def epoch_pace(durations):
    """Seconds an epoch takes: the median after the first, which also compiles (a minute on a GPU
    where the others take a second)."""
    return float(np.median(durations[1:])) if len(durations) > 1 else float(durations[0])


def budget_progress(epochs_done, seconds_left, pace):
    """The share of the epochs that the budget holds that is done, at `pace` seconds per epoch."""
    return epochs_done / (epochs_done + max(0.0, seconds_left) / pace)


class TimeBudget(keras.callbacks.Callback):
    """--time-budget: end before the budget runs out, on a learning rate decayed over that time.

    A fixed slot on a GPU (or a CPU night) then gives the most epochs it can hold, whatever the
    chip's speed, and still finishes the cosine schedule. Time is wall time from `started` (when
    the run began loading its data: the teachers' predictions and checkpoints count too), so the
    run ends when asked; the schedule follows the epochs done against the epochs the rest of the
    budget holds at the steady pace, so the first epoch's compilation does not eat into the
    decay. A resumed run counts its earlier epochs' seconds. The rate depends on measured time, so
    such a run is not exactly reproducible."""

    def __init__(self, config, checkpoint, started=None):
        super().__init__()
        self.budget = config["time_budget"] * 60
        self.config = config
        self.earlier = sum(row["seconds"] for row in checkpoint.rows)
        self.started = time.perf_counter() if started is None else started
        self.durations = [row["seconds"] for row in checkpoint.rows]  # a resumed run's pace so far

    def spent(self):
        return self.earlier + time.perf_counter() - self.started

    def on_train_begin(self, logs=None):
        self._last_end = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        if self.config["schedule"] == "cosine":
            progress = self.earlier / self.budget
            if self.durations:
                progress = budget_progress(epoch, self.budget - self.spent(), epoch_pace(self.durations))
            rate = budget_learning_rate(
                self.config["lr"], epoch, self.config["warmup_epochs"], self.config["epochs"], progress
            )
            self.model.optimizer.learning_rate.assign(rate)

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.durations.append(now - self._last_end)
        self._last_end = now
        if self.spent() + epoch_pace(self.durations) > self.budget:
            print(
                f"time budget: {self.spent() / 60:.1f} of {self.budget / 60:g} minutes used, "
                f"stopping after epoch {epoch + 1}"
            )
            self.model.stop_training = True


class StopOnNaN(keras.callbacks.Callback):
    """Keras's TerminateOnNaN, made so that fit need not wait for each step.

    A per-batch callback that Keras may not run off the training loop's thread makes fit turn
    every step's loss into a Python number before the next step starts (on JAX, the one backend
    where Keras dispatches callbacks asynchronously): the host waits for the GPU and the GPU for
    the host at every step. This one is marked async-safe: the loss is read in Keras's worker
    thread, and the run is stopped from the loop's thread at the next batch (one more step), because
    under JAX `self.model` copies the training state into the model and must not race the loop."""

    async_safe = True

    def __init__(self):
        super().__init__()
        self.nan_batch = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if self.nan_batch is None and loss is not None and not math.isfinite(loss):
            self.nan_batch = batch

    def on_train_batch_begin(self, batch, logs=None):
        if self.nan_batch is not None:
            print(f"batch {self.nan_batch + 1}: the loss is NaN, stopping")
            self.model.stop_training = True


class CtrlC(keras.callbacks.Callback):
    """Ctrl-C ends the run even when Python drops its KeyboardInterrupt.

    Python raises a signal's KeyboardInterrupt wherever the main thread is; inside a garbage-collector
    callback (JAX registers one) it is only reported as ignored, and fit went on to its last epoch
    (seen once under JAX). While the run lasts (`with CtrlC() as ctrl_c:`), the handler also notes
    the press, and the next training or validation batch raises it again."""

    pressed = False

    def __enter__(self):
        self._previous = None
        # A process started in the background by a script ignores SIGINT, so that a Ctrl-C meant for
        # the script's foreground job spares it; that choice stands.
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        ):
            self._previous = signal.signal(signal.SIGINT, self._press)
        return self

    def __exit__(self, *exception):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _press(self, number, frame):
        self.pressed = True
        raise KeyboardInterrupt

    def _raise_if_pressed(self, *arguments, **keywords):
        if self.pressed:
            raise KeyboardInterrupt

    on_epoch_begin = on_train_batch_begin = on_test_batch_begin = _raise_if_pressed
