"""One training run: its own directory, Keras callbacks for checkpoints/history/schedule, resume.

A run directory holds
  config.json          every setting, the backend, library versions and the data file's hash
  history.csv          one row per finished epoch (written atomically after each epoch)
  best.keras           the model with the best validation accuracy so far
  last.keras, state.json   the latest epoch with optimizer state, for --resume
  metrics.json         best validation accuracy, epochs, wall time, parameters
  confusion_matrix.csv best.keras on the validation split
"""

import contextlib
import json
import math
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from fersuite import AUGMENTATION, EMOTIONS, __version__, backend, cli, evaluation, quantize, teachers
from fersuite.atomic import save_model, write_json, write_text
from fersuite.augment import MixUpBatches, full_batch_order
from fersuite.data import check_readable_file, file_digest, load_splits, split_seed
from fersuite.errors import UserError
from fersuite.models import preprocessing_layers, trainable_parameter_count

MONITOR = "val_accuracy"
COSINE_FLOOR = 0.01  # a cosine schedule ends at this share of its peak learning rate


def new_run_dir(runs_dir, family):
    """A fresh directory per run, named by family and start time; never an existing one."""
    runs_dir = Path(runs_dir)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{runs_dir}: cannot create the runs directory ({error.strerror})") from None
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        candidate = runs_dir / (f"{family}-{stamp}" + (f"-{attempt}" if attempt > 1 else ""))
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as error:
            raise UserError(f"{runs_dir}: cannot create a run directory ({error.strerror})") from None
    raise UserError(f"{runs_dir}: too many runs started in the same second")


def check_config(config):
    """Flags that would only fail minutes later are refused now, with one line."""
    positive = ("epochs", "batch_size")
    for key in positive:
        if config[key] < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, got {config[key]}")
    if config["lr"] <= 0:
        raise UserError(f"--lr must be positive, got {config['lr']}")
    if not 0 < config["val_split"] < 1:
        raise UserError(f"--val-split must be between 0 and 1 (exclusive), got {config['val_split']}")
    if not 0 <= config["label_smoothing"] < 1:
        raise UserError(f"--label-smoothing must be in [0, 1), got {config['label_smoothing']}")
    if config.get("mixup", 0.0) < 0:
        raise UserError(f"--mixup must be 0 (off) or positive, got {config['mixup']}")
    for path in [config.get("init_from"), *(config.get("teacher") or [])]:
        if path:
            check_readable_file(path)
    if config.get("resume_every", 0.0) < 0:
        raise UserError(f"--resume-every must be 0 (every epoch) or positive seconds, got {config['resume_every']}")
    if config.get("time_budget", 0.0) < 0:
        raise UserError(f"--time-budget must be 0 (none) or positive minutes, got {config['time_budget']}")
    if not 0 <= config.get("ema", 0.0) < 1:
        raise UserError(f"--ema must be in [0, 1), got {config['ema']}")
    if config.get("weight_decay", 0.0) < 0:
        raise UserError(f"--weight-decay must be 0 (none) or positive, got {config['weight_decay']}")
    if config.get("teacher_temperature", 1.0) <= 0:
        raise UserError(f"--teacher-temperature must be positive, got {config['teacher_temperature']}")


