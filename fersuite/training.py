"""One training run: its own directory, the optimizer, the targets, fit with the callbacks, resume.

A run directory holds
  config.json          every setting, the backend, library versions and the data file's hash
  history.csv          one row per finished epoch (written atomically after each epoch)
  best.keras           the model with the best validation accuracy so far
  last.keras           a finished epoch with optimizer state and, inside, the resume state (saved at most
                       every --resume-every seconds, with each new best, and at the end)
  metrics.json         best validation accuracy, epochs, wall time, parameters (once a session ends)
  confusion_matrix.csv best.keras on the validation split
  training.lock        while a process trains in it (a killed one leaves it behind)
"""

import contextlib
import json
import math
import os
import shlex
import shutil
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from fersuite import AUGMENTATION, EMOTIONS, __version__, backend, cli, contrast, evaluation, quantize, teachers
from fersuite.atomic import write_json, write_text
from fersuite.augment import MixUpBatches, full_batch_order
from fersuite.callbacks import (
    BEST_RECORD,
    COSINE_FLOOR,
    MONITOR,
    CtrlC,
    RunCheckpoint,
    StopOnNaN,
    TimeBudget,
    best_row,
    read_entry,
    training_lock,
)
from fersuite.data import (
    check_readable_file,
    equalize_mode,
    faces_digest,
    file_digest,
    load_table,
    recorded_path,
    report_equalized,
    split_seed,
    split_table,
)
from fersuite.errors import UserError
from fersuite.models import preprocessing_layers, trainable_parameter_count

OPTIMIZERS = ("Adam", "AdamW", "SGD")  # what build_optimizer makes, by Keras's class names


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
    for key, value in config.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{key.replace('_', '-')} must be a finite number, got {value}")
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
    for key, bits in (("seed", 31), ("split_seed", 32)):
        if not 0 <= config.get(key, 0) < 2**bits:
            raise UserError(f"--{key.replace('_', '-')} must be in 0..2**{bits}-1, got {config[key]}")
    if equalize_mode(config) not in contrast.MODES:
        raise UserError(f"--equalize must be one of {', '.join(contrast.MODES)}, got {config['equalize']}")
    if config.get("mixup", 0.0) < 0:
        raise UserError(f"--mixup must be 0 (off) or positive, got {config['mixup']}")
    if config["data"] == str(cli.DEFAULT_TRAIN) and not cli.DEFAULT_TRAIN.exists():
        raise UserError(
            f"{config['data']}: no such file (the default --data, the team's copy beside the project); "
            "pass --data with your train.csv or fer2013.csv"
        )
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


def warn_of_other_faces(config, train_rows, validation, log):
    """--init-from and --teacher models from runs that validated on other faces (their config.json
    says): their training faces may be among this run's validation faces, which inflates its
    validation accuracy. Runs record a hash of their validation faces, the same for a CSV and its
    packed copy; runs from before it are compared by their row counts and split seed. A model that
    read its faces with another --equalize is named for that instead (the hash differs with it)."""
    digest = faces_digest(validation.pixels)
    for path in [config.get("init_from"), *(config.get("teacher") or [])]:
        run = evaluation.run_config(path) if path else {}
        if not run:  # a file outside a run says nothing of its faces
            continue
        if equalize_mode(run) != equalize_mode(config):
            log(
                f"warning: {path} was trained on faces read with --equalize {equalize_mode(run)}, "
                f"this run reads them with --equalize {equalize_mode(config)}"
            )
            continue
        if "validation_digest" in run:
            differing = [] if run["validation_digest"] == digest else ["other faces"]
        else:
            compared = {
                "training faces": (run.get("train_rows"), train_rows),
                "validation faces": (run.get("validation_rows"), len(validation)),
                "--split-seed": (split_seed(run), split_seed(config)),
            }
            differing = [
                f"{name} {there} there, {here} here"
                for name, (there, here) in compared.items()
                if there is not None and there != here
            ]
        if differing:
            log(
                f"warning: {path} was trained with another validation split ({'; '.join(differing)}): its training "
                "faces may be among this run's validation faces, inflating its validation accuracy"
            )


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
        return keras.optimizers.SGD(
            learning_rate, momentum=0.9, nesterov=True, weight_decay=config["weight_decay"] or None, **average
        )
    if config["optimizer"] == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=config["weight_decay"], **average)
    return keras.optimizers.Adam(learning_rate, weight_decay=config["weight_decay"] or None, **average)


