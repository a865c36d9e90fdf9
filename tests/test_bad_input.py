"""Every malformed input gives one 'error:' line naming what and where, exit status 2, no output.

The scripts run in-process (their `main` under `cli.run`) so ~40 cases take seconds, not minutes.
"""

import gzip
import importlib.util
import lzma
import sys
import zipfile

import keras
import pytest
from conftest import PROJECT, labeled_rows, unlabeled_rows, write_last_keras

from fersuite import INPUT_SHAPE, NUM_CLASSES, cli, models


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", PROJECT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPTS = {name: load_script(name) for name in ("predict", "train_cnn", "train_dnn", "train_mobilenet")}


def invoke(script, args, monkeypatch, capsys):
    """Run a script's main as `python script.py args`; returns (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *map(str, args)])
    try:
        cli.run(SCRIPTS[script].main)
        code = 0
    except SystemExit as stopped:
        code = stopped.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    models.build_mobilenet(INPUT_SHAPE, NUM_CLASSES, models.preprocessing_layers(), alpha=0.25).save(path)
    return path


def _save(model, directory, name):
    path = directory / name
    model.save(path)
    return path


def header_rows(header, rows):
    return header + "\n" + "\n".join(rows) + "\n"


def good_test():
    return header_rows("id,feature", unlabeled_rows(3))


def good_train():
    return header_rows("label,feature", labeled_rows(3))


def replace_pixel(text, row, value):
    """Set the first pixel of data row `row` (0-based) to `value`."""
    lines = text.split("\n")
    key, pixels = lines[row + 1].split(",", 1)
    lines[row + 1] = f"{key},{value} {pixels.split(' ', 1)[1]}"
    return "\n".join(lines)


def replace_label(text, row, value):
    lines = text.split("\n")
    lines[row + 1] = f"{value},{lines[row + 1].split(',', 1)[1]}"
    return "\n".join(lines)


def truncated(opener, text, directory, name):
    path = directory / name
    with opener(path, "wt") as handle:
        handle.write(text)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path


def two_file_zip(path):
    """Kaggle's download holds the CSV beside other files."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("test.csv", good_test())
        archive.writestr("README", "about the data")
    return path


def text_file(directory, name, text):
    path = directory / name
    path.write_text(text)
    return path


# (id, how to make the data file, what the error line must contain)
DATA_CASES = [
    ("missing-file", lambda d: d / "nope.csv", "no such file"),
    ("directory", lambda d: d, "is a directory"),
    ("empty-file", lambda d: text_file(d, "empty.csv", ""), "empty"),
    ("header-only", lambda d: text_file(d, "h.csv", "id,feature\n"), "header only"),
    (
        "wrong-columns",
        lambda d: text_file(d, "c.csv", good_test().replace("id,feature", "idx,pixels")),
        "unexpected columns",
    ),
    ("missing-column", lambda d: text_file(d, "c.csv", "feature\n" + "1 " * 2304), "unexpected columns"),
    (
        "extra-column",
        lambda d: text_file(
            d, "c.csv", good_test().replace("id,feature", "id,feature,x").replace("\n", ",1\n")[: -2] + "\n"
        ),
        "unexpected columns",
    ),
    ("wrong-separator", lambda d: text_file(d, "c.csv", good_test().replace(",", ";")), "unexpected columns"),
    ("no-header", lambda d: text_file(d, "c.csv", good_train().split("\n", 1)[1]), "the first line is a data row"),
    ("extra-field-in-a-row", lambda d: text_file(d, "c.csv", good_test().replace("\n10,", "\n10,5,")), "line 3"),
    ("2303-pixels", lambda d: text_file(d, "c.csv", good_test().rsplit(" ", 1)[0] + "\n"), "found 2303"),
    ("2305-pixels", lambda d: text_file(d, "c.csv", good_test().rstrip("\n") + " 7\n"), "found 2305"),
    (
        "non-numeric-pixel",
        lambda d: text_file(d, "c.csv", replace_pixel(good_test(), 1, "x7")),
        "line 3, column 'feature': pixel 1 is 'x7'",
    ),
    (
        "pixel-256",
        lambda d: text_file(d, "c.csv", replace_pixel(good_test(), 2, "256")),
        "line 4, column 'feature': pixel 1 is 256",
    ),
    (
        "pixel-minus-1",
        lambda d: text_file(d, "c.csv", replace_pixel(good_test(), 0, "-1")),
        "line 2, column 'feature': pixel 1 is -1",
    ),
    (
        "label-7",
        lambda d: text_file(d, "c.csv", replace_label(good_train(), 1, "7")),
        "line 3, column 'label': label '7'",
    ),
    ("label-minus-1", lambda d: text_file(d, "c.csv", replace_label(good_train(), 0, "-1")), "line 2, column 'label'"),
    ("label-word", lambda d: text_file(d, "c.csv", replace_label(good_train(), 2, "happy")), "label 'happy'"),
    ("duplicate-ids", lambda d: text_file(d, "c.csv", good_test().replace("\n5,", "\n15,")), "duplicate id '15'"),
    ("truncated-gz", lambda d: truncated(gzip.open, good_test(), d, "t.csv.gz"), "truncated or corrupt"),
    ("truncated-xz", lambda d: truncated(lzma.open, good_test(), d, "t.csv.xz"), "truncated or corrupt"),
    ("tar-archive", lambda d: text_file(d, "fer2013.tar.gz", "a folder"), "an archive; extract the CSV from it first"),
    ("zip-of-two-files", lambda d: two_file_zip(d / "fer2013.zip"), "give the CSV itself, plain, .gz or .xz"),
    ("binary-garbage", lambda d: (d / "g.csv").write_bytes(bytes(range(256)) * 40) and d / "g.csv", "g.csv"),
    (
        "extra-field-in-every-row",
        lambda d: text_file(d, "c.csv", good_test().replace("\n", ",9\n").replace("feature,9", "feature", 1)),
        "the rows have more fields than the header's 2 (id,feature)",
    ),
    (
        "fer2013-training-rows-only",
        lambda d: text_file(
            d, "c.csv", header_rows("emotion,pixels,Usage", [r + ",Training" for r in labeled_rows(2)])
        ),
        "no PublicTest or PrivateTest rows to predict",
    ),
    (
        "bad-usage",
        lambda d: text_file(
            d, "c.csv", header_rows("emotion,pixels,Usage", [r + ",Validation" for r in labeled_rows(2)])
        ),
        "column 'Usage'",
    ),
]