def build_optimizer(config, steps_per_epoch):
    learning_rate = config["lr"]
    if config["schedule"] == "cosine" and not config.get("time_budget"):
        warmup = min(config["warmup_epochs"], config["epochs"] - 1) * steps_per_epoch
        decay = max(1, config["epochs"] * steps_per_epoch - warmup)
        learning_rate = keras.optimizers.schedules.CosineDecay(
            config["lr"] / 10 if warmup else config["lr"],
            decay,
            alpha=COSINE_FLOOR,
            warmup_target=config["lr"] if warmup else None,
            warmup_steps=warmup,
        )
    average = {"use_ema": True, "ema_momentum": config["ema"]} if config.get("ema") else {}
    if config["optimizer"] == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True, weight_decay=config["weight_decay"] or None, **average)
    if config["optimizer"] == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=config["weight_decay"], **average)
    return keras.optimizers.Adam(learning_rate, **average)


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
    `resume_every` seconds (and at the end) last.keras + state.json.

    Owning history and the best score here (rather than CSVLogger + ModelCheckpoint) keeps a
    resumed run's history free of repeated epochs and its best model from being overwritten
    by a worse one. last.keras holds the optimizer too (118 MB for the 5.9M CNN): on a GPU,
    where an epoch takes a second, saving it after each one cost a third of the run's time.
    The first epoch is always saved, so an interrupted run can always be resumed.
    """

    def __init__(self, run_dir, history=None, best=-math.inf, resume_every=60.0):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.rows = list(history or [])
        self.best = best
        self.resume_every = resume_every
        self.diverged_epoch = None
        self._epoch_start = None
        self._saved_epochs = None
        self._saved_at = -math.inf

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["seconds"] = time.perf_counter() - self._epoch_start
        self.rows.append({"epoch": epoch + 1, **{key: float(value) for key, value in logs.items()}})
        if not math.isfinite(logs.get("loss", 0.0)):
            self.diverged_epoch = epoch + 1
            self.model.stop_training = True
        elif logs.get(MONITOR, -math.inf) > self.best:
            self.best = logs[MONITOR]
            with averaged_weights(self.model):
                save_model(self.model, self.run_dir / "best.keras", include_optimizer=False)
        write_text(self.run_dir / "history.csv", pd.DataFrame(self.rows).to_csv(index=False))
        if self.diverged_epoch is None and time.perf_counter() - self._saved_at >= self.resume_every:
            self.save_resume_state(epoch + 1)

    def on_train_end(self, logs=None):
        if self.diverged_epoch is None and self.rows and self._saved_epochs != self.rows[-1]["epoch"]:
            self.save_resume_state(int(self.rows[-1]["epoch"]))

    def save_resume_state(self, epochs_done):
        save_model(self.model, self.run_dir / "last.keras")
        write_json(self.run_dir / "state.json", {"epochs_done": epochs_done, "best": self.best})
        self._saved_epochs, self._saved_at = epochs_done, time.perf_counter()


def budget_learning_rate(peak, epoch, warmup_epochs, epochs, progress):
    """Learning rate for `epoch` (0-based) of a --time-budget run: linear warm-up from peak/10 over
    warmup_epochs, then cosine decay over whichever ends first, the epochs or the time budget.

    progress: the share of the epochs that the budget holds that is done (0..1)."""
    warmup_epochs = min(warmup_epochs, epochs - 1)
    if epoch < warmup_epochs:
        return peak * (0.1 + 0.9 * epoch / warmup_epochs)
    progress = min(1.0, max(progress, epoch / epochs))
    return peak * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))


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
        self.durations = []

    def spent(self):
        return self.earlier + time.perf_counter() - self.started

    def on_train_begin(self, logs=None):
        self._last_end = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        if self.config["schedule"] == "cosine":
            progress = self.earlier / self.budget
            if self.durations:
                progress = budget_progress(epoch, self.budget - self.spent(), epoch_pace(self.durations))
            rate = budget_learning_rate(self.config["lr"], epoch, self.config["warmup_epochs"], self.config["epochs"], progress)
            self.model.optimizer.learning_rate.assign(rate)

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.durations.append(now - self._last_end)
        self._last_end = now
        if self.spent() + epoch_pace(self.durations) > self.budget:
            print(f"time budget: {self.spent() / 60:.1f} of {self.budget / 60:g} minutes used, stopping after epoch {epoch + 1}")
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
        if threading.current_thread() is threading.main_thread():
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


def _callbacks(config, checkpoint, started=None):
    callbacks = [StopOnNaN()]
    if config.get("ema"):
        callbacks.append(keras.callbacks.SwapEMAWeights())
    if config["schedule"] == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=MONITOR, mode="max", factor=0.5, patience=max(2, config["patience"] // 3), min_lr=config["lr"] / 100, verbose=1
            )
        )
    if config["patience"] > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=config["patience"], verbose=1))
    callbacks.append(checkpoint)
    if config.get("time_budget"):
        callbacks.append(TimeBudget(config, checkpoint, started))
    return callbacks


def one_hot(labels):
    return np.eye(len(EMOTIONS), dtype="float32")[labels]


def training_targets(config, pixels, labels):
    """One-hot labels, mixed with the teachers' softened probabilities when --teacher is given.

    Soft targets carry what a convolutional teacher knows about similar emotions, which a
    network without convolutions cannot learn from one-hot labels alone. The teachers see each
    image and its mirror, once, before training (or come as probabilities saved by fersuite.teachers)."""
    targets = one_hot(labels)
    if not config.get("teacher"):
        return targets
    print(f"soft targets from {', '.join(map(str, config['teacher']))} on {len(pixels):,} training images")
    probabilities = teachers.probabilities(config["teacher"], pixels, verbose=config.get("verbose", 1))
    softened = np.power(np.clip(probabilities, 1e-12, 1.0), 1.0 / config["teacher_temperature"])
    softened /= softened.sum(axis=1, keepdims=True)
    weight = config["teacher_weight"]
    return ((1 - weight) * targets + weight * softened).astype("float32")


def class_weights(labels, mode):
    if mode != "balanced":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(label): float(weight) for label, weight in zip(present, weights)}


def training_inputs(config, train_split, targets, epochs_done):
    """model.fit's training arguments: the arrays, padded with a few repeated faces to whole batches
    (see full_batch_order), or mixup batches when --mixup > 0 (class weights then travel as
    per-image weights, blended like the targets)."""
    weights = class_weights(train_split.labels, config["class_weight"])
    if config.get("mixup", 0.0) <= 0:
        rows = full_batch_order(len(train_split), config["batch_size"], np.random.default_rng(config["seed"]))
        inputs = {"x": train_split.pixels[rows], "y": targets[rows], "batch_size": config["batch_size"]}
        return {**inputs, "class_weight": weights, "shuffle": True}
    sample_weights = None if weights is None else np.array([weights[label] for label in train_split.labels], dtype="float32")
    batches = MixUpBatches(
        train_split.pixels, targets, config["batch_size"], config["mixup"], sample_weights, config["seed"], epochs_done
    )
    return {"x": batches}


def make_model(config, build_network, train_pixels):
    """Preprocessing from the config (featurewise statistics from the training split) + network."""
    augment = None
    if config["augment"]:
        augment = {key: config[key] for key in AUGMENTATION}
    statistics = {}
    if config["normalization"] == "featurewise":
        statistics = {"mean": float(train_pixels.mean()), "std": float(train_pixels.std()) or 1.0}
    preprocessing = preprocessing_layers(
        augment=augment,
        erasing=config["random_erasing"],
        normalization=config["normalization"],
        seed=config["seed"],
        **statistics,
    )
    return build_network(config, preprocessing)


def start_from(model, path):
    """--init-from: copy a trained model's weights into the freshly built one, which must match it."""
    source = evaluation.load_model(path)
    source_weights = [weight for layer in source.layers for weight in quantize.float_weights(layer)]
    differing = [(old, new) for old, new in zip(source_weights, model.weights) if tuple(old.shape) != tuple(new.shape)]
    if differing or len(source_weights) != len(model.weights):
        where = f"{differing[0][1].path} is {tuple(differing[0][0].shape)} there, {tuple(differing[0][1].shape)} here" if differing else f"{len(source_weights)} weight arrays there, {len(model.weights)} here"
        raise UserError(f"{path}: its network differs from the one these flags build ({where}); pass the network flags it was trained with")
    model.set_weights(source_weights)


