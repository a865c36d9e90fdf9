"""Training runs: run directory contents, resume after SIGKILL, Ctrl-C, NaN, reproducibility."""

import gc
import json
import math
import re
import shlex
import signal
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import (
    PROJECT,
    faces_csv,
    labeled_rows,
    numbered_faces,
    only_run,
    raw_faces,
    run_script,
    run_under,
    tiny_training_args,
    write_csv,
    write_last_keras,
)

from fersuite import AUGMENTATION, EMOTIONS, INPUT_SHAPE, NUM_CLASSES, callbacks, contrast, models, plots, training
from fersuite.augment import MixUpBatches, RandomAffine, RandomErasing, full_batch_order
from fersuite.data import Split, file_digest, load_splits
from fersuite.errors import UserError
from fersuite.evaluation import load_model

RUN_FILES = {"config.json", "history.csv", "best.keras", "last.keras", "metrics.json", "confusion_matrix.csv"}


@pytest.mark.parametrize("family", ["cnn", "dnn", "mobilenet"])
def test_one_epoch_writes_the_run_directory(family, train_csv, tmp_path):
    runs = tmp_path / "runs"
    result = run_script(f"train_{family}.py", *tiny_training_args(family, train_csv, runs), check=True)
    run_dir = only_run(runs)
    assert run_dir.name.startswith(f"{family}-")
    assert f"run directory: {run_dir}" in result.stdout
    submission = f"a submission for a test.csv: python predict.py --model {run_dir / 'best.keras'} --data test.csv"
    assert submission in result.stdout
    assert RUN_FILES <= {path.name for path in run_dir.iterdir()}
    config = json.loads((run_dir / "config.json").read_text())
    assert config["family"] == family and config["seed"] == 0 and config["epochs"] == 1
    assert (config["rotation_range"], config["width_shift_range"]) == ((5.0, 0.05) if family == "dnn" else (10.0, 0.1))
    assert config["mixed_precision"] == ("off" if family == "dnn" else "auto")
    assert config["versions"]["backend"] == keras.backend.backend() and config["versions"]["keras"] == keras.__version__
    assert len(config["data_digest"]) == 32 and config["equalize"] == "auto" and config["equalized"] is False
    assert "judged raw" not in result.stdout and Path(config["cwd"]).is_dir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and metrics["parameters"] == config["parameters"]
    assert 0 <= metrics["best_val_accuracy"] <= 1
    assert list(metrics["per_class_recall"]) == list(EMOTIONS)  # label order, as in the confusion matrix
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == [1]
    assert {"accuracy", "loss", "val_accuracy", "val_loss", "learning_rate", "seconds"} <= set(history)
    confusion = pd.read_csv(run_dir / "confusion_matrix.csv", index_col=0)
    validation = load_splits(train_csv, 0.1, 0)["validation"]
    assert list(confusion.index) == list(EMOTIONS) == list(confusion.columns)
    assert confusion.sum(axis=1).tolist() == np.bincount(validation.labels, minlength=7).tolist()  # rows: true
    assert confusion.to_numpy().sum() == config["validation_rows"] == len(validation)
    assert config["validation_digest"] == training.faces_digest(validation.pixels)
    load_model(run_dir / "best.keras")
    assert optimizer_variables(run_dir / "best.keras") == 0 < optimizer_variables(run_dir / "last.keras")


def test_a_batch_larger_than_the_training_faces_becomes_all_of_them(train_csv, tmp_path):
    """Not 4,096 rows padded with the same few faces repeated, a fixed skew every epoch."""
    runs = tmp_path / "runs"
    args = tiny_training_args("dnn", train_csv, runs, 1, "--batch-size", 4096)
    result = run_script("train_dnn.py", *args, check=True)
    config = json.loads((only_run(runs) / "config.json").read_text())
    assert config["batch_size"] == config["train_rows"] == 37
    assert "--batch-size 4096 is more than the 37 training images: using 37" in result.stdout


def test_mobilenet_keeps_the_hw8_network_as_a_preset(train_csv, tmp_path):
    runs = tmp_path / "runs"
    run_script(
        "train_mobilenet.py", *tiny_training_args("mobilenet", train_csv, runs), "--architecture", "hw8", check=True
    )
    config = json.loads((only_run(runs) / "config.json").read_text())
    expected = models.build_hw8_mobilenet(INPUT_SHAPE, NUM_CLASSES, alpha=0.25).count_params()
    assert config["architecture"] == "hw8" and config["dropout"] == 0.2 and config["parameters"] == expected


def test_teacher_soft_targets_mix_with_the_labels(tmp_path):
    teacher = models.build_mobilenet(INPUT_SHAPE, NUM_CLASSES, models.preprocessing_layers(), alpha=0.25)
    teacher.save(tmp_path / "teacher.keras")
    pixels = np.random.default_rng(3).integers(0, 256, (10, 48, 48, 1), dtype=np.uint8)
    labels = np.arange(10) % NUM_CLASSES
    config = {
        "teacher": [str(tmp_path / "teacher.keras")],
        "teacher_weight": 1.0,
        "teacher_temperature": 1.0,
        "verbose": 0,
    }
    flipped = pixels[:, :, ::-1].astype("float32")
    expected = (teacher.predict(pixels.astype("float32"), verbose=0) + teacher.predict(flipped, verbose=0)) / 2
    np.testing.assert_allclose(training.training_targets(config, pixels, labels), expected, atol=1e-5)
    mixed = training.training_targets({**config, "teacher_weight": 0.25, "teacher_temperature": 3.0}, pixels, labels)
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, atol=1e-5)
    assert (mixed.argmax(axis=1) == labels).all() and (mixed.max(axis=1) >= 0.75).all()
    assert training.training_targets({"teacher": None}, pixels, labels).tolist() == np.eye(NUM_CLASSES)[labels].tolist()


def test_distilled_training_records_its_teacher(train_csv, tmp_path):
    teacher = tmp_path / "teacher.keras"
    models.build_dnn(INPUT_SHAPE, NUM_CLASSES, models.preprocessing_layers(), units=(8,)).save(teacher)
    runs = tmp_path / "runs"
    run_script("train_dnn.py", *tiny_training_args("dnn", train_csv, runs), "--teacher", teacher, check=True)
    config = json.loads((only_run(runs) / "config.json").read_text())
    assert config["teacher"] == [str(teacher)] and config["teacher_weight"] == 0.5


def test_mixup_blends_images_targets_and_weights_with_the_same_share():
    """Image i is the constant 10*i and its target the unit vector e_i, so every blended row can be
    checked against its own target: pixels = 10 * sum_k(y_k * k), weight = sum_k(y_k * k)."""
    count = 10
    pixels = (np.arange(count, dtype=np.uint8) * 10).reshape(-1, 1, 1, 1) * np.ones((1, 48, 48, 1), np.uint8)
    targets, weights = np.eye(count, dtype="float32"), np.arange(count, dtype="float32")
    batches = MixUpBatches(pixels, targets, 4, alpha=0.4, sample_weights=weights, seed=1)
    assert len(batches) == 3
    blended = [batches[index] for index in range(len(batches))]
    assert [len(x) for x, _, _ in blended] == [4, 4, 4]  # two faces repeated: one input shape
    x, y, w = (np.concatenate(parts) for parts in zip(*blended))
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
    assert ((y > 0).sum(axis=1) <= 2).all() and (y.max(axis=1) < 1).any()
    np.testing.assert_allclose(x[:, 0, 0, 0], 10 * (y @ np.arange(count)), rtol=1e-5)
    assert np.ptp(x, axis=(1, 2, 3)).max() == 0
    np.testing.assert_allclose(w, y @ np.arange(count), rtol=1e-5)
    assert (y.sum(axis=0) > 0).all()
    again = MixUpBatches(pixels, targets, 4, alpha=0.4, sample_weights=weights, seed=1)[0]
    np.testing.assert_array_equal(again[0], blended[0][0])
    batches.on_epoch_end()
    assert not np.array_equal(batches[0][1], blended[0][1])