def _patient_callbacks(config):
    """The callbacks that count epochs without a new best: plateau decay and early stopping."""
    patient = []
    if config["schedule"] == "plateau":
        patient.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=MONITOR,
                mode="max",
                factor=0.5,
                patience=max(2, config["patience"] // 3),
                min_lr=config["lr"] / 100,
                verbose=1,
            )
        )
    if config["patience"] > 0:
        patient.append(
            keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=config["patience"], verbose=1)
        )
    return patient


def _callbacks(config, checkpoint, started=None):
    callbacks = [StopOnNaN()]
    if config.get("ema"):
        callbacks.append(keras.callbacks.SwapEMAWeights())
    callbacks += [*checkpoint.patient, checkpoint]  # the checkpoint restores their counters after they reset them
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
    probabilities = teachers.probabilities(config["teacher"], pixels, verbose=cli.progress(config.get("verbose")))
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
    (see full_batch_order), or mixup batches when --mixup > 0; class weights travel as per-image
    weights from each face's label (blended like the targets under mixup)."""
    weights = class_weights(train_split.labels, config["class_weight"])
    # per image from its label: Keras's class_weight goes by argmax(y), a teacher's class under distillation
    sample_weights = (
        None if weights is None else np.array([weights[label] for label in train_split.labels], dtype="float32")
    )
    if config.get("mixup", 0.0) <= 0:
        rows = full_batch_order(len(train_split), config["batch_size"], np.random.default_rng(config["seed"]))
        inputs = {"x": train_split.pixels[rows], "y": targets[rows], "batch_size": config["batch_size"]}
        return {**inputs, "sample_weight": None if sample_weights is None else sample_weights[rows], "shuffle": True}
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
        where = (
            f"{differing[0][1].path} is {tuple(differing[0][0].shape)} there, {tuple(differing[0][1].shape)} here"
            if differing
            else f"{len(source_weights)} weight arrays there, {len(model.weights)} here"
        )
        command = evaluation.run_config(path).get("command")
        trained_by = f" (its run: {command})" if command else ""
        raise UserError(
            f"{path}: its network differs from the one these flags build ({where}); "
            f"pass the network flags it was trained with{trained_by}"
        )
    there, here = _normalization(source), _normalization(model)
    if there and here and there != here:  # weightless layers: the shapes above cannot tell them apart
        raise UserError(
            f"{path}: was trained with --normalization {there}, these flags scale pixels as {here}; "
            f"pass --normalization {there}"
        )
    model.set_weights(source_weights)


def _normalization(model):
    """How a model built by models.preprocessing_layers scales its pixels, by its layer's name."""
    names = {layer.name for layer in model.layers}
    return "featurewise" if "normalize" in names else "unit" if "rescale" in names else None


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
    for name in ("config.json", "last.keras", "history.csv"):
        if not (run_dir / name).is_file():
            raise UserError(
                f"{run_dir}: cannot resume, {name} is missing (the run stopped before its first epoch was saved?)"
            )
    state = read_entry(run_dir / "last.keras")
    if state is None and (run_dir / "state.json").is_file():  # earlier versions kept it beside last.keras
        state = json.loads((run_dir / "state.json").read_text())
    if state is None:
        raise UserError(f"{run_dir}: cannot resume, last.keras holds no resume state (not saved by a training run?)")
    config = json.loads((run_dir / "config.json").read_text())
    history = pd.read_csv(run_dir / "history.csv")
    # best.keras may hold an epoch after the one last.keras saved, which is run again: it stays the
    # best. Its row leaves history.csv once that epoch is run again, so best.keras keeps it too.
    candidates = [read_entry(run_dir / "best.keras", BEST_RECORD), best_row(history)]
    candidates = [dict(row) for row in candidates if row is not None]
    state["best_record"] = max(candidates, key=lambda row: row[MONITOR], default=None)
    history = history[history["epoch"] <= state["epochs_done"]].to_dict("records")
    return config, state, history


def _script(family):
    """The training script as it was called (a path from elsewhere works again), else its name."""
    return sys.argv[0] if Path(sys.argv[0]).name == f"train_{family}.py" else f"train_{family}.py"