@pytest.mark.parametrize("case", DATA_CASES, ids=[case[0] for case in DATA_CASES])
def test_bad_data_file_for_predict(case, tmp_path, model_file, monkeypatch, capsys):
    _, make, expected = case
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = make(data_dir)
    out = tmp_path / "submission.csv"
    code, err = invoke("predict", ["--model", model_file, "--data", path, "--out", out], monkeypatch, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("script", ["train_cnn", "train_dnn", "train_mobilenet"])
def test_bad_data_file_for_training_creates_no_run(script, tmp_path, monkeypatch, capsys):
    bad = text_file(tmp_path, "bad.csv", replace_pixel(good_train(), 1, "300"))
    code, err = invoke(script, ["--data", bad, "--runs-dir", tmp_path / "runs", "--epochs", 1], monkeypatch, capsys)
    assert code == 2 and "pixel 1 is 300" in err and err.count("\n") == 1
    assert not any((tmp_path / "runs").glob("*"))


def _wrong_input_model(directory):
    inputs = keras.Input((32, 32, 1))
    return _save(keras.Model(inputs, keras.layers.Dense(7)(keras.layers.Flatten()(inputs))), directory, "input.keras")


def _wrong_classes_model(directory):
    inputs = keras.Input(INPUT_SHAPE)
    return _save(keras.Model(inputs, keras.layers.Dense(5)(keras.layers.Flatten()(inputs))), directory, "classes.keras")


def _scores_model(directory):
    inputs = keras.Input(INPUT_SHAPE)
    return _save(keras.Model(inputs, keras.layers.Dense(7)(keras.layers.Flatten()(inputs))), directory, "scores.keras")


MODEL_CASES = [
    ("model-missing", lambda d: d / "none.keras", "no such file"),
    ("model-not-a-model", lambda d: text_file(d, "fake.keras", "not a zip"), "Keras model (ValueError)\n"),
    ("model-renamed", lambda d: _scores_model(d).rename(d / "model.h5"), "a .keras file must keep it"),
    ("model-is-a-directory", lambda d: d, "is a directory"),
    ("model-wrong-input-shape", _wrong_input_model, "expected (48, 48, 1)"),
    ("model-wrong-classes", _wrong_classes_model, "outputs 5 classes"),
    ("model-without-softmax", _scores_model, "scores.keras: outputs scores, not probabilities"),
]


@pytest.mark.parametrize("case", MODEL_CASES, ids=[case[0] for case in MODEL_CASES])
def test_bad_model_file(case, tmp_path, monkeypatch, capsys):
    _, make, expected = case
    directory = tmp_path / "models"
    directory.mkdir()
    data = text_file(tmp_path, "test.csv", good_test())
    out = tmp_path / "submission.csv"
    code, err = invoke("predict", ["--model", make(directory), "--data", data, "--out", out], monkeypatch, capsys)
    assert code == 2 and expected in err and err.count("\n") == 1, err
    assert not out.exists()


def test_non_image_file_given_as_image(tmp_path, model_file, monkeypatch, capsys):
    fake = text_file(tmp_path, "face.png", "this is text")
    code, err = invoke("predict", ["--model", model_file, fake], monkeypatch, capsys)
    assert code == 2 and "face.png: not a readable image" in err


def test_an_image_pillow_calls_broken_midway(tmp_path, model_file, monkeypatch, capsys):
    """Pillow raises SyntaxError("broken PNG file") for a bad chunk among the image data."""
    from PIL import Image

    def broken(*args, **kwargs):
        raise SyntaxError("broken PNG file")

    face = tmp_path / "face.png"
    Image.new("L", (48, 48)).save(face)
    monkeypatch.setattr(Image, "open", broken)
    code, err = invoke("predict", ["--model", model_file, face], monkeypatch, capsys)
    assert code == 2 and "face.png: not a readable image (SyntaxError)" in err


def test_a_file_that_cannot_be_read(tmp_path, monkeypatch):
    """chmod 000 stops every user but root, who runs the tests: the refusal is mocked."""
    from fersuite import data
    from fersuite.errors import UserError

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    path = text_file(tmp_path, "train.csv", good_train())
    monkeypatch.setattr(data, "open", refused, raising=False)
    with pytest.raises(UserError, match="train.csv: cannot read the file \\(Permission denied\\)"):
        data.check_readable_file(path)


def test_packing_a_bad_csv_makes_no_folder(tmp_path, monkeypatch, capsys):
    from fersuite import data

    bad = text_file(tmp_path, "bad.csv", replace_pixel(good_train(), 1, "300"))
    monkeypatch.setattr(sys, "argv", ["data.py"])
    with pytest.raises(SystemExit) as stopped:
        cli.run(lambda: data.main(["pack", str(bad), str(tmp_path / "pack" / "train.npz.xz")]))
    assert stopped.value.code == 2 and "pixel 1 is 300" in capsys.readouterr().err
    assert not (tmp_path / "pack").exists()


def test_missing_image_file(tmp_path, model_file, monkeypatch, capsys):
    code, err = invoke("predict", ["--model", model_file, tmp_path / "nope.jpg"], monkeypatch, capsys)
    assert code == 2 and "no such file" in err


OUTPUT_CASES = [
    ("existing-submission", lambda d: text_file(d, "sub.csv", "keep me"), "already exists; pass --force"),
    ("missing-output-dir", lambda d: d / "no" / "sub.csv", "no: no such directory"),
    ("output-is-a-directory", lambda d: d, "is a directory"),
]


@pytest.mark.parametrize("case", OUTPUT_CASES, ids=[case[0] for case in OUTPUT_CASES])
def test_bad_output_path(case, tmp_path, model_file, monkeypatch, capsys):
    _, make, expected = case
    data = text_file(tmp_path, "test.csv", good_test())
    out = make(tmp_path)
    code, err = invoke("predict", ["--model", model_file, "--data", data, "--out", out], monkeypatch, capsys)
    assert code == 2 and expected in err, err
    if out.is_file():
        assert out.read_text() == "keep me"


def test_unwritable_runs_dir(tmp_path, monkeypatch, capsys):
    blocker = text_file(tmp_path, "runs", "a file, not a directory")
    data = text_file(tmp_path, "train.csv", header_rows("label,feature", labeled_rows(14)))
    code, err = invoke("train_dnn", ["--data", data, "--runs-dir", blocker / "sub", "--epochs", 1], monkeypatch, capsys)
    assert code == 2 and "cannot create the runs directory" in err


FLAG_CASES = [
    ("train_cnn", ["--epochs", "-1"], "--epochs"),
    ("train_cnn", ["--epochs", "0"], "--epochs"),
    ("train_dnn", ["--val-split", "0"], "--val-split"),
    ("train_dnn", ["--val-split", "1"], "--val-split"),
    ("train_mobilenet", ["--batch-size", "0"], "--batch-size"),
    ("train_mobilenet", ["--alpha", "-0.5"], "--alpha"),
    ("train_cnn", ["--filters", "64,x"], "--filters"),
    ("train_dnn", ["--units", "64,,32"], "--units: expected comma-separated integers, got '64,,32'"),
    ("train_cnn", ["--lr", "0"], "--lr"),
    ("train_dnn", ["--label-smoothing", "1.5"], "--label-smoothing"),
    ("train_cnn", ["--optimizer", "rmsprop"], "--optimizer"),
    ("predict", ["--model", "m.keras"], "give --data"),
    (
        "predict",
        ["--model", "runs/a/best.keras", "runs/b/best.keras", "--data", "x.csv"],
        "runs/b/best.keras is a model, not an image",
    ),
    ("train_dnn", ["--teacher", "no_such_teacher.keras"], "no_such_teacher.keras"),
    ("train_dnn", ["--teacher-weight", "1.5"], "--teacher-weight"),
    ("train_dnn", ["--teacher-temperature", "0"], "--teacher-temperature"),
    ("train_cnn", ["--mixup", "-0.2"], "--mixup"),
    ("train_mobilenet", ["--resume-every", "-1"], "--resume-every"),
    ("train_cnn", ["--time-budget", "-1"], "--time-budget"),
    ("train_mobilenet", ["--ema", "1"], "--ema"),
    ("train_cnn", ["--weight-decay", "-1e-4"], "--weight-decay"),
    ("train_cnn", ["--weight-decay", "inf"], "argument --weight-decay: must be 0 or more, got inf"),
    ("train_mobilenet", ["--alpha", "nan"], "argument --alpha: must be a finite number, got nan"),
    ("train_cnn", ["--lr", "inf"], "argument --lr: must be a finite number, got inf"),
    ("train_mobilenet", ["--resume-every", "nan"], "argument --resume-every: must be 0 or more"),
    ("train_cnn", ["--filters", "8,8,8,8,8,8"], "--filters: at most 5 blocks"),
    ("train_mobilenet", ["--patience", "-1"], "argument --patience: must be 0 or more"),
    ("train_dnn", ["--rotation-range", "-5"], "argument --rotation-range: must be 0 or more"),
    ("predict", ["face.png", "--out", "x.csv"], "--out writes a submission for --data"),
    ("train_cnn", ["--epochs", "abc"], "argument --epochs: expected an integer, got 'abc'"),
    ("train_cnn", ["--val-split", "half"], "argument --val-split: expected a number, got 'half'"),
    ("train_dnn", ["--params", "10"], "--params 10: the smallest 3-layer DNN has 2,335 parameters"),
    ("train_mobilenet", ["--dense", "32"], "--dense does not apply to --architecture residual"),
    ("train_mobilenet", ["--architecture", "hw8", "--stages", "8,16"], "--stages does not apply to --architecture hw8"),
    ("train_mobilenet", ["--stages", "8,8,8,8,8"], "--stages: at most 4 stages"),
    ("train_dnn", ["--seed", "-1"], "argument --seed: must be in 0..2**31-1"),
    ("train_mobilenet", ["--seed", str(2**31)], "argument --seed: must be in 0..2**31-1"),
    ("train_cnn", ["--equalize", "yes"], "argument --equalize: invalid choice: 'yes'"),
    ("train_cnn", ["--split-seed", str(2**32)], "argument --split-seed: must be in 0..2**32-1"),
    ("predict", ["--validation", "--data", "x.csv", "--out", "s.csv"], "writes no submission; drop --out/--force"),
    ("predict", ["--data", "x.csv", "--split-seed", "0"], "--split-seed applies only with --validation"),
    ("predict", ["--data", "x.csv", "--val-split", "0.2"], "--val-split applies only with --validation"),
]


@pytest.mark.parametrize("script,args,expected", FLAG_CASES, ids=[" ".join(c[1]) for c in FLAG_CASES])
def test_bad_flags(script, args, expected, tmp_path, monkeypatch, capsys):
    data = text_file(tmp_path, "train.csv", good_train())
    extra = [] if script == "predict" else ["--data", data, "--runs-dir", tmp_path / "runs"]
    code, err = invoke(script, [*extra, *args], monkeypatch, capsys)
    assert code == 2 and expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_training_on_unlabeled_test_csv(tmp_path, monkeypatch, capsys):
    data = text_file(tmp_path, "test.csv", good_test())
    code, err = invoke("train_dnn", ["--data", data, "--runs-dir", tmp_path / "runs"], monkeypatch, capsys)
    assert code == 2 and "needs labeled rows for train and validation" in err


def test_training_on_fer2013_without_publictest_rows(tmp_path, monkeypatch, capsys):
    data = text_file(
        tmp_path, "fer2013.csv", header_rows("emotion,pixels,Usage", [f"{row},Training" for row in labeled_rows(14)])
    )
    code, err = invoke("train_dnn", ["--data", data, "--runs-dir", tmp_path / "runs"], monkeypatch, capsys)
    assert code == 2 and "needs labeled rows for validation (" in err


def test_resume_of_something_that_is_not_a_run(tmp_path, monkeypatch, capsys):
    code, err = invoke("train_cnn", ["--resume", tmp_path], monkeypatch, capsys)
    assert code == 2 and "cannot resume" in err


def test_unusual_files_are_accepted_by_predict(tmp_path, model_file, monkeypatch, capsys):
    text = "\ufeff" + good_test().replace("\n", "\r\n").rstrip("\r\n")
    data = tmp_path / "odd.csv"
    data.write_bytes(text.encode())
    out = tmp_path / "sub.csv"
    code = invoke("predict", ["--model", model_file, "--data", data, "--out", out], monkeypatch, capsys)[0]
    assert code == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "id,label" and [line.split(",")[0] for line in lines[1:]] == ["15", "10", "5"]


def test_resume_refuses_settings_it_would_ignore_and_another_familys_run(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "cnn-1"
    run_dir.mkdir()
    for name, text in {"config.json": '{"family": "cnn"}', "history.csv": "epoch\n1\n"}.items():
        (run_dir / name).write_text(text)
    write_last_keras(run_dir / "last.keras", {"epochs_done": 1, "best": 0.5})
    code, err = invoke("train_cnn", ["--resume", run_dir, "--epochs", 7, "--lr", 0.1], monkeypatch, capsys)
    assert code == 2 and "drop --epochs, --lr" in err and err.count("\n") == 1, err
    code, err = invoke("train_cnn", ["--resume", run_dir, "--batch-size", 128], monkeypatch, capsys)
    assert code == 2 and "drop --batch-size" in err, "a setting given at its default value is ignored too"
    code, err = invoke("train_cnn", ["--resume", run_dir, "--no-augment"], monkeypatch, capsys)
    assert code == 2 and "drop --no-augment " in err, err  # the flag as typed, not its setting's name
    code, err = invoke("train_mobilenet", ["--resume", run_dir, "--quiet", "--resume-every", 0], monkeypatch, capsys)
    assert code == 2 and f"{run_dir}: is a cnn run; resume it with train_cnn.py" in err, err
    code, err = invoke("train_cnn", ["--resume", run_dir, "--resume-every", -5], monkeypatch, capsys)
    assert code == 2 and "argument --resume-every: must be 0 or more" in err, err  # check_config skips a resume
    code, err = invoke("train_cnn", ["--resume", tmp_path / "no_such_run"], monkeypatch, capsys)
    assert code == 2 and "no_such_run: no such run directory" in err, err
    (run_dir / "metrics.json").write_text('{"interrupted": false}')
    code, err = invoke("train_cnn", ["--resume", run_dir], monkeypatch, capsys)
    assert code == 2 and f"{run_dir}: finished already" in err, err


def test_progress_bars_only_on_a_terminal_unless_asked(monkeypatch):
    parser = cli.training_parser("tiny", {"epochs": 1})
    chosen = {flags: parser.parse_args(list(flags)).verbose for flags in ((), ("--quiet",), ("--no-quiet",))}
    assert chosen == {(): None, ("--quiet",): 2, ("--no-quiet",): 1}
    for terminal, expected in ((True, 1), (False, 2)):
        monkeypatch.setattr(cli.sys.stdout, "isatty", lambda terminal=terminal: terminal, raising=False)
        assert [cli.progress(verbose) for verbose in chosen.values()] == [expected, 2, 1]


def test_a_resumed_run_keeps_its_own_output_settings_unless_given_again():
    parser = cli.training_parser("tiny", {"epochs": 1})
    assert not hasattr(parser.parse_args(["--resume", "runs/x"]), "verbose")
    given = parser.parse_args(["--resume", "runs/x", "--quiet", "--resume-every", "0"])
    assert (given.verbose, given.resume_every) == (2, 0.0)
    at_defaults = parser.parse_args(["--resume", "runs/x", "--no-quiet", "--resume-every", "60"])
    assert (at_defaults.verbose, at_defaults.resume_every) == (1, 60.0)
