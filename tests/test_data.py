"""Parsing both CSV layouts, compressed files, splits, the cache, and accepted oddities."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT, faces_csv, fer2013_rows, labeled_rows, raw_faces, unlabeled_rows, write_csv

from fersuite import contrast, data
from fersuite.errors import UserError


@pytest.mark.parametrize("suffix", ["", ".gz", ".xz"])
def test_homework_train_layout_and_compression(tmp_path, suffix):
    rows = labeled_rows(30, seed=1)
    path = write_csv(tmp_path / f"train.csv{suffix}", "label,feature", rows)
    table = data.load_table(path)
    assert table.layout == "labeled"
    assert table.pixels.shape == (30, 48, 48, 1) and table.pixels.dtype == np.uint8
    first = np.array(rows[0].split(",")[1].split(), dtype=np.uint8).reshape(48, 48)
    np.testing.assert_array_equal(table.pixels[0, :, :, 0], first)
    np.testing.assert_array_equal(table.labels, [index % 7 for index in range(30)])


def test_fer2013_layout_splits_by_usage(fer2013_csv):
    splits = data.load_splits(fer2013_csv)
    assert {name: len(split) for name, split in splits.items()} == {"train": 36, "validation": 6, "test": 6}
    rows = fer2013_rows(48)
    for usage, name in data.USAGE_TO_SPLIT.items():
        chosen = [index for index, row in enumerate(rows) if row.endswith(f",{usage}")]
        split = splits[name]
        assert list(split.ids) == [str(index) for index in chosen]
        assert list(split.labels) == [int(rows[index].split(",")[0]) for index in chosen]
        faces = [np.array(rows[index].split(",")[1].split(), dtype=np.uint8).reshape(48, 48, 1) for index in chosen]
        np.testing.assert_array_equal(split.pixels, np.stack(faces))


def test_a_fer2013_csv_without_its_usage_column_is_labeled_data(tmp_path):
    rows = [row.rsplit(",", 1)[0] for row in fer2013_rows(14)]
    table = data.load_table(write_csv(tmp_path / "fer2013.csv", "emotion,pixels", rows))
    assert table.layout == "labeled" and list(table.labels) == [index % 7 for index in range(14)]
    fourth = np.array(rows[3].split(",")[1].split(), np.uint8).reshape(48, 48)
    np.testing.assert_array_equal(table.pixels[3, ..., 0], fourth)


def test_test_layout_keeps_ids_and_has_no_labels(tmp_path):
    path = write_csv(tmp_path / "test.csv", "id,feature", unlabeled_rows(5))
    splits = data.load_splits(path)
    assert list(splits) == ["test"]
    assert splits["test"].labels is None
    assert list(splits["test"].ids) == ["25", "20", "15", "10", "5"]


def test_runs_from_before_split_seed_keep_their_validation_split():
    assert data.split_seed({"seed": 5, "split_seed": 0}) == 0
    assert data.split_seed({"seed": 5}) == 5


def test_validation_split_is_stratified_and_seeded(tmp_path):
    path = write_csv(tmp_path / "train.csv", "label,feature", labeled_rows(140))
    first = data.load_splits(path, val_split=0.1, seed=3)
    again = data.load_splits(path, val_split=0.1, seed=3)
    other = data.load_splits(path, val_split=0.1, seed=4)
    assert len(first["validation"]) == 14
    assert np.bincount(first["validation"].labels, minlength=7).tolist() == [2] * 7
    np.testing.assert_array_equal(first["validation"].ids, again["validation"].ids)
    assert not np.array_equal(first["validation"].ids, other["validation"].ids)
    assert not set(first["train"].ids) & set(first["validation"].ids)
    with pytest.raises(UserError, match=r"--split-seed must be in 0\.\.2\*\*32-1, got -1"):
        data.load_splits(path, val_split=0.1, seed=-1)


def test_cache_is_keyed_by_content(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    path = write_csv(tmp_path / "train.csv", "label,feature", labeled_rows(10))
    data.load_table(path)
    assert len(list(cache.glob("*.npz"))) == 1
    monkeypatch.setattr(data, "parse_csv", lambda path: pytest.fail("parsed again despite the cache"))
    cached = data.load_table(path)
    assert cached.pixels.shape == (10, 48, 48, 1) and cached.layout == "labeled"
    write_csv(path, "label,feature", labeled_rows(10, seed=9))
    monkeypatch.undo()
    monkeypatch.setenv("FERSUITE_CACHE_DIR", str(cache))
    changed = data.load_table(path)
    assert not np.array_equal(changed.pixels, cached.pixels)
    assert len(list(cache.glob("*.npz"))) == 2


def _odd_file(tmp_path, text, encoding="utf-8"):
    path = tmp_path / "odd.csv"
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda text: text.replace("\n", "\r\n"), id="crlf"),
        pytest.param(lambda text: "\ufeff" + text, id="bom"),
        pytest.param(lambda text: text.rstrip("\n"), id="no-trailing-newline"),
        pytest.param(lambda text: text.replace(" ", "  ").replace(",", " , "), id="extra-whitespace"),
        pytest.param(lambda text: text.replace("label,feature", " label , feature "), id="spaced-header"),
        pytest.param(
            lambda text: text.replace("\n", ",\n").replace("feature,\n", "feature\n", 1), id="comma-ending-each-row"
        ),
        pytest.param(lambda text: text.replace("\n", ",\n"), id="comma-ending-each-row-and-the-header"),
    ],
)
def test_unusual_but_valid_files_are_accepted(tmp_path, transform):
    rows = labeled_rows(4, seed=2)
    text = "label,feature\n" + "\n".join(rows) + "\n"
    table = data.load_table(_odd_file(tmp_path, transform(text)))
    expected = np.array([row.split(",")[1].split() for row in rows], dtype=np.uint8)
    np.testing.assert_array_equal(table.pixels.reshape(4, -1), expected)
    np.testing.assert_array_equal(table.labels, [0, 1, 2, 3])


def test_error_names_file_line_and_column(tmp_path):
    rows = labeled_rows(5)
    rows[3] = rows[3].rsplit(" ", 1)[0]
    path = write_csv(tmp_path / "short.csv", "label,feature", rows)
    with pytest.raises(UserError, match=r"short\.csv: line 5, column 'feature': expected 2304 pixels, found 2303"):
        data.load_table(path)


def test_a_value_deleted_in_an_editor_is_found_despite_the_two_spaces_left(tmp_path):
    rows = labeled_rows(5)
    label, pixels = rows[3].split(",")
    values = pixels.split()
    rows[3] = f"{label},{' '.join(values[:100])}  {' '.join(values[101:])}"
    path = write_csv(tmp_path / "short.csv", "label,feature", rows)
    with pytest.raises(UserError, match=r"short\.csv: line 5, column 'feature': expected 2304 pixels, found 2303"):
        data.load_table(path)


def test_columns_in_any_order_a_written_index_and_a_pixels_only_file(tmp_path):
    """Kaggle's icml_face_data.csv orders its columns emotion,Usage,pixels; pandas' to_csv writes its
    row numbers first under an empty name; the competition's test.csv has only pixels."""
    rows = labeled_rows(4, seed=2)
    labels, pixels = zip(*(row.split(",") for row in rows))
    expected = np.array([text.split() for text in pixels], dtype=np.uint8)
    icml_rows = [f"{label},PublicTest,{text}" for label, text in zip(labels, pixels)]
    reordered = write_csv(tmp_path / "icml.csv", "emotion,Usage,pixels", icml_rows)
    indexed = write_csv(tmp_path / "indexed.csv", ",emotion,pixels", [f"{row},{text}" for row, text in enumerate(rows)])
    bare = write_csv(tmp_path / "bare.csv", "pixels", pixels)
    for path, layout in ((reordered, "fer2013"), (indexed, "labeled"), (bare, "unlabeled")):
        table = data.load_table(path, use_cache=False)
        assert table.layout == layout, path
        np.testing.assert_array_equal(table.pixels.reshape(4, -1), expected)
    assert list(data.load_table(reordered).labels) == [0, 1, 2, 3]
    assert list(data.load_table(bare).ids) == ["0", "1", "2", "3"]