def _resumed(run_dir, family, given):
    """A run to continue: its saved settings (with the few a command line may change), state and history."""
    config, state, history = _resume_state(run_dir)
    if config.get("family", family) != family:
        raise UserError(f"{run_dir}: is a {config['family']} run; resume it with train_{config['family']}.py")
    if (
        (run_dir / "metrics.json").is_file()
        and json.loads((run_dir / "metrics.json").read_text()).get("interrupted") is False
    ):
        raise UserError(
            f"{run_dir}: finished already; "
            f"to train it longer, start a new run with --init-from {run_dir / 'best.keras'}"
        )
    config = {**_inputs_found(run_dir, config), **{key: given[key] for key in cli.RESUME_SETTINGS if key in given}}
    digest = file_digest(config["data"])
    if config.get("data_digest", digest) != digest:
        raise UserError(
            f"{config['data']}: is not the file {run_dir} was trained on (its content changed); "
            "resumed on it, the run would pick its best model on other validation faces"
        )
    recorded = config.get("teacher_digests") or [None] * len(config["teacher"])
    for teacher, teacher_digest in zip(config["teacher"], recorded):
        if teacher_digest not in (None, file_digest(teacher)):
            raise UserError(
                f"{teacher}: is not the teacher {run_dir} was trained with (its content changed); "
                "resumed with it, the run would learn other soft targets"
            )
    print(f"resuming {run_dir} after epoch {state['epochs_done']}")
    return config, state, history


def _record_resume(run_dir, epochs_done, use_gpu):
    """config.json keeps the settings the run began with, as recorded (its paths as typed then, which a
    later resume finds from its folder); each resume adds after which epoch, how and on what it went on."""
    path = run_dir / "config.json"
    recorded = json.loads(path.read_text())
    session = {
        "after_epoch": epochs_done,
        "command": cli.command_line(),
        "versions": {**backend.versions(), "fersuite": __version__},
        "gpu": use_gpu,
        "at": datetime.now().isoformat(timespec="seconds"),
    }
    write_json(path, {**recorded, "resumes": [*recorded.get("resumes", []), session]})


def _inputs_found(run_dir, config):
    """The run's --data and --teacher files as its config.json recorded them, found from here."""

    def found(recorded):
        path = recorded_path(recorded, run_dir, config.get("run_dir", run_dir), config.get("cwd"))
        if path is None or not path.exists():
            raise UserError(f"{run_dir}: cannot resume, {recorded} is not found from here (nor from where it trained)")
        return str(path)

    return {**config, "data": found(config["data"]), "teacher": [found(path) for path in config.get("teacher") or []]}


def _reopened(path, epochs_done):
    """last.keras, ready to train on here.

    load_model restores the compile settings as the saving backend resolved them (XLA off under
    TensorFlow on a CPU, on under JAX: a TensorFlow run resumed under JAX trained 100x slower), so
    the model is compiled again with its own optimizer, state and all. Under torch, Keras saves the
    optimizer as a torch-only class (torch_adamw.AdamW), whose step fails on another backend: by
    name, each optimizer loads as this backend's own. Keras saves no layer's place in its random
    stream either: augmentation and dropout would draw epoch 1's values again, so each stream moves
    to one of its own for the epoch the run resumes at."""
    with keras.saving.CustomObjectScope({name: getattr(keras.optimizers, name) for name in OPTIMIZERS}):
        model = keras.saving.load_model(path)
    model.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"])
    for variable in model.non_trainable_variables:
        if variable.path.endswith("seed_generator_state"):
            seed = int(keras.ops.convert_to_numpy(variable)[0])
            variable.assign(keras.ops.cast([(seed + 1_000_003 * epochs_done) % 2**31, 0], variable.dtype))
    return model


def _reopened_whole(path, epochs_done):
    """_reopened, refused when Keras skips the saved optimizer (it only warns): the run would go on
    without its moments, from the start of its schedule."""
    with warnings.catch_warnings(record=True) as caught:  # only what the filters let through, as shown before
        warnings.filterwarnings("always", message="Skipping variable loading for optimizer")
        model = _reopened(path, epochs_done)
    for warning in caught:
        if "Skipping variable loading for optimizer" in str(warning.message):
            raise UserError(f"{path}: its optimizer state did not load ({warning.message}); the run cannot continue")
        warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return model


