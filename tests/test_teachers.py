"""Teachers' probabilities saved once (python -m fersuite.teachers) stand in for the teachers."""

import json

import numpy as np
import pytest
from conftest import labeled_rows, only_run, run_script, tiny_training_args, write_csv

from fersuite import INPUT_SHAPE, NUM_CLASSES, models, teachers, training
from fersuite.data import load_splits
from fersuite.errors import UserError


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teachers")
    first, second = folder / "dnn.keras", folder / "mobilenet.keras"
    models.build_dnn(INPUT_SHAPE, NUM_CLASSES, models.preprocessing_layers(), units=(8,)).save(first)
    models.build_mobilenet(INPUT_SHAPE, NUM_CLASSES, models.preprocessing_layers(), alpha=0.25).save(second)
    return str(first), str(second)


def save_teachers(paths, data, out):
    teachers.main([*map(str, paths), "--data", str(data), "--out", str(out)])
    return out


def test_a_saved_file_gives_the_targets_of_its_models_on_any_split(two_teachers, train_csv, tmp_path):
    """Faces in another order and split than the file's; a file counts as the models it averaged."""
    both = save_teachers(two_teachers, train_csv, tmp_path / "both.npz")
    first_only = save_teachers(two_teachers[:1], train_csv, tmp_path / "first.npz")
    split = load_splits(train_csv, val_split=0.25, seed=5)["train"]
    faces, labels = split.pixels[::-1], split.labels[::-1]
    config = {"teacher_weight": 0.6, "teacher_temperature": 2.0, "verbose": 0}
    from_models = training.training_targets({**config, "teacher": list(two_teachers)}, faces, labels)
    for stand_in in ([str(both)], [str(first_only), two_teachers[1]]):
        np.testing.assert_allclose(
            training.training_targets({**config, "teacher": stand_in}, faces, labels), from_models, atol=1e-6
        )
    weighted = teachers.probabilities([str(both), two_teachers[1]], faces)
    np.testing.assert_allclose(weighted, teachers.probabilities([*two_teachers, two_teachers[1]], faces), atol=1e-6)
    assert np.load(both)["sources"].tolist() == list(two_teachers)
    with pytest.raises(UserError, match="is an input of this command"):  # an earlier file among the teachers
        teachers.main([str(both), "--data", str(train_csv), "--out", str(both), "--force"])
    assert not np.allclose(
        teachers.probabilities([str(first_only)], faces), teachers.probabilities([two_teachers[1]], faces), atol=1e-3
    )


def test_a_saved_file_refuses_faces_it_has_not_seen(two_teachers, train_csv, tmp_path):
    saved = save_teachers(two_teachers[:1], train_csv, tmp_path / "teachers.npz")
    other = load_splits(write_csv(tmp_path / "other.csv", "label,feature", labeled_rows(20, seed=9)))["train"]
    with pytest.raises(
        UserError, match=f"has no probabilities for {len(other):,} of the {len(other):,} training faces"
    ):
        teachers.probabilities([str(saved)], other.pixels)
    (tmp_path / "junk.npz").write_text("not numpy")
    with pytest.raises(UserError, match="not a teachers' file"):
        teachers.probabilities([str(tmp_path / "junk.npz")], other.pixels)
    with pytest.raises(UserError, match="already exists"):
        save_teachers(two_teachers[:1], train_csv, saved)
    with pytest.raises(UserError, match="no such directory"):
        save_teachers(two_teachers[:1], train_csv, tmp_path / "missing" / "teachers.npz")


def test_distilled_training_from_a_saved_file(two_teachers, train_csv, tmp_path):
    saved = save_teachers(two_teachers, train_csv, tmp_path / "teachers.npz")
    runs = tmp_path / "runs"
    run_script("train_dnn.py", *tiny_training_args("dnn", train_csv, runs), "--teacher", saved, check=True)
    assert json.loads((only_run(runs) / "config.json").read_text())["teacher"] == [str(saved)]