def test_an_empty_cache_variable_means_the_default_cache_and_a_damaged_entry_is_parsed_again(tmp_path, monkeypatch):
    monkeypatch.setenv("FERSUITE_CACHE_DIR", "")
    assert data.cache_dir() == Path.home() / ".cache" / "fersuite"
    monkeypatch.setenv("FERSUITE_CACHE_DIR", str(tmp_path / "cache"))
    path = write_csv(tmp_path / "train.csv", "label,feature", labeled_rows(6))
    first = data.load_table(path)
    (entry,) = (tmp_path / "cache").glob("*.npz")
    whole = entry.read_bytes()
    for damaged in (b"not a table", whole[:100]):  # the second still starts as a zip, as a half-copied one does
        entry.write_bytes(damaged)
        np.testing.assert_array_equal(data.load_table(path).pixels, first.pixels)
        np.testing.assert_array_equal(data._load_packed(entry).pixels, first.pixels)


def test_images_any_size_and_colour_become_grayscale_48(tmp_path):
    from PIL import Image

    colour = tmp_path / "face.png"
    Image.new("RGB", (100, 80), (200, 10, 10)).save(colour)
    gray = tmp_path / "face.jpg"
    Image.new("L", (48, 48), 7).save(gray)
    faces = data.load_images([colour, gray])
    assert faces.pixels.shape == (2, 48, 48, 1) and faces.pixels.dtype == np.uint8
    assert (faces.pixels[0] == 67).all()  # ITU-R 601 luma of (200, 10, 10), as PIL converts it
    assert faces.pixels[1].max() <= 10