def test_mixup_training_with_class_weights_records_it(train_csv, tmp_path):
    runs = tmp_path / "runs"
    extra = ("--mixup", 0.2, "--class-weight", "balanced")
    run_script("train_cnn.py", *tiny_training_args("cnn", train_csv, runs, 1, *extra), check=True)
    run_dir = only_run(runs)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["mixup"] == 0.2 and config["class_weight"] == "balanced"
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 1


def optimizer_variables(path):
    """How many optimizer variables a .keras file stores (best.keras needs none, resume needs them)."""
    import io
    import zipfile

    import h5py

    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as weights:
        return len(weights["optimizer/vars"]) if "optimizer/vars" in weights else 0


def test_runs_never_share_a_directory(tmp_path):
    made = {training.new_run_dir(tmp_path, "cnn") for _ in range(3)}
    assert len(made) == 3 and all(path.is_dir() for path in made)


def _history_rows(run_dir):
    path = run_dir / "history.csv"
    return len(pd.read_csv(path)) if path.exists() else 0


def _epochs_done(run_dir):
    """Finished epochs as the run itself records them, in last.keras (saved after history.csv)."""
    state = callbacks.read_entry(run_dir / "last.keras")
    return state["epochs_done"] if state else 0


def _start_training(data, runs, epochs, resume_every=0, seed=0):
    """A training process of ~200 images, so each epoch takes a moment to kill it in."""
    return _start(*tiny_training_args("mobilenet", data, runs, epochs, "--resume-every", resume_every, "--seed", seed))