def _labeled_splits(config):
    """The training and validation splits, and whether the faces were equalized as they were read."""
    table = load_table(config["data"], equalize=equalize_mode(config))
    splits = split_table(table, config["val_split"], split_seed(config))
    missing = [name for name in ("train", "validation") if name not in splits]
    if missing:
        raise UserError(
            f"{config['data']}: needs labeled rows for {' and '.join(missing)} "
            "(a test.csv has no labels; a fer2013.csv validates on its PublicTest rows)"
        )
    return splits["train"], splits["validation"], table.equalized_as_read


def _new_run(family, config, build_network, train_split, validation, use_gpu, equalized):
    """Build and compile the model, then make the run directory and write its config.json."""
    model = make_model(config, build_network, train_split.pixels)
    if config.get("init_from"):
        start_from(model, config["init_from"])
    _compile(model, config, math.ceil(len(train_split) / config["batch_size"]))
    run_dir = new_run_dir(config["runs_dir"], family)
    config = {
        **config,
        "family": family,
        "run_dir": str(run_dir),
        "data_digest": file_digest(config["data"]),
        "teacher_digests": [file_digest(teacher) for teacher in config.get("teacher") or []],
        "train_rows": len(train_split),
        "validation_rows": len(validation),
        "validation_digest": faces_digest(validation.pixels),
        "equalized": equalized,
        "parameters": model.count_params(),
        "trainable_parameters": trainable_parameter_count(model),
        "versions": {**backend.versions(), "fersuite": __version__},
        "gpu": use_gpu,
        "command": cli.command_line(),
        "cwd": os.getcwd(),  # where the relative paths above were typed
    }
    write_json(run_dir / "config.json", config)
    return model, run_dir, config


def train(family, config, build_network, resume=None):
    """Train one model; returns the run directory. config: the script's flags as a dict. The run directory
    is locked while it trains, and Keras's dtype policy is put back after (mixed precision is per run)."""
    launched = time.perf_counter()
    with contextlib.ExitStack() as held:
        held.callback(keras.mixed_precision.set_dtype_policy, keras.mixed_precision.dtype_policy())
        if resume:
            held.enter_context(training_lock(resume))  # before its state is read
            config, state, history = _resumed(Path(resume), family, config)
        else:
            check_config(config)
            state, history = {"epochs_done": 0, "best_record": None, "counters": {}}, []
        # a resumed run: not epoch 1's shuffles
        backend.make_deterministic((config["seed"] + state["epochs_done"]) % 2**31)
        use_gpu = backend.gpu_available()
        # a resumed run keeps the precision it began with: its optimizer state (loss scaling or none) must load
        began_on_gpu = config.get("gpu", use_gpu) if resume else use_gpu
        if config["mixed_precision"] == "on" or (config["mixed_precision"] == "auto" and began_on_gpu):
            keras.mixed_precision.set_dtype_policy("mixed_float16")
        train_split, validation, equalized = _labeled_splits(config)
        report_equalized(config["data"], equalized, equalize_mode(config))
        if config["batch_size"] > len(train_split):  # else full_batch_order pads each batch with repeated faces
            print(f"--batch-size {config['batch_size']} is more than the {len(train_split):,} training images: "
                  f"using {len(train_split):,}")
            config = {**config, "batch_size": len(train_split)}
        if not resume:
            warn_of_other_faces(config, len(train_split), validation, lambda line: print(line, file=sys.stderr))
        targets = training_targets(config, train_split.pixels, train_split.labels)
        if resume:
            run_dir = Path(resume)
            model = _reopened_whole(run_dir / "last.keras", state["epochs_done"])
            _record_resume(run_dir, state["epochs_done"], use_gpu)
            (run_dir / "metrics.json").unlink(missing_ok=True)  # the interrupted session's: not this run's last word
        else:
            model, run_dir, config = _new_run(
                family, config, build_network, train_split, validation, use_gpu, equalized
            )
            held.enter_context(training_lock(run_dir))
        print(f"run directory: {run_dir}")
        print(
            f"{family}: {config['parameters']:,} parameters, "
            f"{len(train_split):,} training and {len(validation):,} validation images, backend {backend.name()}"
        )

        checkpoint = RunCheckpoint(
            run_dir,
            history,
            state["best_record"],
            config.get("resume_every", 60.0),
            _patient_callbacks(config),
            state.get("counters"),
        )
        interrupted = False
        try:
            with CtrlC() as ctrl_c:
                model.fit(
                    **training_inputs(config, train_split, targets, state["epochs_done"]),
                    epochs=config["epochs"],
                    initial_epoch=state["epochs_done"],
                    validation_data=(validation.pixels, one_hot(validation.labels)),
                    callbacks=[ctrl_c, *_callbacks(config, checkpoint, launched)],
                    verbose=cli.progress(config.get("verbose")),
                )
        except KeyboardInterrupt:
            interrupted = True
        if interrupted and not resume and not (run_dir / "last.keras").exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing to resume: it would stand in runs/ as a run
            print(f"\ninterrupted before the first epoch was saved: nothing kept ({run_dir} removed)", file=sys.stderr)
            raise SystemExit(130)
        metrics = finish(run_dir, config, checkpoint, validation, time.perf_counter() - launched, interrupted)
        if interrupted:
            saved = read_entry(run_dir / "last.keras") or {}  # older versions kept the state beside last.keras
            print(
                f"\ninterrupted: best model and history are in {run_dir}\n"
                f"resume with: {shlex.join(['python', _script(family), '--resume', str(run_dir)])}",
                file=sys.stderr,
            )
            if "epochs_done" in saved:
                done = saved["epochs_done"]
                print(f"(it goes on after epoch {done}, the last one last.keras saved)", file=sys.stderr)
            raise SystemExit(130)
        if checkpoint.diverged_epoch is not None:
            raise UserError(
                f"the loss became NaN in epoch {checkpoint.diverged_epoch}; training stopped, {run_dir / 'best.keras'} "
                "holds the last good best model (try a lower --lr)"
            )
        print(f"best validation accuracy {metrics['best_val_accuracy']:.4f} (epoch {metrics['best_epoch']})")
        print(f"run directory: {run_dir}")
        predict = ["python", "predict.py", "--model", str(run_dir / "best.keras"), "--data", "test.csv"]
        print(f"a submission for a test.csv: {shlex.join(predict)}")
        return run_dir


