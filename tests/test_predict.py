"""predict.py: Kaggle submission, public/private scores, ensembles with TTA, image files."""

import csv
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import (
    EMOTION_BRIGHTNESS,
    PROJECT,
    brightness_model,
    brightness_probabilities,
    kaggle_ids,
    only_run,
    run_script,
    run_under,
    tiny_training_args,
    uniform_face_text,
    write_csv,
)

from fersuite import EMOTIONS, NUM_CLASSES, evaluation
from fersuite.data import load_table


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    from conftest import labeled_rows, write_csv

    directory = tmp_path_factory.mktemp("trained")
    data = write_csv(directory / "train.csv", "label,feature", labeled_rows(42))
    run_script("train_mobilenet.py", *tiny_training_args("mobilenet", data, directory / "runs"), check=True)
    return only_run(directory / "runs") / "best.keras"


@pytest.fixture(scope="module")
def known_model(tmp_path_factory):
    return brightness_model(tmp_path_factory.mktemp("known") / "brightness.keras")


def test_submission_has_one_row_per_test_id(trained_model, test_csv, tmp_path):
    out = tmp_path / "submission.csv"
    result = run_script("predict.py", "--model", trained_model, "--data", test_csv, "--out", out, check=True)
    submission = pd.read_csv(out, dtype={"id": str})
    assert list(submission.columns) == ["id", "label"]
    assert list(submission["id"]) == kaggle_ids(12)
    model = evaluation.load_model(trained_model)
    expected = evaluation.predict_probabilities([model], load_table(test_csv).pixels, "zoom")
    assert list(submission["label"]) == list(expected.argmax(axis=1))
    assert "12 rows" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir() if path.name != "cache") == ["submission.csv", "test.csv"]


def test_submission_copies_each_id_with_its_faces_emotion(known_model, tmp_path):
    shown = [3, 0, 6, 1, 5, 2, 4, 3, 6, 0]
    ids = kaggle_ids(len(shown))
    rows = [f"{face_id},{uniform_face_text(EMOTION_BRIGHTNESS[emotion])}" for face_id, emotion in zip(ids, shown)]
    data = write_csv(tmp_path / "test.csv", "id,feature", rows)
    out = tmp_path / "submission.csv"
    run_script("predict.py", "--model", known_model, "--data", data, "--out", out, "--equalize", "never", check=True)
    submission = pd.read_csv(out, dtype={"id": str})
    assert list(submission["id"]) == ids and list(submission["label"]) == shown


def test_existing_submission_is_kept_unless_forced(trained_model, test_csv, tmp_path):
    out = tmp_path / "submission.csv"
    out.write_text("mine")
    refused = run_script("predict.py", "--model", trained_model, "--data", test_csv, "--out", out)
    assert refused.returncode == 2 and out.read_text() == "mine"
    run_script("predict.py", "--model", trained_model, "--data", test_csv, "--out", out, "--force", check=True)
    assert out.read_text().startswith("id,label")
    own = shutil.copy(test_csv, tmp_path / "mine.csv")
    for given in (own, trained_model):  # the command's own input: never, --force or not
        before = Path(given).read_bytes()
        lost = run_script("predict.py", "--model", trained_model, "--data", own, "--out", given, "--force")
        assert lost.returncode == 2 and f"{given}: is an input of this command" in lost.stderr, lost.stderr
        assert Path(given).read_bytes() == before


@pytest.mark.parametrize("name", ["s.csv.gz", "s.csv.bz2", "s.csv.xz", "s.zip", "s.csv.zip", "S.CSV.GZ"])
def test_a_compressed_submission_name_gets_a_compressed_submission(tmp_path, name):
    """Kaggle takes each, by its content; plain text under a .gz name is refused on upload."""
    probabilities = np.eye(NUM_CLASSES)[[3, 0, 6]]
    evaluation.write_submission(tmp_path / name, ["a", "b", "c"], probabilities)
    read = pd.read_csv(tmp_path / name, dtype={"id": str}, compression="gzip" if name.isupper() else "infer")
    assert list(read["id"]) == ["a", "b", "c"] and list(read["label"]) == [3, 0, 6]
    if name.endswith(".zip"):
        assert zipfile.ZipFile(tmp_path / name).namelist() == ["s.csv"]