def _start(*args):
    """train_mobilenet.py with these flags, in the background."""
    return subprocess.Popen(
        [sys.executable, "-c", CTRL_C_AS_IN_A_TERMINAL, str(PROJECT / "train_mobilenet.py"), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=PROJECT,
    )


# Tests started in the background (`nohup ... &`) inherit an ignored SIGINT, which Python keeps
# ignoring; the training script gets the KeyboardInterrupt that a terminal's Ctrl-C gives it.
CTRL_C_AS_IN_A_TERMINAL = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def _wait_for_epochs(process, runs, count, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        run_dirs = list(runs.glob("mobilenet-*")) if runs.exists() else []
        if run_dirs and _epochs_done(run_dirs[0]) >= count:
            return run_dirs[0]
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("training did not reach the epoch in time")


@pytest.fixture
def bigger_csv(tmp_path):
    return write_csv(tmp_path / "train.csv", "label,feature", labeled_rows(400))


def test_sigkill_then_resume_continues_from_the_last_finished_epoch(bigger_csv, tmp_path):
    """With the largest seed, which a resumed run offsets by the epochs done; in a folder with a space."""
    runs = tmp_path / "my runs"
    process = _start_training(bigger_csv, runs, epochs=6, seed=2**31 - 1)
    run_dir = _wait_for_epochs(process, runs, 2)
    process.kill()
    process.wait()
    done = _epochs_done(run_dir)
    assert 2 <= done < 6
    load_model(run_dir / "best.keras")
    assert not [path for path in run_dir.iterdir() if path.name.startswith(".")]

    began = json.loads((run_dir / "config.json").read_text())
    result = run_script("train_mobilenet.py", "--resume", run_dir, check=True)
    assert f"resuming {run_dir} after epoch {done}" in result.stdout
    config = json.loads((run_dir / "config.json").read_text())
    assert {key: value for key, value in config.items() if key != "resumes"} == began  # as it was recorded
    assert [resume["after_epoch"] for resume in config["resumes"]] == [done]
    assert config["resumes"][0]["command"].endswith(f"train_mobilenet.py --resume '{run_dir}'")  # shell-quoted
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 6
    assert list(runs.iterdir()) == [run_dir]


@pytest.mark.parametrize("every,saved", [(0, [1, 2, 3]), (3600, [1, 3])])
def test_resume_state_is_saved_at_most_every_interval_and_at_the_end(every, saved, tmp_path, monkeypatch):
    """On a GPU an epoch takes a second and last.keras (with Adam's state) half of one."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(NUM_CLASSES, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    checkpoint = callbacks.RunCheckpoint(tmp_path, resume_every=every)
    calls, save = [], checkpoint.save_resume_state
    monkeypatch.setattr(
        checkpoint, "save_resume_state", lambda epochs_done: (calls.append(epochs_done), save(epochs_done))
    )
    faces, targets = np.ones((14, 4), "float32"), np.eye(NUM_CLASSES, dtype="float32")[np.arange(14) % NUM_CLASSES]
    model.fit(faces, targets, validation_data=(faces, targets), epochs=3, callbacks=[checkpoint], verbose=0)
    assert calls == saved
    assert callbacks.read_entry(tmp_path / "last.keras")["epochs_done"] == 3
    assert list(pd.read_csv(tmp_path / "history.csv")["epoch"]) == [1, 2, 3]
    assert keras.saving.load_model(tmp_path / "last.keras").optimizer.iterations.numpy() == 3


def test_a_resumed_run_decays_and_stops_at_the_epochs_the_uninterrupted_one_did(tmp_path):
    """Plateau decay and early stopping count epochs without a new best; a resumed fit starts them
    at zero unless last.keras brings their counters back. A learning rate of 1e-9 keeps the
    validation accuracy flat, so both fire: the rate halves after epoch 3, the run stops at 4.
    history.csv records the rate each epoch trained with, not the one lowered after it."""
    config = {"schedule": "plateau", "patience": 3, "lr": 1e-9}
    faces = np.random.default_rng(0).random((14, 4), "float32")
    targets = np.eye(NUM_CLASSES, dtype="float32")[np.arange(14) % NUM_CLASSES]

    def fit(run_dir, model, epochs, state, history=()):
        patient = training._patient_callbacks(config)
        checkpoint = callbacks.RunCheckpoint(run_dir, history, state["best_record"], 0, patient, state["counters"])
        model.fit(
            faces,
            targets,
            validation_data=(faces, targets),
            epochs=epochs,
            initial_epoch=state["epochs_done"],
            callbacks=[*patient, checkpoint],
            verbose=0,
        )
        return pd.read_csv(run_dir / "history.csv")[["epoch", "learning_rate"]]

    def new_model():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(NUM_CLASSES, activation="softmax")])
        model.compile(
            optimizer=keras.optimizers.SGD(config["lr"]), loss="categorical_crossentropy", metrics=["accuracy"]
        )
        return model

    start = {"epochs_done": 0, "best_record": None, "counters": {}}
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    whole.mkdir(), parts.mkdir()
    (parts / "config.json").write_text("{}")
    uninterrupted = fit(whole, new_model(), 10, start)
    fit(parts, new_model(), 2, start)
    _, state, history = training._resume_state(parts)
    resumed = fit(parts, training._reopened(parts / "last.keras", state["epochs_done"]), 10, state, history)
    assert list(uninterrupted["epoch"]) == [1, 2, 3, 4]
    assert list(uninterrupted["learning_rate"]) == pytest.approx([1e-9, 1e-9, 1e-9, 5e-10])
    pd.testing.assert_frame_equal(resumed, uninterrupted)


def test_resume_keeps_a_best_model_saved_after_the_resume_state(tmp_path):
    """last.keras is saved at most once a minute, best.keras on every new best: the epochs run again
    after a resume must beat the best of the whole history, not the best when last.keras was saved,
    and the run's metrics name the epoch best.keras holds."""
    (tmp_path / "config.json").write_text("{}")
    write_last_keras(tmp_path / "last.keras", {"epochs_done": 1, "counters": {}})
    pd.DataFrame({"epoch": [1, 2, 3], "val_accuracy": [0.3, 0.5, 0.4], "seconds": 1.0}).to_csv(
        tmp_path / "history.csv", index=False
    )
    _, state, history = training._resume_state(tmp_path)
    assert state["epochs_done"] == 1 and state["best_record"]["epoch"] == 2
    assert [row["epoch"] for row in history] == [1]
    checkpoint = callbacks.RunCheckpoint(tmp_path, history, state["best_record"])
    checkpoint.rows.append({"epoch": 2, "val_accuracy": 0.45, "seconds": 1.0})  # epoch 2 run again, worse
    config = {"family": "dnn", "parameters": 10, "train_rows": 100}
    metrics = training.finish(tmp_path, config, checkpoint, None, 1.0, interrupted=True)
    assert (metrics["best_epoch"], metrics["best_val_accuracy"]) == (2, 0.5)


def test_a_second_resume_keeps_the_best_epoch_whose_row_the_first_resume_dropped(tmp_path):
    """The first resume runs epochs 2-3 again and rewrites history.csv without the row of the epoch
    best.keras holds; the second must still know that best, or a worse epoch would replace it."""
    (tmp_path / "config.json").write_text("{}")
    write_last_keras(tmp_path / "last.keras", {"epochs_done": 1, "counters": {}})
    pd.DataFrame({"epoch": [1, 2], "val_accuracy": [0.3, 0.45], "seconds": 1.0}).to_csv(
        tmp_path / "history.csv", index=False
    )
    with zipfile.ZipFile(tmp_path / "best.keras", "w") as archive:
        archive.writestr(callbacks.BEST_RECORD, json.dumps({"epoch": 3, "val_accuracy": 0.6, "seconds": 1.0}))
    _, state, _ = training._resume_state(tmp_path)
    assert (state["best_record"]["epoch"], state["best_record"]["val_accuracy"]) == (3, 0.6)


def test_best_keras_holds_its_epochs_row_and_is_counted_only_once_saved(tmp_path, monkeypatch):
    """The row goes inside best.keras for a later resume, and a Ctrl-C during the save (which keeps the
    old best.keras) must not leave the run naming the epoch it was saving."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(NUM_CLASSES, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    checkpoint = callbacks.RunCheckpoint(tmp_path, resume_every=3600)
    checkpoint.set_model(model)
    checkpoint.on_epoch_begin(0)
    checkpoint.on_epoch_end(0, {"loss": 1.0, "val_accuracy": 0.4})
    assert callbacks.read_entry(tmp_path / "best.keras", callbacks.BEST_RECORD)["epoch"] == 1

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(callbacks, "save_model", interrupted)
    checkpoint.on_epoch_begin(1)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.on_epoch_end(1, {"loss": 1.0, "val_accuracy": 0.5})
    assert checkpoint.best_record["epoch"] == 1


def test_speed_in_metrics_leaves_out_the_first_epoch_of_a_session_which_also_compiles(tmp_path):
    def rows(*seconds, start=1):
        return [{"epoch": start + index, "val_accuracy": 0.3, "seconds": value} for index, value in enumerate(seconds)]

    config = {"family": "dnn", "parameters": 10, "train_rows": 100}
    checkpoint = callbacks.RunCheckpoint(tmp_path, rows(6.0, 1.0), rows(6.0)[0])
    checkpoint.session_start = 0  # a fresh run: both rows are this session's
    metrics = training.finish(tmp_path, config, checkpoint, None, 7.5, interrupted=True)
    assert (metrics["wall_seconds"], metrics["wall_seconds_this_session"]) == (7.0, 7.5)
    assert (metrics["seconds_per_epoch"], metrics["train_images_per_second"]) == (1.0, 100.0)
    resumed = callbacks.RunCheckpoint(tmp_path, rows(6.0, 1.0), rows(6.0)[0])
    resumed.rows += rows(5.0, 2.0, 2.0, start=3)  # compiled again, then 2 s per epoch
    assert training.finish(tmp_path, config, resumed, None, 9.0, interrupted=True)["seconds_per_epoch"] == 2.0
    short = callbacks.RunCheckpoint(tmp_path, rows(6.0, 1.0, 2.0), rows(6.0)[0])
    short.rows += rows(4.5, start=4)  # a session of one epoch: the run's after its first
    assert training.finish(tmp_path, config, short, None, 4.5, interrupted=True)["seconds_per_epoch"] == 2.5


def test_last_keras_is_saved_with_each_new_best_so_a_resume_keeps_the_best_epochs_row(tmp_path, monkeypatch):
    """Saved once a minute only, a Ctrl-C 60 fast epochs on left best.keras holding an epoch that the
    resumed run then ran again, its history.csv row replaced by another."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(NUM_CLASSES, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    checkpoint = callbacks.RunCheckpoint(tmp_path, resume_every=3600)
    checkpoint.set_model(model)
    saved, save = [], checkpoint.save_resume_state
    monkeypatch.setattr(checkpoint, "save_resume_state", lambda done: (saved.append(done), save(done)))
    for epoch, accuracy in enumerate([0.4, 0.3, 0.5, 0.45]):
        checkpoint.on_epoch_begin(epoch)
        checkpoint.on_epoch_end(epoch, {"loss": 1.0, "val_accuracy": accuracy})
    assert saved == [1, 3]


def test_a_model_from_a_run_on_another_split_is_warned_about(tmp_path):
    """--init-from and --teacher models from runs whose config.json says they split other faces."""
    model = tmp_path / "runs" / "cnn-1" / "best.keras"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights")
    config = {"init_from": str(model), "teacher": [str(model)], "split_seed": 0, "equalize": "auto"}
    validation = Split(np.arange(10 * 48 * 48, dtype="uint8").reshape(10, 48, 48, 1), np.zeros(10), np.arange(10))
    faces = training.faces_digest(validation.pixels)
    for recorded, expected in [
        ({"train_rows": 90, "validation_rows": 10}, []),
        ({"train_rows": 70, "validation_rows": 30}, ["training faces 70 there, 90 here", "validation faces 30 there"]),
        ({"train_rows": 90, "validation_rows": 10, "split_seed": 1}, ["--split-seed 1 there, 0 here"]),
        ({"equalize": "never", "validation_digest": faces}, ["read with --equalize never, this run reads them with"]),
        ({"train_rows": 90, "validation_rows": 10, "split_seed": 1, "validation_digest": faces}, []),  # fer2013's
        ({"validation_digest": "0"}, ["another validation split (other faces)"]),
    ]:
        (model.parent / "config.json").write_text(json.dumps({"family": "cnn", **recorded}))
        warnings = []
        training.warn_of_other_faces(config, 90, validation, warnings.append)
        assert len(warnings) == (2 if expected else 0)  # the model as --init-from and as --teacher
        assert all(part in warning for part in expected for warning in warnings)
    (model.parent / "config.json").unlink()  # a model outside a run: nothing known of its split
    warnings = []
    training.warn_of_other_faces({**config, "split_seed": 1}, 90, validation, warnings.append)
    assert warnings == []


def test_a_run_saved_by_an_earlier_version_resumes_from_its_state_json(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with zipfile.ZipFile(tmp_path / "last.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    (tmp_path / "state.json").write_text('{"epochs_done": 2, "best": 0.5}')
    pd.DataFrame({"epoch": [1, 2, 3], "val_accuracy": [0.3, 0.5, 0.4]}).to_csv(tmp_path / "history.csv", index=False)
    _, state, history = training._resume_state(tmp_path)
    assert state["epochs_done"] == 2 and [row["epoch"] for row in history] == [1, 2]


def test_resume_from_another_folder_finds_the_data_and_refuses_changed_data(tmp_path, monkeypatch):
    """config.json records --data as typed (data/train.csv, from the project folder); a resume from
    elsewhere finds it there. If the file's content changed, validation would be on other faces."""
    (tmp_path / "project" / "data").mkdir(parents=True)
    data = write_csv(tmp_path / "project" / "data" / "train.csv", "label,feature", labeled_rows(14))
    run_dir = tmp_path / "project" / "runs" / "cnn-1"
    run_dir.mkdir(parents=True)
    config = {"family": "cnn", "data": "data/train.csv", "run_dir": "runs/cnn-1", "data_digest": file_digest(data)}
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "history.csv").write_text("epoch,val_accuracy\n1,0.2\n")
    write_last_keras(run_dir / "last.keras", {"epochs_done": 1, "counters": {}})
    monkeypatch.chdir(tmp_path)
    resumed, _, _ = training._resumed(run_dir, "cnn", {})
    assert Path(resumed["data"]).resolve() == data.resolve()
    write_csv(data, "label,feature", labeled_rows(14, seed=1))
    with pytest.raises(UserError, match="data/train.csv: is not the file .* was trained on"):
        training._resumed(run_dir, "cnn", {})


def test_resume_refuses_a_teacher_whose_content_changed(tmp_path, train_csv):
    """Distillation's soft targets are computed again on resume, from the --teacher files as they are
    now: models/ replaced in between would change what the run learns halfway."""
    teacher = tmp_path / "teacher.npz"
    teacher.write_bytes(b"first")
    run_dir = tmp_path / "runs" / "dnn-1"
    run_dir.mkdir(parents=True)
    config = {
        "family": "dnn",
        "data": str(train_csv),
        "run_dir": str(run_dir),
        "data_digest": file_digest(train_csv),
        "teacher": [str(teacher)],
        "teacher_digests": [file_digest(teacher)],
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "history.csv").write_text("epoch,val_accuracy\n1,0.2\n")
    write_last_keras(run_dir / "last.keras", {"epochs_done": 1, "counters": {}})
    assert training._resumed(run_dir, "dnn", {})[0]["teacher"] == [str(teacher)]
    teacher.write_bytes(b"second")
    with pytest.raises(UserError, match="teacher.npz: is not the teacher .* was trained with"):
        training._resumed(run_dir, "dnn", {})


def _augmenting_model(path):
    """A compiled model with the suite's augmentation and random erasing, saved to `path`; the faces
    it was called on and its first (epoch-1) augmentation of them."""
    keras.utils.set_random_seed(0)
    preprocessing = models.preprocessing_layers(augment=AUGMENTATION, erasing=0.5, seed=0)
    model = keras.Sequential([keras.Input(INPUT_SHAPE), *preprocessing, keras.layers.Flatten(), keras.layers.Dense(7)])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    faces = np.random.default_rng(0).uniform(0, 255, (4, *INPUT_SHAPE)).astype("float32")
    epoch_one = keras.ops.convert_to_numpy(model.layers[0](faces, training=True))
    model.save(path)
    return faces, epoch_one


def test_a_reopened_model_draws_new_augmentations(tmp_path):
    """Keras saves no layer's place in its random stream: a loaded model draws epoch 1's
    augmentations (and dropout masks) again, so a resumed run would repeat them."""
    faces, epoch_one = _augmenting_model(tmp_path / "last.keras")

    def first_draw(loaded):
        return keras.ops.convert_to_numpy(loaded.layers[0](faces, training=True))

    np.testing.assert_array_equal(first_draw(keras.saving.load_model(tmp_path / "last.keras")), epoch_one)
    moved_on = first_draw(training._reopened(tmp_path / "last.keras", epochs_done=3))
    assert not np.allclose(moved_on, epoch_one)
    np.testing.assert_array_equal(first_draw(training._reopened(tmp_path / "last.keras", 3)), moved_on)


def test_a_reopened_run_keeps_its_optimizer_state_and_lowered_learning_rate(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(NUM_CLASSES, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(32, 4)), np.eye(NUM_CLASSES)[rng.integers(0, NUM_CLASSES, 32)], batch_size=8, verbose=0)
    model.optimizer.learning_rate.assign(3e-4)  # as a plateau drop leaves it
    model.save(tmp_path / "last.keras")
    reopened = training._reopened(tmp_path / "last.keras", epochs_done=1)
    assert int(keras.ops.convert_to_numpy(reopened.optimizer.iterations)) == 4
    assert float(keras.ops.convert_to_numpy(reopened.optimizer.learning_rate)) == pytest.approx(3e-4)
    saved = [keras.ops.convert_to_numpy(variable) for variable in model.optimizer.variables]
    loaded = [keras.ops.convert_to_numpy(variable) for variable in reopened.optimizer.variables]
    assert len(saved) == len(loaded) > 2 and all(np.array_equal(a, b) for a, b in zip(saved, loaded))
    np.testing.assert_array_equal(reopened.get_weights()[0], model.get_weights()[0])


def test_a_run_begun_on_a_gpu_resumes_on_a_cpu_with_its_optimizer_state(train_csv, tmp_path, monkeypatch):
    """Mixed precision (auto) follows the machine a run began on: under another policy Keras skips the
    saved optimizer (loss scaling or none) with a warning, and the run would restart its warm-up."""
    import warnings

    monkeypatch.syspath_prepend(str(PROJECT))
    from train_dnn import build_network

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    policies = []

    class Policy(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            policies.append(keras.mixed_precision.dtype_policy().name)

    real_callbacks = training._callbacks
    monkeypatch.setattr(training.backend, "gpu_available", lambda: True)
    monkeypatch.setattr(training, "_callbacks", lambda *args: [*real_callbacks(*args), Policy(), StopAfterFirstEpoch()])
    config = {**_tiny_config(train_csv, tmp_path / "runs", epochs=3), "mixed_precision": "auto"}
    try:
        with pytest.raises(SystemExit, match="130"):
            training.train("dnn", config, build_network)
        run_dir = only_run(tmp_path / "runs")
        assert json.loads((run_dir / "config.json").read_text())["gpu"] is True
        assert keras.mixed_precision.dtype_policy().name == "float32"  # put back for the next run in this process
        monkeypatch.setattr(training.backend, "gpu_available", lambda: False)
        monkeypatch.setattr(training, "_callbacks", lambda *args: [*real_callbacks(*args), Policy()])
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="Skipping variable loading for optimizer")
            training.train("dnn", {}, build_network, resume=run_dir)
        assert policies == ["mixed_float16", "mixed_float16"]
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3] and history["learning_rate"].is_monotonic_decreasing


def test_a_run_saved_under_tensorflow_resumes_under_jax_with_xla(tmp_path):
    """load_model keeps the saving backend's jit_compile: a TensorFlow CPU run saves it off, and
    resumed under JAX it trained 100x slower. Reopened, it is compiled for the backend at hand."""
    _augmenting_model(tmp_path / "last.keras")
    script = f"""
import keras
from fersuite import training
plain = keras.saving.load_model({str(tmp_path / "last.keras")!r})
reopened = training._reopened({str(tmp_path / "last.keras")!r}, 1)
print(plain.jit_compile, reopened.jit_compile, int(reopened.optimizer.iterations.numpy()))
"""
    if keras.saving.load_model(tmp_path / "last.keras").jit_compile:
        pytest.skip("saved with jit_compile on (under JAX, or TensorFlow on a GPU): nothing for JAX to correct")
    assert run_under("jax", script).stdout.split()[-3:] == ["False", "True", "0"]


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="needs a backend other than torch to reopen under")
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_a_run_saved_under_torch_trains_on_under_another_backend(tmp_path, optimizer):
    """Under torch Keras saves the optimizer as a torch-only class (torch_adamw.AdamW): reopened
    under TensorFlow or JAX it was rebuilt as that class, and its first step failed."""
    path = tmp_path / "last.keras"
    script = f"""
import keras, numpy as np
from fersuite import training
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(7, activation="softmax")])
config = {{"lr": 1e-3, "schedule": "constant", "optimizer": {optimizer!r}, "weight_decay": 1e-4}}
model.compile(optimizer=training.build_optimizer(config, 1), loss="categorical_crossentropy")
model.fit(np.ones((8, 4)), np.eye(7)[np.arange(8) % 7], batch_size=8, verbose=0)
model.save({str(path)!r})
"""
    run_under("torch", script)
    model = training._reopened_whole(path, 1)
    assert "torch" not in type(model.optimizer).__module__
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 1  # its state came along
    model.fit(np.ones((8, 4)), np.eye(7)[np.arange(8) % 7], batch_size=8, verbose=0)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2


def test_ctrl_c_saves_and_says_how_to_resume(bigger_csv, tmp_path):
    """In a command to paste back into a shell, which config.json records too: a folder's space is quoted."""
    runs = tmp_path / "my runs"
    process = _start_training(bigger_csv, runs, epochs=50, resume_every=3600)  # the first epoch is saved all the same
    run_dir = _wait_for_epochs(process, runs, 1)
    second = run_script("train_mobilenet.py", "--resume", run_dir)  # while the run trains
    assert second.returncode == 2 and f"{run_dir}: another process is training in it" in second.stderr, second.stderr
    assert callbacks.lock_state(run_dir) == "running" and process.poll() is None
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and callbacks.lock_state(run_dir) is None  # let go, and its file removed
    resume = shlex.join(["python", str(PROJECT / "train_mobilenet.py"), "--resume", str(run_dir)])  # as it was called
    assert f"resume with: {resume}" in stderr
    recorded = shlex.split(json.loads((run_dir / "config.json").read_text())["command"])
    assert recorded[0] == str(PROJECT / "train_mobilenet.py")
    assert recorded[recorded.index("--runs-dir") + 1] == str(runs)
    saved = callbacks.read_entry(run_dir / "last.keras")["epochs_done"]
    assert f"--resume '{run_dir}'\n(it goes on after epoch {saved}, the last one last.keras saved)" in stderr
    assert (run_dir / "best.keras").exists() and _history_rows(run_dir) >= 1
    assert json.loads((run_dir / "metrics.json").read_text())["interrupted"] is True

    resumed = _start("--resume", run_dir, "--resume-every", 0)  # killed, not finished: its first session's
    # metrics.json is not its last word
    _wait_for_epochs(resumed, runs, saved + 1)
    resumed.kill()
    resumed.wait()
    assert not (run_dir / "metrics.json").exists() and callbacks.lock_state(run_dir) == "killed"
    assert plots.run_summary([plots.load_run(run_dir)])["status"].tolist() == ["killed"]


def test_ctrl_c_that_python_drops_still_stops_at_the_next_batch(monkeypatch):
    """A KeyboardInterrupt raised inside a garbage-collector callback is only reported as ignored
    (JAX has such a callback; a Ctrl-C landing in it once let a run go on to its last epoch)."""

    def press_ctrl_c(phase, info):
        gc.callbacks.remove(press_ctrl_c)
        signal.raise_signal(signal.SIGINT)

    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: dropped.append(unraisable.exc_type))
    with callbacks.CtrlC() as ctrl_c:
        gc.callbacks.append(press_ctrl_c)
        gc.collect()  # the handler runs inside press_ctrl_c, and its KeyboardInterrupt goes nowhere
        assert dropped == [KeyboardInterrupt] and ctrl_c.pressed
        for hook in (ctrl_c.on_train_batch_begin, ctrl_c.on_test_batch_begin, ctrl_c.on_epoch_begin):
            with pytest.raises(KeyboardInterrupt):
                hook(0)
    assert signal.getsignal(signal.SIGINT) is not ctrl_c._press


