"""Synthetic FER CSVs and tiny training settings shared by the tests."""

import gzip
import lzma
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PROJECT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pixel_text(rng):
    return " ".join(map(str, rng.integers(0, 256, 2304)))


def write_csv(path, header, rows):
    """Write text rows, compressing by the file's suffix as a user's file would be."""
    text = header + "\n" + "\n".join(rows) + "\n"
    opener = {".gz": gzip.open, ".xz": lzma.open}.get(Path(path).suffix, open)
    with opener(path, "wt") as handle:
        handle.write(text)
    return Path(path)


def raw_faces(count, seed=0):
    """Faces with narrow, uneven histograms, as a raw fer2013.csv or photo has (uniform noise, squeezed)."""
    flat = np.random.default_rng(seed).integers(0, 256, (count, 48, 48, 1)).astype(np.uint8)
    return (100 + (flat.astype(float) / 255) ** 2 * 50).astype(np.uint8)


def faces_csv(path, faces):
    """A label,feature CSV of these faces."""
    rows = [f"{index % 7},{' '.join(map(str, face.ravel()))}" for index, face in enumerate(faces)]
    return write_csv(path, "label,feature", rows)


def numbered_faces(count):
    """Uniform faces, face i all pixels i: a row fit is given can be traced back to its face."""
    return np.arange(count, dtype=np.uint8)[:, None, None, None] * np.ones((1, 48, 48, 1), np.uint8)


def labeled_rows(count, seed=0):
    rng = np.random.default_rng(seed)
    return [f"{index % 7},{pixel_text(rng)}" for index in range(count)]


def fer2013_rows(count, seed=0):
    rng = np.random.default_rng(seed)
    usages = ["Training"] * (count - count // 4) + ["PublicTest"] * (count // 8)
    usages += ["PrivateTest"] * (count - len(usages))
    return [f"{index % 7},{pixel_text(rng)},{usage}" for index, usage in enumerate(usages)]


def kaggle_ids(count):
    """Kaggle-style ids that are not the row numbers (descending, with gaps), so that a submission
    numbering its rows instead of copying the id column is caught."""
    return [str(5 * (count - index)) for index in range(count)]


def unlabeled_rows(count, seed=0):
    rng = np.random.default_rng(seed)
    return [f"{face_id},{pixel_text(rng)}" for face_id in kaggle_ids(count)]


EMOTION_BRIGHTNESS = np.array([20 + 35 * emotion for emotion in range(7)], dtype="float32")


def brightness_probabilities(faces):
    """What brightness_model answers, computed in NumPy: softmax of -(mean pixel - brightness)² / 100."""
    logits = -((faces.reshape(len(faces), -1).mean(axis=1)[:, None] - EMOTION_BRIGHTNESS) ** 2) / 100
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def brightness_model(path):
    """A .keras model whose every answer is known without the suite (brightness_probabilities): the
    emotion whose EMOTION_BRIGHTNESS is nearest the face's mean pixel. A uniform face keeps its mean
    under every TTA view, so what predict.py writes can be checked row by row."""
    import keras

    inputs = keras.Input((48, 48, 1))
    mean = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = keras.layers.Dense(7)(mean)  # (2 c m - c²) / 100 = (m² - (m - c)²) / 100
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    model.layers[-2].set_weights([2 * EMOTION_BRIGHTNESS[None] / 100, -(EMOTION_BRIGHTNESS**2) / 100])
    model.save(path)
    return Path(path)


def uniform_face_text(value):
    return " ".join([str(int(value))] * 2304)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Each test parses afresh and never touches the user's ~/.cache."""
    monkeypatch.setenv("FERSUITE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def train_csv(tmp_path):
    return write_csv(tmp_path / "train.csv", "label,feature", labeled_rows(42))


@pytest.fixture
def test_csv(tmp_path):
    return write_csv(tmp_path / "test.csv", "id,feature", unlabeled_rows(12))


@pytest.fixture
def fer2013_csv(tmp_path):
    return write_csv(tmp_path / "fer2013.csv", "emotion,pixels,Usage", fer2013_rows(48))


TINY_NETWORKS = {
    "cnn": ["--filters", "4,8", "--dense", "16"],
    "dnn": ["--units", "16"],
    "mobilenet": ["--alpha", "0.25"],
}


def run_script(script, *args, env=None, check=False, **kwargs):
    """Run an entry script the way a user does; returns the CompletedProcess."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    result = subprocess.run(  # noqa: PLW1510  callers check returncode themselves
        [sys.executable, str(PROJECT / script), *map(str, args)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=kwargs.pop("cwd", PROJECT),
        **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def run_under(backend, script, **env):
    """Run a Python snippet in a fresh interpreter on another Keras backend (JAX: the lent GPU's); its result."""
    pytest.importorskip(backend)
    environment = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", **env}
    result = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, env=environment, cwd=PROJECT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def tiny_training_args(family, data, runs_dir, epochs=1, *extra):
    return [
        "--data", data, "--runs-dir", runs_dir, "--epochs", epochs, "--batch-size", 16,
        "--quiet", "--warmup-epochs", 0, *TINY_NETWORKS[family], *extra,
    ]


def only_run(runs_dir):
    runs = sorted(Path(runs_dir).iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def write_last_keras(path, state):
    """A last.keras holding only a resume state: enough for the checks made before Keras loads it."""
    import json
    import zipfile

    from fersuite.callbacks import RESUME_STATE

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(RESUME_STATE, json.dumps(state))