def finish(run_dir, config, checkpoint, validation, wall, interrupted):
    """metrics.json (+ confusion matrix of best.keras on validation) from what the run finished."""
    history = pd.DataFrame(checkpoint.rows)
    # the first epoch of each session also compiles: this session's others give the pace, else the run's
    # after its first (a resumed session of one epoch)
    steady = history.get("seconds")
    if len(history) > checkpoint.session_start + 1:
        steady = steady[checkpoint.session_start + 1 :]
    elif len(history) > 1:
        steady = steady[1:]
    metrics = {
        "family": config["family"],
        "parameters": config["parameters"],
        "epochs_run": len(history),
        "wall_seconds": round(float(history["seconds"].sum()), 1) if len(history) else 0.0,
        "wall_seconds_this_session": round(wall, 1),
        "seconds_per_epoch": round(float(steady.mean()), 3) if len(history) else None,
        "interrupted": interrupted,
        "diverged_epoch": checkpoint.diverged_epoch,
        "backend": backend.name(),
    }
    best = checkpoint.best_record  # best.keras's epoch, which a resumed run may have run again since
    if best is not None:
        metrics.update(best_val_accuracy=float(best[MONITOR]), best_epoch=int(best["epoch"]))
        pace = float(steady.mean())
        metrics["train_images_per_second"] = round(config["train_rows"] / pace, 1) if pace > 0 else None
    best_path = Path(run_dir) / "best.keras"
    if best_path.exists() and not interrupted:
        model = evaluation.load_model(best_path)
        probabilities = evaluation.predict_probabilities([model], validation.pixels)
        predictions = probabilities.argmax(axis=1)
        write_text(
            Path(run_dir) / "confusion_matrix.csv", evaluation.confusion_frame(validation.labels, predictions).to_csv()
        )
        metrics["val_accuracy_best_model"] = evaluation.accuracy(validation.labels, probabilities)
        metrics["per_class_recall"] = {
            emotion: round(values["recall"], 4)
            for emotion, values in evaluation.classification_report(validation.labels, predictions).items()
            if emotion in EMOTIONS
        }
    write_json(Path(run_dir) / "metrics.json", metrics)
    return metrics