def test_a_ctrl_c_that_the_process_ignores_stays_ignored():
    """A script's background job ignores SIGINT, so that the Ctrl-C for its foreground job spares it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with callbacks.CtrlC():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with callbacks.CtrlC() as ctrl_c:
            assert signal.getsignal(signal.SIGINT) == ctrl_c._press
    finally:
        signal.signal(signal.SIGINT, previous)


@keras.saving.register_keras_serializable(package="tests")
class PoisonAfter(keras.layers.Layer):
    """Outputs NaN once it has seen `steps` training batches: a loss that blows up mid-run."""

    def __init__(self, steps, **kwargs):
        super().__init__(**kwargs)
        self.steps = steps
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="seen")

    def call(self, inputs, training=False):
        if training:
            self.seen.assign(self.seen + 1.0)
        return inputs * keras.ops.where(self.seen > self.steps, math.nan, 1.0)

    def get_config(self):
        return {**super().get_config(), "steps": self.steps}


def _tiny_config(data, runs, epochs):
    """train_dnn.py's flags and defaults, as the script would pass them to training.train."""
    from fersuite import cli
    from train_dnn import DEFAULTS

    parser = cli.training_parser("", DEFAULTS)
    parser.add_argument("--units", type=cli.int_list)
    parser.add_argument("--dropout", type=float, default=0.1)
    args = [
        "--data",
        data,
        "--runs-dir",
        runs,
        "--epochs",
        epochs,
        "--units",
        8,
        "--batch-size",
        16,
        "--warmup-epochs",
        0,
        "--resume-every",
        0,
    ]
    return vars(parser.parse_args([*map(str, args), "--quiet"]))