def test_a_16_bit_image_is_scaled_down_not_clipped(tmp_path):
    from PIL import Image

    face = (np.arange(48 * 48).reshape(48, 48) % 200 + 20).astype(np.uint8)
    Image.fromarray(face, "L").save(tmp_path / "face8.png")
    Image.fromarray(face.astype(np.uint16) * 257).save(tmp_path / "face16.png")
    faces = data.load_images([tmp_path / "face8.png", tmp_path / "face16.png"], equalize="never")
    np.testing.assert_array_equal(faces.pixels[1, ..., 0], face)
    np.testing.assert_array_equal(faces.pixels[0], faces.pixels[1])


def test_a_photo_is_read_upright_as_its_exif_orientation_says(tmp_path):
    """Phones store a picture as the sensor saw it and record the turn that shows it upright."""
    from PIL import Image

    stored = np.zeros((48, 48), np.uint8)
    stored[:24] = 255  # bright top half as stored; orientation 3 = shown turned by 180 degrees
    exif = Image.Exif()
    exif[0x0112] = 3
    Image.fromarray(stored).save(tmp_path / "photo.jpg", exif=exif, quality=100)
    face = data.load_images([tmp_path / "photo.jpg"]).pixels[0, ..., 0]
    assert face[:24].mean() < 20 and face[24:].mean() > 235


def test_packed_table_round_trips_and_trains_like_the_csv(tmp_path):
    path = write_csv(tmp_path / "fer2013.csv", "emotion,pixels,Usage", fer2013_rows(20))
    packed = tmp_path / "pack" / "fer2013.npz.xz"  # its folder is made, as `mkdir -p` would
    assert data.main(["pack", str(path), str(packed)]) is None
    with pytest.raises(UserError, match="already exists; pass --force"):
        data.main(["pack", str(path), str(packed)])
    with pytest.raises(UserError, match="no such file"):
        data.main(["pack", str(tmp_path / "missing.csv"), str(tmp_path / "new" / "x.npz.xz")])
    assert not (tmp_path / "new").exists()
    original, loaded = data.load_table(path), data.load_table(packed)
    np.testing.assert_array_equal(loaded.pixels, original.pixels)
    np.testing.assert_array_equal(loaded.usage, original.usage)
    assert loaded.layout == "fer2013"
    validation = [data.split_table(table)["validation"].pixels for table in (original, loaded)]
    assert data.faces_digest(validation[0]) == data.faces_digest(validation[1])  # one run's hash fits both
    assert {name: len(split) for name, split in data.split_table(loaded).items()} == {
        "train": 15,
        "validation": 2,
        "test": 3,
    }


def test_equalize_is_opencvs_formula_per_face():
    """Level v -> round(255 (cdf(v) - cdf(darkest)) / (pixels - cdf(darkest))): 1000 * 255 / 1304 = 195.55 -> 196."""
    face = np.repeat(np.array([10, 20, 30], np.uint8), [1000, 1000, 304]).reshape(1, 48, 48, 1)
    constant = np.full((1, 48, 48, 1), 7, np.uint8)
    equalized = contrast.equalize(np.concatenate([face, constant]))
    assert dict(zip(*np.unique(equalized[0], return_counts=True))) == {0: 1000, 196: 1000, 255: 304}
    np.testing.assert_array_equal(equalized[1], constant[0])


def test_equalize_treats_each_face_alone_across_chunks():
    faces = np.random.default_rng(1).integers(60, 120, (contrast.CHUNK + 3, 48, 48, 1)).astype(np.uint8)
    together = contrast.equalize(faces)
    for index in (0, contrast.CHUNK - 1, contrast.CHUNK, contrast.CHUNK + 2):
        np.testing.assert_array_equal(together[index], contrast.equalize(faces[index : index + 1])[0])