def test_fer2013_prints_public_and_private_accuracy(trained_model, fer2013_csv, tmp_path):
    result = run_script(
        "predict.py", "--model", trained_model, "--data", fer2013_csv, "--out", tmp_path / "s.csv", check=True
    )
    assert "public (PublicTest) accuracy:" in result.stdout and "private (PrivateTest) accuracy:" in result.stdout
    assert len(pd.read_csv(tmp_path / "s.csv")) == 12


def test_fer2013_scores_each_board_on_its_own_rows(known_model, tmp_path):
    """PublicTest: 4 of 5 faces labeled as known_model answers; PrivateTest: 1 of 4. Training rows are not scored."""
    rows = [("0", 0, "Training"), ("1", 1, "Training"), ("2", 2, "Training")]
    rows += [(label, shown, "PublicTest") for label, shown in zip([1, 2, 3, 4, 0], [1, 2, 3, 4, 5])]
    rows += [(label, shown, "PrivateTest") for label, shown in zip([6, 1, 1, 1], [6, 0, 2, 5])]
    data = write_csv(
        tmp_path / "fer2013.csv",
        "emotion,pixels,Usage",
        [f"{label},{uniform_face_text(EMOTION_BRIGHTNESS[shown])},{usage}" for label, shown, usage in rows],
    )
    out = tmp_path / "s.csv"
    args = ["--model", known_model, "--data", data, "--out", out, "--equalize", "never"]
    result = run_script("predict.py", *args, check=True)
    assert [line for line in result.stdout.splitlines() if "accuracy" in line] == [
        "public (PublicTest) accuracy: 0.8000 on 5 images",
        "private (PrivateTest) accuracy: 0.2500 on 4 images",
    ]
    submission = pd.read_csv(out, dtype={"id": str})
    assert list(submission["id"]) == [str(row) for row in range(3, 12)]
    assert list(submission["label"]) == [1, 2, 3, 4, 5, 6, 0, 2, 5]


def test_a_submission_by_default_for_test_csv_only(trained_model, test_csv, fer2013_csv, tmp_path):
    """Scoring a labeled file writes nothing unless asked, so it never blocks the next command's default."""
    scored = run_script("predict.py", "--model", trained_model, "--data", fer2013_csv, check=True, cwd=tmp_path)
    assert "private (PrivateTest) accuracy:" in scored.stdout and not (tmp_path / "submission.csv").exists()
    run_script("predict.py", "--model", trained_model, "--data", test_csv, check=True, cwd=tmp_path)
    assert len(pd.read_csv(tmp_path / "submission.csv")) == 12


def test_ensemble_with_crops_averages_probabilities(trained_model, test_csv, tmp_path):
    result = run_script(
        "predict.py", "--model", trained_model, "--model", trained_model, "--tta", "crops",
        "--data", test_csv, "--out", tmp_path / "s.csv", check=True,
    )
    assert len(pd.read_csv(tmp_path / "s.csv")) == 12
    assert f"{trained_model} (1 of 2): 72 views" in result.stdout and f"{trained_model} (2 of 2)" in result.stdout


def test_tta_views_and_average():
    pixels = np.arange(2 * 48 * 48).reshape(2, 48, 48, 1).astype("float32")
    views = evaluation.tta_views(pixels, "crops")
    assert len(views) == 6 and all(view.shape == pixels.shape for view in views)
    np.testing.assert_array_equal(views[1], pixels[:, :, ::-1])
    # the four crops move the face two pixels along each diagonal, borders filled from the edge
    np.testing.assert_array_equal(views[2][:, 2:, 2:], pixels[:, :-2, :-2])
    np.testing.assert_array_equal(views[3][:, 2:, :-2], pixels[:, :-2, 2:])
    np.testing.assert_array_equal(views[4][:, :-2, 2:], pixels[:, 2:, :-2])
    np.testing.assert_array_equal(views[5][:, :-2, :-2], pixels[:, 2:, 2:])
    np.testing.assert_array_equal(views[2][:, :2, :2], np.broadcast_to(pixels[:, :1, :1], (2, 2, 2, 1)))