def _compile(model, config, steps_per_epoch):
    model.compile(
        optimizer=build_optimizer(config, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config["label_smoothing"]),
        metrics=["accuracy"],
    )


def _resume_state(run_dir):
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    for name in ("config.json", "state.json", "last.keras", "history.csv"):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir}: cannot resume, {name} is missing (no epoch finished yet?)")
    config = json.loads((run_dir / "config.json").read_text())
    state = json.loads((run_dir / "state.json").read_text())
    history = pd.read_csv(run_dir / "history.csv")
    if MONITOR in history and history[MONITOR].notna().any():
        # best.keras may hold an epoch after the one last.keras saved: the epochs run again must beat it
        state["best"] = max(state["best"], float(history[MONITOR].max()))
    history = history[history["epoch"] <= state["epochs_done"]].to_dict("records")
    return config, state, history


def train(family, config, build_network, resume=None):
    """Train one model; returns the run directory. config: the script's flags as a dict."""
    launched = time.perf_counter()
    if resume:
        given = config
        config, state, history = _resume_state(resume)
        if config.get("family", family) != family:
            raise UserError(f"{resume}: is a {config['family']} run; resume it with train_{config['family']}.py")
        config = {**config, **{key: given[key] for key in cli.RESUME_SETTINGS if key in given}}
        run_dir = Path(resume)
        print(f"resuming {run_dir} after epoch {state['epochs_done']}")
    else:
        check_config(config)
        state, history = {"epochs_done": 0, "best": -math.inf}, []
    backend.make_deterministic(config["seed"])
    use_gpu = backend.gpu_available()
    if config["mixed_precision"] == "on" or (config["mixed_precision"] == "auto" and use_gpu):
        keras.mixed_precision.set_dtype_policy("mixed_float16")
    splits = load_splits(config["data"], config["val_split"], split_seed(config))
    missing = [name for name in ("train", "validation") if name not in splits]
    if missing:
        raise UserError(f"{config['data']}: needs labeled rows for {' and '.join(missing)} (a test.csv has no labels; a fer2013.csv validates on its PublicTest rows)")
    train_split, validation = splits["train"], splits["validation"]
    steps_per_epoch = math.ceil(len(train_split) / config["batch_size"])
    targets = training_targets(config, train_split.pixels, train_split.labels)

    if resume:
        model = keras.saving.load_model(run_dir / "last.keras")
    else:
        model = make_model(config, build_network, train_split.pixels)
        if config.get("init_from"):
            start_from(model, config["init_from"])
        _compile(model, config, steps_per_epoch)
        run_dir = new_run_dir(config["runs_dir"], family)
        config = {
            **config,
            "family": family,
            "run_dir": str(run_dir),
            "data_digest": file_digest(config["data"]),
            "train_rows": len(train_split),
            "validation_rows": len(validation),
            "parameters": model.count_params(),
            "trainable_parameters": trainable_parameter_count(model),
            "versions": {**backend.versions(), "fersuite": __version__},
            "gpu": use_gpu,
            "command": " ".join(sys.argv),
        }
        write_json(run_dir / "config.json", config)
    print(f"run directory: {run_dir}")
    print(f"{family}: {config['parameters']:,} parameters, {len(train_split):,} training and {len(validation):,} validation images, backend {backend.name()}")

    checkpoint = RunCheckpoint(run_dir, history, state["best"], config.get("resume_every", 60.0))
    started = time.perf_counter()
    interrupted = False
    try:
        with CtrlC() as ctrl_c:
            model.fit(
                **training_inputs(config, train_split, targets, state["epochs_done"]),
                epochs=config["epochs"],
                initial_epoch=state["epochs_done"],
                validation_data=(validation.pixels, one_hot(validation.labels)),
                callbacks=[ctrl_c, *_callbacks(config, checkpoint, launched)],
                verbose=config.get("verbose", 1),
            )
    except KeyboardInterrupt:
        interrupted = True
    wall = time.perf_counter() - started
    metrics = finish(run_dir, config, checkpoint, validation, wall, interrupted)
    script = f"train_{family}.py"
    if interrupted:
        if (run_dir / "state.json").exists():
            print(f"\ninterrupted: best model and history are in {run_dir}\nresume with: python {script} --resume {run_dir}", file=sys.stderr)
        else:
            print(f"\ninterrupted before the first epoch ended: nothing to resume in {run_dir}", file=sys.stderr)
        raise SystemExit(130)
    if checkpoint.diverged_epoch is not None:
        raise UserError(
            f"the loss became NaN in epoch {checkpoint.diverged_epoch}; training stopped, {run_dir / 'best.keras'} "
            "holds the last good best model (try a lower --lr)"
        )
    print(f"best validation accuracy {metrics['best_val_accuracy']:.4f} (epoch {metrics['best_epoch']})")
    print(f"run directory: {run_dir}")
    return run_dir