def train_until_nan(data, runs):
    """A tiny DNN whose loss turns NaN in its second epoch: the run stops and keeps epoch 1's model."""
    config = _tiny_config(data, runs, epochs=5)
    steps_per_epoch = math.ceil(38 / 16)

    def build(config, preprocessing):
        inputs = keras.Input(INPUT_SHAPE)
        x = keras.layers.Rescaling(1 / 255)(inputs)
        x = PoisonAfter(steps_per_epoch)(keras.layers.Flatten()(x))
        return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, activation="softmax")(x))

    with pytest.raises(UserError, match="the loss became NaN in epoch 2"):
        training.train("dnn", config, build)
    run_dir = only_run(runs)
    model = keras.saving.load_model(run_dir / "best.keras")
    assert np.isfinite(model.predict(np.zeros((1, *INPUT_SHAPE)), verbose=0)).all()
    assert callbacks.read_entry(run_dir / "last.keras")["epochs_done"] == 1


def train_with_ema(data, runs):
    """A tiny DNN with --ema 0.9 for 3 epochs: validation scores the averaged weights (not the ones
    the last step left), best.keras holds what scored best, and last.keras the weights to resume."""
    from train_dnn import build_network

    config = {**_tiny_config(data, runs, epochs=3), "ema": 0.9, "dropout": 0.1}
    run_dir = training.train("dnn", config, build_network)
    history = pd.read_csv(run_dir / "history.csv")
    validation = load_splits(data, config["val_split"], config["split_seed"])["validation"]
    targets = np.eye(NUM_CLASSES, dtype="float32")[validation.labels]

    def validation_loss(model):
        model.compile(loss="categorical_crossentropy")
        return model.evaluate(validation.pixels, targets, verbose=0, return_dict=True)["loss"]

    last = keras.saving.load_model(run_dir / "last.keras")
    weights = [variable.numpy() for variable in last.trainable_variables]
    with callbacks.averaged_weights(last):
        averaged = [variable.numpy() for variable in last.trainable_variables]
    assert max(np.abs(a - b).max() for a, b in zip(weights, averaged)) > 1e-4
    for variable, value in zip(last.trainable_variables, averaged):
        variable.assign(value)
    assert validation_loss(last) == pytest.approx(history["val_loss"].iloc[-1], rel=1e-4)
    best = history.loc[history["val_accuracy"].idxmax()]
    assert validation_loss(load_model(run_dir / "best.keras")) == pytest.approx(best["val_loss"], rel=1e-4)