def test_ensemble_averages_each_models_mean_over_views(known_model, trained_model):
    rng = np.random.default_rng(3)
    gradient = np.linspace(0, 115, 48)[None, None, :, None]  # mean 107.5, between Fear's 90 and Happy's 125
    faces = (rng.integers(0, 101, (5, 48, 48, 1)) + gradient).astype("float32")
    models = [evaluation.load_model(known_model), evaluation.load_model(trained_model)]
    views = evaluation.tta_views(faces, "crops")
    known = np.mean([brightness_probabilities(view) for view in views], axis=0)
    trained = np.mean([models[1].predict(view, verbose=0) for view in views], axis=0)
    assert np.abs(known - brightness_probabilities(faces)).max() > 0.01  # the views matter to known_model
    ensemble = evaluation.predict_probabilities(models, faces, "crops")
    np.testing.assert_allclose(ensemble, (known + trained) / 2, atol=1e-5)


def test_zoom_views_bring_the_face_closer_and_farther_and_mirror_each():
    faces = np.zeros((2, 48, 48, 1), dtype="float32")
    faces[:, 14:34, 14:34] = 255.0
    faces[1, :5, :3] = 100.0
    views = evaluation.tta_views(faces, "zoom")
    assert len(views) == 6 and all(view.shape == faces.shape for view in views)
    np.testing.assert_array_equal(views[1], faces[:, :, ::-1])
    bright = [int((view[0] > 128).sum()) for view in views]
    assert bright[0] == bright[1] == 400 and bright[2] == bright[3] > 440 and bright[4] == bright[5] < 360
    np.testing.assert_array_equal(views[3], views[2][:, :, ::-1])
    np.testing.assert_allclose(evaluation.zoomed(faces, 1.0), faces)


def test_image_files_are_classified(known_model, tmp_path):
    from PIL import Image

    values, paths = [EMOTION_BRIGHTNESS[5] + 10, EMOTION_BRIGHTNESS[2] - 12], []
    for name, value, size in zip(["face.png", 'me, "smiling".png'], values, [(48, 48), (120, 90)]):
        paths.append(tmp_path / name)
        Image.new("RGB", size, (int(value),) * 3).save(paths[-1])
    result = run_script("predict.py", "--model", known_model, "--equalize", "never", *paths, check=True)
    expected = brightness_probabilities(np.array(values)[:, None])
    assert list(csv.reader(io.StringIO(result.stdout))) == [["file", "emotion", "confidence"]] + [
        [str(path), EMOTIONS[row.argmax()], f"{row.max():.3f}"] for path, row in zip(paths, expected)
    ]
    assert [EMOTIONS[row.argmax()] for row in expected] == ["Surprise", "Fear"]