def test_the_teams_equalized_faces_are_read_as_they_are():
    path = PROJECT / "data" / "fer2013_sample.csv.xz"
    written = pd.read_csv(path)["pixels"].str.split().tolist()
    table = data.load_table(path, use_cache=False)
    np.testing.assert_array_equal(table.pixels.reshape(len(written), -1), np.array(written, dtype=np.uint8))


def test_raw_faces_are_equalized_as_they_are_read_and_the_equalized_copy_is_not(tmp_path):
    """A raw fer2013.csv or photo has narrow, uneven histograms; the team's copy (like uniform noise) flat ones."""
    flat = np.random.default_rng(0).integers(0, 256, (14, 48, 48, 1)).astype(np.uint8)
    raw = raw_faces(14)
    assert contrast.is_equalized(flat) and not contrast.is_equalized(raw)
    table = data.load_table(faces_csv(tmp_path / "raw.csv", raw), use_cache=False)
    np.testing.assert_array_equal(table.pixels, contrast.equalize(raw))
    assert table.pixels.min() == 0 and table.pixels.max() == 255
    packed_elsewhere = tmp_path / "raw.npz"
    np.savez(packed_elsewhere, pixels=raw, labels=table.labels, ids=table.ids, usage=table.usage, layout="labeled")
    np.testing.assert_array_equal(data.load_table(packed_elsewhere).pixels, table.pixels)


def test_a_dim_photo_is_equalized(tmp_path):
    from PIL import Image

    dim = np.tile(np.linspace(90, 140, 48).astype(np.uint8), (48, 1))
    Image.fromarray(dim).save(tmp_path / "dim.png")
    face = data.load_images([tmp_path / "dim.png"]).pixels[0, ..., 0]
    assert face.min() == 0 and face.max() == 255


def test_a_file_is_judged_by_faces_from_all_of_it():
    """Raw rows appended after the first SAMPLE equalized ones are seen, and outnumbering them, decide."""
    flat = np.random.default_rng(0).integers(0, 256, (contrast.SAMPLE, 48, 48, 1)).astype(np.uint8)
    assert not contrast.is_equalized(np.concatenate([flat, raw_faces(contrast.SAMPLE + 10)]))
    assert contrast.is_equalized(np.concatenate([flat, raw_faces(contrast.SAMPLE - 10)]))


@pytest.mark.parametrize("mode", contrast.MODES)
def test_equalize_mode_overrides_the_judgement_for_csv_and_packed_files(tmp_path, mode, monkeypatch):
    monkeypatch.setenv("FERSUITE_CACHE_DIR", str(tmp_path / "cache"))
    team = data.load_table(PROJECT / "data" / "fer2013_sample.csv.xz", use_cache=False).pixels[:14]
    raw = raw_faces(14)
    for name, faces in (("team", team), ("raw", raw)):
        expected = {
            "auto": contrast.equalize(faces) if name == "raw" else faces,
            "always": contrast.equalize(faces),
            "never": faces,
        }[mode]
        csv = faces_csv(tmp_path / f"{name}.csv", faces)
        for _ in range(2):  # parsed, then from the cache of this mode
            np.testing.assert_array_equal(data.load_table(csv, equalize=mode).pixels, expected)
        packed = tmp_path / f"{name}.npz.xz"
        data.main(["pack", str(csv), str(packed), "--force"])
        np.testing.assert_array_equal(data.load_table(packed, equalize="never").pixels, faces)  # as given
        np.testing.assert_array_equal(data.load_table(packed, equalize=mode).pixels, expected)


def test_each_image_file_is_judged_on_its_own(tmp_path):
    """A dim photo among faces exported from the equalized copy is still equalized; they are not."""
    from PIL import Image

    team = data.load_table(PROJECT / "data" / "fer2013_sample.csv.xz", use_cache=False).pixels
    flat_ones = team[contrast.flatness(team) < contrast.FLAT][:3, ..., 0]
    dim = raw_faces(1)[0, ..., 0]
    paths = []
    for index, face in enumerate([*flat_ones, dim]):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(face).save(paths[-1])
    notes = []
    faces = data.load_images(paths, log=notes.append).pixels[..., 0]
    np.testing.assert_array_equal(faces[:3], flat_ones)
    np.testing.assert_array_equal(faces[3], contrast.equalize(dim[None, ..., None])[0, ..., 0])
    assert len(notes) == 1 and notes[0].startswith(f"{paths[3]}: equalized") and "--equalize never" in notes[0]
    data.load_images(paths, "never", log=notes.append)
    data.load_images(paths, "always", log=notes.append)  # what was asked for: nothing to say
    assert len(notes) == 1
    np.testing.assert_array_equal(data.load_images(paths, "never").pixels[3, ..., 0], dim)