def test_ema_validates_and_keeps_the_averaged_weights(train_csv, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PROJECT))
    train_with_ema(train_csv, tmp_path / "runs")


def test_ema_under_jax(train_csv, tmp_path):
    """JAX's fit keeps the weights outside the model during an epoch; the swaps must still land."""
    script = "\n".join(
        [
            f"import sys; sys.path[:0] = [{str(PROJECT / 'tests')!r}, {str(PROJECT)!r}]",
            "import test_training",
            f"test_training.train_with_ema({str(train_csv)!r}, {str(tmp_path / 'runs')!r})",
            "print('ok')",
        ]
    )
    assert run_under("jax", script).stdout.strip().splitlines()[-1] == "ok"


def test_nan_loss_stops_the_run_and_keeps_the_last_good_model(train_csv, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PROJECT))
    train_until_nan(train_csv, tmp_path / "runs")


JAX_DISPATCH_SCRIPT = """
import sys
sys.path[:0] = [{tests!r}, {project!r}]
import keras
import test_training
from fersuite import backend, callbacks, training
assert backend.name() == "jax"
config = test_training._tiny_config({data!r}, {runs!r}, epochs=5)
for schedule, patience, budget, ema in (("cosine", 0, 0.0, 0.0), ("plateau", 3, 5.0, 0.999)):
    config.update(schedule=schedule, patience=patience, time_budget=budget, ema=ema)
    chosen = [callbacks.CtrlC(), *training._callbacks(config, callbacks.RunCheckpoint({runs!r}))]
    assert keras.callbacks.CallbackList(chosen)._async_train, [type(callback).__name__ for callback in chosen]
test_training.train_until_nan({data!r}, {runs!r})
print("ok")
"""


def test_under_jax_training_compiles_once_never_waits_for_a_step_and_stops_on_nan(train_csv, tmp_path):
    """On JAX a per-batch callback that Keras may not run off the loop's thread (Keras's own
    TerminateOnNaN is one) makes every step wait for the previous one's loss: host and GPU take
    turns; and a smaller last batch compiles the training step a second time. TensorFlow never
    dispatches callbacks asynchronously nor recompiles for it, hence the JAX interpreter. The run's
    37 training faces in batches of 16 would leave a last batch of 5."""
    script = JAX_DISPATCH_SCRIPT.format(
        tests=str(PROJECT / "tests"), project=str(PROJECT), data=str(train_csv), runs=str(tmp_path / "runs")
    )
    result = run_under("jax", script, JAX_LOG_COMPILES="1")
    assert result.stdout.strip().splitlines()[-1] == "ok"
    assert len(re.findall(r"Compiling (?:jit\()?train_step\b", result.stderr)) == 1


@pytest.mark.parametrize("count,batch_size", [(10, 4), (8, 4), (3, 8)])
def test_full_batch_order_covers_every_row_in_whole_batches(count, batch_size):
    order = full_batch_order(count, batch_size, np.random.default_rng(0))
    assert len(order) % batch_size == 0 and len(order) - count < batch_size
    assert set(order) == set(range(count)) and sorted(order[:count]) == list(range(count))


def test_same_seed_gives_the_same_history(train_csv, tmp_path):
    histories = []
    for attempt in ("a", "b"):
        runs = tmp_path / attempt
        run_script("train_cnn.py", *tiny_training_args("cnn", train_csv, runs, 2, "--seed", "7"), check=True)
        histories.append(pd.read_csv(only_run(runs) / "history.csv").drop(columns="seconds"))
    pd.testing.assert_frame_equal(histories[0].round(4), histories[1].round(4))


def test_budget_learning_rate_warms_up_then_decays_over_time_or_epochs():
    def cosine(share):
        return callbacks.COSINE_FLOOR + (1 - callbacks.COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * share))

    rates = [callbacks.budget_learning_rate(1.0, epoch, 3, 100, progress=0.0) for epoch in range(4)]
    np.testing.assert_allclose(rates, [0.1, 0.4, 0.7, 1.0])  # the peak when the warm-up ends
    by_time = [callbacks.budget_learning_rate(1.0, 10, 3, 100, progress) for progress in (0.25, 0.5, 0.75, 1.0, 1.5)]
    assert by_time == sorted(by_time, reverse=True)
    assert by_time[1] == pytest.approx(cosine(7 / 17))  # epoch 10 of 20: 7 of the 17 after the warm-up
    assert by_time[3] == by_time[4] == pytest.approx(callbacks.COSINE_FLOOR)
    assert callbacks.budget_learning_rate(1.0, 50, 3, 100, progress=0.1) == pytest.approx(cosine(47 / 97))


def test_a_budget_the_epochs_end_first_follows_the_schedule_without_a_budget():
    config = {"schedule": "cosine", "time_budget": 0, "warmup_epochs": 3, "epochs": 10, "lr": 1.0, "optimizer": "adam"}
    optimizer = training.build_optimizer({**config, "weight_decay": 0.0}, steps_per_epoch=1)
    schedule = keras.optimizers.schedules.deserialize(optimizer.get_config()["learning_rate"])
    plain = [float(keras.ops.convert_to_numpy(schedule(epoch))) for epoch in range(10)]
    budget = [callbacks.budget_learning_rate(1.0, epoch, 3, 10, progress=0.0) for epoch in range(10)]
    np.testing.assert_allclose(budget, plain, rtol=1e-5)


def test_budget_schedule_is_not_thrown_by_a_slow_compiling_first_epoch():
    """The GPU session of 2026-11-27: a 116 s first epoch, then 1 s epochs, in a 4-minute budget."""
    durations = [116.0, 1.0, 1.2, 0.9]
    assert callbacks.epoch_pace(durations) == 1.0 and callbacks.epoch_pace([116.0]) == 116.0
    seconds_left = 240.0 - sum(durations)
    progress = callbacks.budget_progress(len(durations), seconds_left, callbacks.epoch_pace(durations))
    assert progress == pytest.approx(4 / (4 + seconds_left)) and progress < 0.04
    assert callbacks.budget_progress(100, 0.5, 1.0) > 0.99 and callbacks.budget_progress(100, -3.0, 1.0) == 1.0


def test_time_budget_counts_the_minutes_before_fit(tmp_path):
    """Teachers' predictions took about a minute before a GPU session's distilled run began to fit;
    its budget must include them, or that run outlasts the others and the 10-minute command."""
    config = {"time_budget": 1.0, "schedule": "constant", "lr": 1e-3, "warmup_epochs": 0, "epochs": 100}
    late, fresh = (
        callbacks.TimeBudget(config, callbacks.RunCheckpoint(tmp_path), started)
        for started in (time.perf_counter() - 61, None)
    )
    for budget in (late, fresh):
        budget.set_model(types.SimpleNamespace(stop_training=False))
        budget.on_train_begin()
        budget.on_epoch_end(0)
    assert late.model.stop_training and not fresh.model.stop_training
    assert 61 <= late.spent() < 62 and fresh.spent() < 1