def ship(*args):
    return subprocess.run(
        [sys.executable, "-m", "fersuite.ship", *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        cwd=PROJECT,
    )


def test_shipped_float16_model_predicts_like_the_original(trained_model, tmp_path):
    import io
    import zipfile

    import h5py
    import keras

    shipped = tmp_path / "models" / "mobilenet.keras"
    shipped.parent.mkdir()
    result = ship(trained_model, shipped)
    assert result.returncode == 0 and f"{shipped}:" in result.stdout and "parameters" in result.stdout
    with zipfile.ZipFile(shipped) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as weights:
        dtypes = set()
        weights.visititems(lambda name, item: dtypes.add(str(item.dtype)) if isinstance(item, h5py.Dataset) else None)
    assert dtypes == {"float16"}
    original, halved = evaluation.load_model(trained_model), keras.saving.load_model(shipped)
    assert {weight.dtype for weight in halved.weights} == {"float32"}
    faces = np.random.default_rng(4).integers(0, 256, (32, 48, 48, 1)).astype("float32")
    np.testing.assert_allclose(halved.predict(faces, verbose=0), original.predict(faces, verbose=0), atol=5e-3)
    again = ship(trained_model, shipped)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_validation_scores_each_model_and_the_ensemble_on_the_held_out_split(trained_model, train_csv, tmp_path):
    from fersuite.data import load_splits

    result = run_script(
        "predict.py", "--validation", "--model", trained_model, "--model", trained_model, "--data", train_csv,
        "--val-split", 0.25, "--tta", "none", cwd=tmp_path, check=True,
    )
    validation = load_splits(train_csv, 0.25, 0)["validation"]
    expected = evaluation.accuracy(
        validation.labels, evaluation.predict_probabilities([evaluation.load_model(trained_model)], validation.pixels)
    )
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"validation split: {len(validation.labels)} images, tta none"
    assert lines[1] == f"{expected:.4f}  {trained_model}" and lines[-1] == f"{expected:.4f}  ensemble of 2"
    assert not list(tmp_path.glob("submission*.csv"))


def _in_run(model, run_dir, **config):
    """A model as a run left it: best.keras beside the config.json its training wrote."""
    run_dir.mkdir(parents=True)
    shutil.copy(model, run_dir / "best.keras")
    (run_dir / "config.json").write_text(json.dumps({"family": "cnn", **config}))
    return run_dir / "best.keras"


def test_faces_are_read_as_the_models_run_read_them_unless_told(known_model, tmp_path):
    """A run trained with --equalize never on raw faces must predict raw faces: each face here is two
    levels of its emotion's brightness, which equalizing would spread to 0 and 255 alike."""
    shown = [3, 0, 6, 1, 5, 2, 4]
    halves = [" ".join([str(int(EMOTION_BRIGHTNESS[emotion]) + step) for step in (-1, 1)] * 1152) for emotion in shown]
    data = write_csv(tmp_path / "test.csv", "id,feature", [f"{index},{face}" for index, face in enumerate(halves)])
    raw = _in_run(known_model, tmp_path / "runs" / "cnn-raw", equalize="never")
    out = tmp_path / "submission.csv"
    kept = run_script("predict.py", "--model", raw, "--data", data, "--out", out, check=True)
    assert list(pd.read_csv(out)["label"]) == shown and "judged raw" not in kept.stderr
    told = ("--force", "--equalize", "always")
    always = run_script("predict.py", "--model", raw, "--data", data, "--out", out, *told, check=True)
    assert len(set(pd.read_csv(out)["label"])) == 1 and "judged raw" not in always.stderr  # as asked, not judged
    equalized = _in_run(known_model, tmp_path / "runs" / "cnn-auto")
    judged = run_script("predict.py", "--model", equalized, "--data", data, "--out", out, "--force", check=True)
    assert f"{data}: its faces are not histogram-equalized (judged raw); equalized as read" in judged.stderr
    mixed = run_script("predict.py", "--model", raw, "--model", equalized, "--data", data, "--out", out, "--force")
    assert mixed.returncode == 2 and "trained with different --equalize: never" in mixed.stderr, mixed.stderr


def test_validation_holds_out_the_split_the_models_run_held_out(trained_model, train_csv, tmp_path):
    from fersuite.data import load_splits

    model = _in_run(trained_model, tmp_path / "runs" / "mobilenet-1", val_split=0.25, split_seed=3)
    args = ("--validation", "--model", model, "--data", train_csv, "--tta", "none")
    result = run_script("predict.py", *args, check=True)
    validation = load_splits(train_csv, 0.25, 3)["validation"]
    assert result.stdout.startswith(f"validation split: {len(validation.labels)} images")
    expected = evaluation.accuracy(
        validation.labels, evaluation.predict_probabilities([evaluation.load_model(model)], validation.pixels)
    )
    assert f"{expected:.4f}  {model}" in result.stdout and "warning" not in result.stderr
    told = run_script("predict.py", *args, "--equalize", "always", check=True)
    assert f"warning: {model} was trained on faces read with --equalize auto, scored here with --equalize always" in (
        told.stderr
    )
    count = len(validation.labels)
    for name, recorded, shown in [("fewer", {"validation_rows": 99}, 99), ("other", {"validation_digest": "0"}, count)]:
        other = _in_run(trained_model, tmp_path / "runs" / name, val_split=0.25, split_seed=3, **recorded)
        warned = run_script("predict.py", *args[:2], other, *args[3:], check=True)
        assert f"warning: {other} validated on other faces ({shown}) than this split's ({count}):" in warned.stderr


def test_a_run_scored_on_its_own_split_is_not_warned_about(trained_model):
    """The hash a run records of its validation faces is the one predict.py computes of the same split."""
    data = evaluation.run_config(trained_model)["data"]
    args = ("--validation", "--model", trained_model, "--data", data, "--tta", "none")
    result = run_script("predict.py", *args, check=True)
    assert "warning" not in result.stderr, result.stderr


def test_split_flags_of_runs_matter_only_for_a_file_split_by_them(known_model, train_csv, fer2013_csv, tmp_path):
    """A fer2013.csv validates on its PublicTest rows whatever --split-seed a run had."""
    seeded = _in_run(known_model, tmp_path / "runs" / "seeded", split_seed=3)
    args = ("predict.py", "--validation", "--model", seeded, "--model", known_model, "--tta", "none")
    assert run_script(*args, "--data", fer2013_csv).returncode == 0
    refused = run_script(*args, "--data", train_csv)
    assert refused.returncode == 2 and "trained with different --split-seed: 3" in refused.stderr, refused.stderr


def test_int8_shipping_quantizes_dense_kernels(trained_model, tmp_path):
    import keras

    shipped = tmp_path / "model.keras"
    assert ship(trained_model, shipped, "--int8").returncode == 0
    halved = keras.saving.load_model(shipped)
    assert "int8" in {str(weight.dtype) for weight in halved.get_layer("logits").weights}
    faces = np.random.default_rng(5).integers(0, 256, (32, 48, 48, 1)).astype("float32")
    original = evaluation.load_model(trained_model).predict(faces, verbose=0)
    np.testing.assert_allclose(halved.predict(faces, verbose=0), original, atol=2e-2)


def test_shipped_models_predict_the_sample_with_no_extra_files(tmp_path, monkeypatch):
    """models/ is what a clean clone predicts with: it must fit the GPU carry budget and be trained."""
    monkeypatch.syspath_prepend(str(PROJECT))
    from predict import DEFAULT_ENSEMBLE

    shipped = sorted((PROJECT / "models").glob("*.keras"))
    assert (
        {path.stem for path in shipped} >= {"cnn", "mobilenet", "dnn"}
        and {path.name for path in shipped} == set(DEFAULT_ENSEMBLE)
    )
    assert sum(path.stat().st_size for path in shipped) <= 12_000_000  # issue 4: 12 MB, and what travels
    out = tmp_path / "submission.csv"
    result = run_script("predict.py", "--data", PROJECT / "data" / "fer2013_sample.csv.xz", "--out", out, check=True)
    scores = [float(line.split(": ")[1].split()[0]) for line in result.stdout.splitlines() if " accuracy: " in line]
    assert len(scores) == 2 and np.mean(scores) > 0.4  # 70 held-out faces; an untrained MobileNet scores 0.13
    assert len(pd.read_csv(out)) == 70
    models = " + ".join(str(PROJECT / "models" / name) for name in DEFAULT_ENSEMBLE)
    assert f"models {models}, tta zoom" in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr  # no TensorFlow retracing warning from the four predict steps


SHIPPED_SCRIPT = """
import sys
sys.path[:0] = [{project!r}]
import numpy as np
from fersuite import backend, evaluation
assert backend.name() == {backend!r}
faces = np.load({faces!r})
models = [evaluation.load_model(path) for path in {paths!r}]
np.save({out!r}, np.stack([evaluation.predict_probabilities([model], faces, tta="zoom") for model in models]))
"""


@pytest.mark.parametrize("other", ["jax", "torch"])
def test_shipped_models_give_the_same_probabilities_on_every_backend(tmp_path, other):
    """The shipped files hold custom 4-bit and int8 layers and the zoom views resample: both must
    mean the same on JAX (the lent GPU's) and PyTorch as on TensorFlow."""
    paths = [str(path) for path in sorted((PROJECT / "models").glob("*.keras"))]
    faces = load_table(PROJECT / "data" / "fer2013_sample.csv.xz", use_cache=False).pixels[:24].astype("float32")
    np.save(tmp_path / "faces.npy", faces)
    script = SHIPPED_SCRIPT.format(
        project=str(PROJECT),
        backend=other,
        faces=str(tmp_path / "faces.npy"),
        paths=paths,
        out=str(tmp_path / "other.npy"),
    )
    run_under(other, script)
    expected = np.stack(
        [evaluation.predict_probabilities([evaluation.load_model(path)], faces, tta="zoom") for path in paths]
    )
    # 6e-4 seen: int8 Dense, float16 weights
    np.testing.assert_allclose(np.load(tmp_path / "other.npy"), expected, atol=2e-3)