def finish(run_dir, config, checkpoint, validation, wall, interrupted):
    """metrics.json (+ confusion matrix of best.keras on validation) from what the run finished."""
    history = pd.DataFrame(checkpoint.rows)
    metrics = {
        "family": config["family"],
        "parameters": config["parameters"],
        "epochs_run": len(history),
        "wall_seconds": round(float(history["seconds"].sum()), 1) if len(history) else 0.0,
        "wall_seconds_this_session": round(wall, 1),
        "seconds_per_epoch": round(float(history["seconds"].mean()), 2) if len(history) else None,
        "interrupted": interrupted,
        "diverged_epoch": checkpoint.diverged_epoch,
        "backend": backend.name(),
    }
    if len(history) and MONITOR in history and history[MONITOR].notna().any():
        best = history.loc[history[MONITOR].idxmax()]
        metrics.update(best_val_accuracy=float(best[MONITOR]), best_epoch=int(best["epoch"]))
        metrics["train_images_per_second"] = round(config["train_rows"] / metrics["seconds_per_epoch"], 1)
    best_path = Path(run_dir) / "best.keras"
    if best_path.exists() and not interrupted:
        model = evaluation.load_model(best_path)
        probabilities = evaluation.predict_probabilities([model], validation.pixels)
        predictions = probabilities.argmax(axis=1)
        write_text(Path(run_dir) / "confusion_matrix.csv", evaluation.confusion_frame(validation.labels, predictions).to_csv())
        metrics["val_accuracy_best_model"] = evaluation.accuracy(validation.labels, probabilities)
        metrics["per_class_recall"] = {
            emotion: round(values["recall"], 4)
            for emotion, values in evaluation.classification_report(validation.labels, predictions).items()
            if emotion in EMOTIONS
        }
    write_json(Path(run_dir) / "metrics.json", metrics)
    return metrics