def test_a_resumed_time_budget_keeps_the_pace_of_the_epochs_before_it(tmp_path, monkeypatch):
    """A run of 4 minutes stopped after 10 epochs (a 100 s first one that compiled, then 2 s each)
    resumes 118 s into its budget with 61 epochs left at its pace, not half-way down its cosine; and
    the resumed run's own first epoch, which compiles again, does not make it stop."""
    now = [0.0]
    monkeypatch.setattr(callbacks, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    history = [{"epoch": epoch + 1, "seconds": 100.0 if epoch == 0 else 2.0} for epoch in range(10)]
    config = {"time_budget": 4.0, "schedule": "cosine", "lr": 1.0, "warmup_epochs": 0, "epochs": 1000}
    budget = callbacks.TimeBudget(config, callbacks.RunCheckpoint(tmp_path, history), started=0.0)
    rate = types.SimpleNamespace(value=None)
    rate.assign = lambda value: setattr(rate, "value", value)
    budget.set_model(types.SimpleNamespace(stop_training=False, optimizer=types.SimpleNamespace(learning_rate=rate)))
    budget.on_train_begin()
    budget.on_epoch_begin(10)
    expected = callbacks.budget_learning_rate(1.0, 10, 0, 1000, progress=10 / (10 + 122 / 2))
    assert rate.value == pytest.approx(expected) and rate.value > 0.9
    now[0] = 50.0
    budget.on_epoch_end(10)
    assert not budget.model.stop_training
    now[0] = 121.0
    budget.on_epoch_end(11)
    assert budget.model.stop_training


def test_time_budget_ends_the_run_before_its_epochs(train_csv, tmp_path):
    runs = tmp_path / "runs"
    args = tiny_training_args("dnn", train_csv, runs, 20, "--time-budget", "0.005")
    result = run_script("train_dnn.py", *args, check=True)
    run_dir = only_run(runs)
    assert json.loads((run_dir / "config.json").read_text())["time_budget"] == 0.005
    history = pd.read_csv(run_dir / "history.csv")
    assert len(history) < 20 and history["seconds"].sum() <= 0.3 + history["seconds"].iloc[-1]
    assert f"stopping after epoch {len(history)}" in result.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == len(history)


def test_seed_changes_the_weights_but_not_the_validation_faces(train_csv, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PROJECT))
    from train_dnn import build_network

    seen = []
    real_load_table, real_split_table, real_make_model = training.load_table, training.split_table, training.make_model

    def load_table(path, equalize):
        seen.append({"equalize": equalize})
        return real_load_table(path, equalize=equalize)

    def split_table(table, val_split, seed):
        splits = real_split_table(table, val_split, seed)
        seen[-1].update(asked=(seed, seen[-1]["equalize"]), validation=list(splits["validation"].ids))
        return splits

    def make_model(*args):
        seen[-1]["kernel"] = keras.ops.convert_to_numpy(real_make_model(*args).weights[0])
        raise UserError("stop here")

    monkeypatch.setattr(training, "load_table", load_table)
    monkeypatch.setattr(training, "split_table", split_table)
    monkeypatch.setattr(training, "make_model", make_model)
    for flags in ({"seed": 7}, {"seed": 8}, {"seed": 7, "split_seed": 3, "equalize": "never"}):
        config = {**_tiny_config(train_csv, tmp_path / "runs", epochs=1), **flags}
        with pytest.raises(UserError, match="stop here"):
            training.train("dnn", config, build_network)
    assert [run["asked"] for run in seen] == [(0, "auto"), (0, "auto"), (3, "never")]
    assert seen[0]["validation"] == seen[1]["validation"] != seen[2]["validation"]
    assert not np.allclose(seen[0]["kernel"], seen[1]["kernel"])


def test_balanced_class_weights_go_by_each_faces_label_not_its_soft_targets_top_class():
    """Keras's class_weight weighs a row by argmax(y); distilled targets can put a teacher's class there."""
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    faces = numbered_faces(8)
    targets = np.eye(NUM_CLASSES, dtype="float32")[[0, 0, 0, 0, 0, 1, 2, 2]]  # face 4: the teacher says Angry
    config = {"class_weight": "balanced", "batch_size": 4, "seed": 0}
    inputs = training.training_inputs(config, Split(faces, labels, np.arange(8).astype(str)), targets, 0)
    weights = training.class_weights(labels, "balanced")
    rows = inputs["x"][:, 0, 0, 0].astype(int)
    assert "class_weight" not in inputs and weights[1] > weights[0]
    np.testing.assert_allclose(inputs["sample_weight"], [weights[label] for label in labels[rows]], rtol=1e-6)


def test_augmentation_settings_reach_the_model_and_no_augment_leaves_it_out(train_csv, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PROJECT))
    from train_dnn import build_network

    config = {**_tiny_config(train_csv, tmp_path, 1), "rotation_range": 7.0, "zoom_range": 0.3, "random_erasing": 0.4}
    faces = np.zeros((4, *INPUT_SHAPE), np.uint8)
    model = training.make_model(config, build_network, faces)
    affine = [layer.get_config() for layer in model.layers if isinstance(layer, RandomAffine)]
    assert [{key: settings[key] for key in AUGMENTATION} for settings in affine] == [
        {key: config[key] for key in AUGMENTATION}
    ]
    assert [layer.probability for layer in model.layers if isinstance(layer, RandomErasing)] == [0.4]
    plain = training.make_model({**config, "augment": False, "random_erasing": 0.0}, build_network, faces)
    assert not [layer for layer in plain.layers if isinstance(layer, (RandomAffine, RandomErasing))]
    assert plain.count_params() == model.count_params()


def test_no_augment_also_drops_a_scripts_default_erasing_and_mixup_unless_given():
    """--no-augment's help says the images as they are: train_cnn.py's default erasing (0.5) went on."""
    from fersuite import cli

    parser = cli.training_parser("", {"epochs": 1, "random_erasing": 0.5, "mixup": 0.2})
    parsed = {flags: parser.parse_args(flags.split()) for flags in ("", "--no-augment", "--no-augment --mixup 0.3")}
    assert [(args.random_erasing, args.mixup) for args in parsed.values()] == [(0.5, 0.2), (0.0, 0.0), (0.0, 0.3)]


def test_fit_gets_each_faces_own_target_and_the_teachers_soft_ones(train_csv, tmp_path, monkeypatch):
    """Every row fit sees is matched to the target its face must carry."""
    faces = numbered_faces(10)
    split = Split(faces, np.arange(10) % NUM_CLASSES, np.arange(10).astype(str))
    targets = np.random.default_rng(0).dirichlet(np.ones(NUM_CLASSES), 10).astype("float32")
    inputs = training.training_inputs({"class_weight": "none", "batch_size": 4, "seed": 0}, split, targets, 0)
    rows = inputs["x"][:, 0, 0, 0].astype(int)
    assert len(rows) == 12 and set(rows) == set(range(10))
    np.testing.assert_array_equal(inputs["y"], targets[rows])

    monkeypatch.syspath_prepend(str(PROJECT))
    from train_dnn import build_network

    teacher = tmp_path / "teacher.keras"
    models.build_dnn(INPUT_SHAPE, NUM_CLASSES, models.preprocessing_layers(), units=(8,)).save(teacher)
    given = []

    def spy(config, train_split, targets, epochs_done):
        given.append(targets)
        raise UserError("stop here")

    monkeypatch.setattr(training, "training_inputs", spy)
    config = {**_tiny_config(train_csv, tmp_path / "runs", 1), "teacher": [str(teacher)], "teacher_weight": 0.5}
    with pytest.raises(UserError, match="stop here"):
        training.train("dnn", config, build_network)
    np.testing.assert_allclose(given[0].sum(axis=1), 1.0, rtol=1e-5)
    assert (given[0].max(axis=1) < 1).all()  # the teacher's share, not the one-hot labels


