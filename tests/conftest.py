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


def labeled_rows(count, seed=0):
    rng = np.random.default_rng(seed)
    return [f"{index % 7},{pixel_text(rng)}" for index in range(count)]


def fer2013_rows(count, seed=0):
    rng = np.random.default_rng(seed)
    usages = ["Training"] * (count - count // 4) + ["PublicTest"] * (count // 8)
    usages += ["PrivateTest"] * (count - len(usages))
    return [f"{index % 7},{pixel_text(rng)},{usage}" for index, usage in enumerate(usages)]


def unlabeled_rows(count, seed=0):
    rng = np.random.default_rng(seed)
    return [f"{index},{pixel_text(rng)}" for index in range(count)]


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