def test_init_from_copies_a_trained_models_weights_and_refuses_another_network(tmp_path):
    def build(alpha, seed):
        keras.utils.set_random_seed(seed)
        return models.build_mobilenet(INPUT_SHAPE, NUM_CLASSES, models.preprocessing_layers(), alpha=alpha)

    trained = build(0.25, seed=1)
    trained.save(tmp_path / "trained.keras")
    fresh = build(0.25, seed=2)
    training.start_from(fresh, tmp_path / "trained.keras")
    for copied, original in zip(fresh.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(copied, original)
    with pytest.raises(UserError, match=r"its network differs .* \(3, 3, 1, 2\) there, \(3, 3, 1, 4\) here"):
        training.start_from(build(0.5, seed=2), tmp_path / "trained.keras")
    featurewise = models.preprocessing_layers(normalization="featurewise", mean=120.0, std=60.0)
    scaled = models.build_mobilenet(INPUT_SHAPE, NUM_CLASSES, featurewise, alpha=0.25)
    with pytest.raises(UserError, match="trained with --normalization unit, these flags scale pixels as featurewise"):
        training.start_from(scaled, tmp_path / "trained.keras")  # same weights' shapes, other input scale


def test_init_from_run_records_its_starting_model(train_csv, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    run_script("train_cnn.py", *tiny_training_args("cnn", train_csv, first), check=True)
    start = only_run(first) / "best.keras"
    run_script("train_cnn.py", *tiny_training_args("cnn", train_csv, second, 1, "--init-from", start), check=True)
    assert json.loads((only_run(second) / "config.json").read_text())["init_from"] == str(start)
    # stderr is the one line: TensorFlow's C++ start-up notice is kept off it on both
    for backend in ("tensorflow", "jax"):
        third = tmp_path / backend
        wrong = run_script(
            "train_cnn.py",
            *tiny_training_args("cnn", train_csv, third, 1, "--init-from", start, "--filters", "4,8,8"),
            env={"KERAS_BACKEND": backend},
        )
        assert wrong.returncode == 2 and wrong.stderr.startswith(f"error: {start}: its network differs"), wrong.stderr
        assert wrong.stderr.count("\n") == 1 and (not third.exists() or not any(third.iterdir()))
        assert f"(its run: {json.loads((start.parent / 'config.json').read_text())['command']})" in wrong.stderr


@pytest.mark.parametrize(
    "name,weight_decay,expected",
    [
        ("adam", 0.0, ("Adam", None)),
        ("adam", 5e-4, ("Adam", 5e-4)),
        ("adamw", 0.0, ("AdamW", 0.0)),
        ("adamw", 5e-4, ("AdamW", 5e-4)),
        ("sgd", 5e-4, ("SGD", 5e-4)),
    ],
)
def test_optimizer_takes_the_weight_decay_asked_for(name, weight_decay, expected):
    """By class name: PyTorch's backend has classes of its own with Keras's names."""
    config = {"optimizer": name, "weight_decay": weight_decay, "lr": 1e-3, "schedule": "constant", "ema": 0.0}
    optimizer = training.build_optimizer(config, steps_per_epoch=10)
    assert (type(optimizer).__name__, optimizer.weight_decay) == expected
    if name == "sgd":
        assert optimizer.nesterov and optimizer.momentum == 0.9


def test_a_run_reads_its_faces_as_its_config_says(tmp_path, monkeypatch):
    """--equalize is recorded, so a resumed or scored run sees its faces as it trained on them; a run
    recorded before the flag existed gets the judgement (auto) its faces had then."""
    monkeypatch.setenv("FERSUITE_CACHE_DIR", str(tmp_path / "cache"))
    raw = raw_faces(14)
    path = faces_csv(tmp_path / "raw.csv", raw)
    config = {"data": str(path), "val_split": 0.5, "split_seed": 0}
    seen = {
        mode: np.concatenate(training._labeled_splits({**config, "equalize": mode})[0].pixels)
        for mode in ("never", "always")
    }
    assert np.isin(seen["never"], raw).all() and not np.array_equal(seen["never"], seen["always"])
    np.testing.assert_array_equal(np.concatenate(training._labeled_splits(config)[0].pixels), seen["always"])
    assert not contrast.is_equalized(raw)
    equalized = {mode: training._labeled_splits({**config, "equalize": mode})[2] for mode in contrast.MODES}
    assert equalized == {"auto": True, "always": True, "never": False}
    assert training._labeled_splits(config)[2] is True  # from the cache too


def test_a_run_on_raw_faces_says_it_equalized_them_and_records_it(tmp_path):
    path = faces_csv(tmp_path / "raw.csv", raw_faces(28))
    runs = tmp_path / "runs"
    result = run_script("train_dnn.py", *tiny_training_args("dnn", path, runs), "--val-split", 0.5, check=True)
    assert f"{path}: its faces are not histogram-equalized (judged raw); equalized as read" in result.stdout
    assert json.loads((only_run(runs) / "config.json").read_text())["equalized"] is True


def test_a_resume_finds_data_typed_with_dot_dot_from_the_folder_training_ran_in(tmp_path):
    """Trained in project/notebooks with --data ../data/train.csv --runs-dir ../runs: the run's folder
    alone cannot tell where 'notebooks' was; config.json's cwd does."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "data").mkdir()
    data = write_csv(tmp_path / "data" / "train.csv", "label,feature", labeled_rows(14))
    config = {"data": "../data/train.csv", "run_dir": "../runs/cnn-1", "cwd": str(tmp_path / "notebooks")}
    found = training._inputs_found(tmp_path / "runs" / "cnn-1", config)
    assert Path(found["data"]).resolve() == Path(data).resolve() and found["teacher"] == []


def test_ctrl_c_in_the_first_epoch_keeps_no_run_directory(train_csv, tmp_path, monkeypatch, capsys):
    """Its config.json alone would stand in runs/ (and in report_plots' runs.csv) as a run."""
    monkeypatch.syspath_prepend(str(PROJECT))
    from train_dnn import build_network

    class CtrlCInFirstBatch(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            raise KeyboardInterrupt

    real_callbacks = training._callbacks
    monkeypatch.setattr(training, "_callbacks", lambda *args: [*real_callbacks(*args), CtrlCInFirstBatch()])
    with pytest.raises(SystemExit, match="130"):
        training.train("dnn", _tiny_config(train_csv, tmp_path / "runs", epochs=2), build_network)
    assert list((tmp_path / "runs").iterdir()) == []
    assert "interrupted before the first epoch was saved: nothing kept" in capsys.readouterr().err


def test_the_lock_is_taken_on_the_file_at_its_path_not_one_its_last_holder_removed(tmp_path, monkeypatch):
    """A process that opened the lock file just as its holder ended and removed it would lock that
    removed file: a third process would then lock a new one, and both train in the folder."""
    import builtins

    opened = []

    def open_as_the_holder_removes_it(path, *args, **kwargs):
        handle = builtins.open(path, *args, **kwargs)  # noqa: SIM115  returned open, as open does
        if not opened:
            Path(path).unlink()
        opened.append(path)
        return handle

    monkeypatch.setattr(callbacks, "open", open_as_the_holder_removes_it, raising=False)
    with callbacks.training_lock(tmp_path):
        assert len(opened) == 2 and callbacks.lock_state(tmp_path) == "running"
        with pytest.raises(UserError, match="another process is training in it"), callbacks.training_lock(tmp_path):
            pass
    assert callbacks.lock_state(tmp_path) is None
