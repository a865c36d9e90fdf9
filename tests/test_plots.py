"""report_plots.py and fersuite.plots: every figure is a readable, non-blank PNG, and the numbers
behind the figures (confusion counts, multiply-adds, saliency) are right on hand-checked cases."""

import importlib.util
import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT, labeled_rows, run_under, write_csv
from keras import layers
from PIL import Image

from fersuite import EMOTIONS, INPUT_SHAPE, NUM_CLASSES, callbacks, cli, complexity, evaluation, models, plots, training
from fersuite.models import build_cnn

TESTS = Path(__file__).resolve().parent
FAST = ["--filters", "3", "--steps", "3", "--mistakes", "6", "--embedding-images", "30"]
RUN_FIGURES = [
    "history.png", "confusion.png", "saliency.png", "embedding_pca.png", "embedding_tsne.png",
    "complexity.png", "mistakes.png",
]
TABLES = [
    "confusion_matrix.csv", "classification_report.csv", "classification_report.md", "complexity.csv", "complexity.md",
]
CROSS_RUN = ["parameters_vs_accuracy.png", "histories.png", "runs.csv", "runs.md"]


def report_main(argv):
    """report_plots.main, loaded from the script file (it is not part of the package)."""
    spec = importlib.util.spec_from_file_location("report_plots", PROJECT / "report_plots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def _tiny_cnn(config, preprocessing):
    return build_cnn(INPUT_SHAPE, NUM_CLASSES, preprocessing, filters=(4, 8), dense=(16,))


def make_run(root):
    """A real run directory: a tiny CNN, 1 epoch on 42 synthetic faces, half of them validation.

    One batch per split keeps XLA (JAX) from compiling a second shape."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    data = write_csv(root / "train.csv", "label,feature", labeled_rows(42))
    arguments = ["--data", str(data), "--runs-dir", str(root / "runs"), "--epochs", "1", "--batch-size", "21"]
    arguments += ["--val-split", "0.5", "--warmup-epochs", "0", "--quiet"]
    config = vars(cli.training_parser("tiny", {"epochs": 1}).parse_args(arguments))
    return training.train("cnn", config, _tiny_cnn)


def one_pixel_model(row, column):
    """Class scores that depend on pixel (row, column) alone: logit c = (c + 1) * pixel."""
    inputs = keras.Input(INPUT_SHAPE, name="pixels")
    x = layers.Flatten(name="flatten")(inputs)
    x = layers.Dense(1, use_bias=False, name="pixel")(x)
    x = layers.Dense(NUM_CLASSES, name="logits")(x)
    model = keras.Model(inputs, layers.Activation("softmax", name="emotion")(x))
    selector = np.zeros((np.prod(INPUT_SHAPE), 1), dtype="float32")
    selector[row * INPUT_SHAPE[1] + column] = 1.0
    model.get_layer("pixel").set_weights([selector])
    model.get_layer("logits").set_weights([np.arange(1, NUM_CLASSES + 1, dtype="float32")[None], np.zeros(NUM_CLASSES)])
    return model


def assert_nonblank_png(path):
    assert path.is_file(), path
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("L"), dtype="float32")
    assert min(pixels.shape) > 200, (path, pixels.shape)
    assert pixels.std() > 10, f"{path} looks blank (pixel std {pixels.std():.1f})"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One tiny CNN run and every figure of it (t-SNE included), shared by the tests below."""
    root = tmp_path_factory.mktemp("plots")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FERSUITE_CACHE_DIR", str(root / "cache"))
        run_dir = make_run(root)
        report_main([str(run_dir), "--out", str(root / "figures"), "--tsne", *FAST])
    return run_dir, root / "figures"


def test_every_figure_is_a_nonblank_png(report):
    run_dir, figures = report
    for name in RUN_FIGURES:
        assert_nonblank_png(figures / run_dir.name / name)
    for name in ("filters", "activations"):
        assert_nonblank_png(figures / run_dir.name / f"{name}_block2_conv1.png")
    for name in CROSS_RUN:
        path = figures / name
        assert path.is_file(), path
        if path.suffix == ".png":
            assert_nonblank_png(path)
    for name in TABLES:
        assert (figures / run_dir.name / name).stat().st_size > 0


def test_confusion_counts_add_up_to_the_validation_rows(report):
    run_dir, figures = report
    matrix = pd.read_csv(figures / run_dir.name / "confusion_matrix.csv", index_col=0)
    config = json.loads((run_dir / "config.json").read_text())
    assert list(matrix.index) == list(EMOTIONS) == list(matrix.columns)
    assert matrix.to_numpy().sum() == config["validation_rows"] == 21
    table = pd.read_csv(figures / run_dir.name / "classification_report.csv")
    assert list(table["class"][: len(EMOTIONS)]) == list(EMOTIONS)
    assert table.set_index("class").loc["macro avg", "support"] == 21


def test_confusion_rows_are_true_emotions_and_the_report_counts_each():
    labels, predictions = np.array([0, 0, 0, 3, 3, 6]), np.array([0, 3, 3, 3, 6, 6])
    matrix = evaluation.confusion_frame(labels, predictions)
    assert matrix.loc["Angry"].tolist() == [1, 0, 0, 2, 0, 0, 0] and matrix["Angry"].tolist() == [1, 0, 0, 0, 0, 0, 0]
    assert (matrix.loc["Happy", "Neutral"], matrix.loc["Neutral", "Happy"]) == (1, 0)
    table = plots.classification_table(labels, predictions).set_index("class")
    assert table.loc[list(EMOTIONS), "support"].tolist() == [3, 0, 0, 2, 0, 0, 1]
    assert (table.loc["Angry", "precision"], table.loc["Angry", "recall"]) == (1.0, pytest.approx(1 / 3))
    assert (table.loc["Happy", "precision"], table.loc["Happy", "recall"]) == (pytest.approx(1 / 3), 0.5)
    assert table.loc["accuracy", "f1-score"] == pytest.approx(3 / 6)


def test_complexity_table_totals_match_the_model(report):
    run_dir, figures = report
    table = pd.read_csv(figures / run_dir.name / "complexity.csv")
    model = keras.saving.load_model(run_dir / "best.keras", compile=False)
    assert table["layer"].iloc[-1] == "total"
    assert table["parameters"].iloc[-1] == model.count_params() == table["parameters"].iloc[:-1].sum()
    assert table["multiply_adds"].iloc[-1] == table["multiply_adds"].iloc[:-1].sum() > 0


def test_conv_depthwise_and_dense_multiply_adds_by_hand():
    inputs = keras.Input(INPUT_SHAPE)
    x = layers.Conv2D(4, 3, padding="same", name="first")(inputs)
    x = layers.Conv2D(6, 3, strides=2, name="strided")(x)
    x = layers.DepthwiseConv2D(3, name="depthwise")(x)
    x = layers.Flatten()(x)
    outputs = layers.Dense(5, name="dense")(x)
    table = complexity.layer_table(keras.Model(inputs, outputs)).set_index("layer")
    assert table.loc["first", "multiply_adds"] == 3 * 3 * 1 * 4 * 48 * 48
    assert table.loc["strided", "output_shape"] == "23x23x6"
    assert table.loc["strided", "multiply_adds"] == 3 * 3 * 4 * 6 * 23 * 23 == 114_264
    assert table.loc["depthwise", "multiply_adds"] == 3 * 3 * 6 * 21 * 21
    assert table.loc["dense", "multiply_adds"] == 21 * 21 * 6 * 5
    assert complexity.with_total(table.reset_index())["multiply_adds"].iloc[-1] == table["multiply_adds"].sum()


def test_the_default_layer_is_the_middle_convolution_wider_than_1x1():
    cnn = build_cnn(INPUT_SHAPE, NUM_CLASSES, filters=(4, 8), dense=(16,))
    mobilenet = models.build_mobilenet(INPUT_SHAPE, NUM_CLASSES, alpha=0.25)
    assert plots.pick_conv_layer(cnn) == "block2_conv1"
    assert plots.pick_conv_layer(mobilenet) == "stage2_block2_depthwise"  # of 2 stem and 8 depthwise layers
    assert plots.pick_conv_layer(mobilenet, "stage2_shortcut_conv") == "stage2_shortcut_conv"  # asked for
    pointwise_only = keras.Sequential([keras.Input(INPUT_SHAPE), layers.Conv2D(2, 1, name="mix"), layers.Flatten()])
    assert plots.pick_conv_layer(pointwise_only) == "mix"  # 1x1 when there is nothing wider
    dnn = models.build_dnn(INPUT_SHAPE, NUM_CLASSES, units=(8,))
    assert plots.pick_conv_layer(dnn, "block2_conv1") is None  # skipped beside CNNs, not an error


def test_a_run_whose_data_is_not_found_is_named_once(report, tmp_path):
    run_dir, _ = report
    moved = plots.Run(run_dir, {**plots.load_run(run_dir).config, "data": "gone.csv"}, None, {})
    with pytest.raises(plots.UserError) as refused:
        plots.check_runs([moved], ["confusion"], plots.Options(), plots.RunCache())
    message = str(refused.value)
    assert message.startswith(f"{run_dir}: its data file gone.csv") and message.count(str(run_dir)) == 1, message


def test_saliency_is_nonzero_exactly_at_the_pixel_the_scores_depend_on():
    images = np.random.default_rng(0).uniform(0, 255, (3, *INPUT_SHAPE)).astype("float32")
    classes = np.array([0, 3, 6])
    maps = plots.saliency_maps(one_pixel_model(20, 31), images, classes)
    assert maps.shape == (3, 48, 48)
    assert [list(zip(*np.nonzero(single))) for single in maps] == [[(20, 31)]] * 3
    np.testing.assert_allclose(maps[:, 20, 31], classes + 1)


def test_saliency_images_cover_every_class_first():
    labels = np.repeat(np.arange(NUM_CLASSES), 3)
    probabilities = np.random.default_rng(1).dirichlet(np.ones(NUM_CLASSES), len(labels))
    chosen = plots.saliency_choice(labels, probabilities, 9)
    assert sorted(labels[chosen[:NUM_CLASSES]]) == list(range(NUM_CLASSES))
    assert len(set(chosen)) == 9


def test_run_names_of_neighbouring_points_do_not_overlap():
    """Two recipes of one network and a sweep's neighbours sit almost on one spot: each name goes
    where it covers no other name and no point, and stays inside the axes."""
    from matplotlib.figure import Figure

    parameters = [1.50e6, 1.50e6, 1.52e6, 1.49e6, 6e4, 5.9e6]
    accuracy = [0.660, 0.661, 0.659, 0.662, 0.62, 0.69]
    names = [f"cnn-20261124-19225{index}" for index in range(len(parameters))]
    axis = Figure(figsize=(9, 6), layout="constrained").subplots()
    axis.scatter(parameters, accuracy, s=70)
    axis.set_xscale("log")
    axis.margins(x=0.25, y=0.15)
    plots._label_points(axis, parameters, accuracy, names)
    renderer = axis.figure.canvas.get_renderer()
    boxes = [text.get_window_extent(renderer) for text in axis.texts]
    centres = axis.transData.transform(np.column_stack([parameters, accuracy]))
    assert [text.get_text() for text in axis.texts] == names
    assert all(text.arrow_patch is not None for text in axis.texts)  # a line to its own point: no guessing
    for index, box in enumerate(boxes):
        assert not any(box.overlaps(other) for other in boxes[index + 1 :])
        assert not any(box.contains(x, y) for x, y in centres)
        assert (
            axis.get_window_extent(renderer).contains(box.x0, box.y0)
            and axis.get_window_extent(renderer).contains(box.x1, box.y1)
        )


def test_without_run_dirs_every_run_in_the_runs_dir_is_used(report, tmp_path):
    run_dir, _ = report
    report_main(["--runs-dir", str(run_dir.parent), "--out", str(tmp_path), "--figures", "history,compare"])
    assert_nonblank_png(tmp_path / run_dir.name / "history.png")
    assert_nonblank_png(tmp_path / "parameters_vs_accuracy.png")
    assert not (tmp_path / run_dir.name / "confusion.png").exists()


def test_too_few_images_for_an_embedding_are_skipped(report, tmp_path):
    run_dir, _ = report
    report_main([str(run_dir), "--figures", "features,mistakes", "--max-images", "2", "--out", str(tmp_path)])
    assert sorted(path.name for path in (tmp_path / run_dir.name).iterdir()) == ["mistakes.png"]
    report_main([str(run_dir), "--figures", "features", "--embedding-images", "1", "--out", str(tmp_path / "one")])
    assert not list((tmp_path / "one").rglob("*.png"))
    said, run = [], plots.load_run(run_dir)  # through the caller's log, as every other note
    plots.report_run(run, tmp_path / "two", ["features"], plots.Options(embedding_images=1), log=said.append)
    assert f"{run.name}: 1 images are too few for an embedding figure" in said


def test_a_run_whose_model_has_no_softmax_is_refused_by_name(report, tmp_path):
    import shutil

    from fersuite.errors import UserError

    run_dir = shutil.copytree(report[0], tmp_path / "cnn-1")
    inputs = keras.Input(INPUT_SHAPE)
    keras.Model(inputs, layers.Dense(NUM_CLASSES)(layers.Flatten()(inputs))).save(run_dir / "best.keras")
    with pytest.raises(UserError, match="best.keras: outputs scores, not probabilities"):
        report_main([str(run_dir), "--figures", "confusion", "--out", str(tmp_path / "figures")])
    assert not list((tmp_path / "figures").rglob("*.png"))


def test_runs_sharing_a_folder_name_keep_their_own_figures(report, tmp_path, monkeypatch):
    """bench.gpu_session starts its runs in the same second, each under its own folder."""
    import shutil

    run_dir, _ = report
    twins = [shutil.copytree(run_dir, tmp_path / "session" / name / "cnn-1") for name in ("a", "b")]
    history = pd.read_csv(run_dir / "history.csv")
    pd.concat([history, history.assign(epoch=2)]).to_csv(twins[1] / "history.csv", index=False)  # told apart
    report_main([*map(str, twins), str(twins[0]), "--figures", "history,compare", "--out", str(tmp_path / "figures")])
    assert pd.read_csv(tmp_path / "figures" / "runs.csv")["run"].tolist() == ["a/cnn-1", "b/cnn-1"]
    assert_nonblank_png(tmp_path / "figures" / "a" / "cnn-1" / "history.png")
    assert_nonblank_png(tmp_path / "figures" / "b" / "cnn-1" / "history.png")
    first, second = ((tmp_path / "figures" / name / "cnn-1" / "history.png").read_bytes() for name in "ab")
    assert first != second
    monkeypatch.chdir(twins[0])
    named = plots.distinct_names([plots.load_run("."), plots.load_run(run_dir)])
    assert [run.name for run in named] == ["cnn-1", run_dir.name]


def test_the_confusion_matrix_alone_goes_into_a_new_folder(report, tmp_path):
    run_dir, _ = report
    report_main([str(run_dir), "--figures", "confusion", "--out", str(tmp_path / "new" / "figures")])
    assert (tmp_path / "new" / "figures" / run_dir.name / "confusion_matrix.csv").is_file()


def test_a_chosen_layer_loads_each_model_once(report, tmp_path, monkeypatch):
    run_dir, _ = report
    loaded, load = [], plots.evaluation.load_model
    monkeypatch.setattr(plots.evaluation, "load_model", lambda path: (loaded.append(path), load(path))[1])
    layer = plots.conv_layer_names(load(run_dir / "best.keras"))[0]
    report_main([str(run_dir), "--figures", "filters", "--layer", layer, "--out", str(tmp_path), *FAST])
    assert loaded == [run_dir / "best.keras"]
    assert (tmp_path / run_dir.name / f"filters_{layer}.png").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{missing}"], "no such run directory"),
        (["--runs-dir", "{missing}"], "no such runs directory"),
        (["{run}", "--figures", "history,colour"], "unknown figure 'colour'"),
        (["{run}", "--figures", "filters", "--layer", "nope"], "{run}: model 'cnn' has no layer 'nope'"),
        (["{run}", "--figures", "history", "--out", "{file}"], "cannot create the figures directory"),
        (["{run}", "--figures", "history,confusion", "--split", "test"], "{run}: {data}: has no 'test' split"),
        (["{run}", "--figures", "history,activations", "--face", "21"], "{run}: --face 21 is outside"),
        (["{run}", "--figures", "history,mistakes", "--data", "{missing}"], "missing: no such file"),
        (["{run}", "--face", "-1"], "argument --face: must be 0 or more"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(report, tmp_path, capsys, argv, message):
    run_dir, _ = report
    (tmp_path / "notes.txt").write_text("not a folder")
    argv = [part.format(missing=tmp_path / "missing", run=run_dir, file=tmp_path / "notes.txt") for part in argv]
    with pytest.raises(SystemExit) as stopped:
        cli.run(lambda: report_main(["--out", str(tmp_path / "figures"), *argv]))
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    message = message.format(run=run_dir, data=run_dir.parent.parent / "train.csv")
    assert len(error) == 1 and error[0].startswith("error: ") and message in error[0], error
    assert not (tmp_path / "figures").exists()  # refused before any figure


OTHER_BACKEND_SCRIPT = """
import sys
sys.path[:0] = [{tests!r}, {project!r}]
import numpy as np
import test_plots
from fersuite import backend, plots
assert backend.name() == {backend!r}
maps = plots.saliency_maps(test_plots.one_pixel_model(5, 7), np.full((2, 48, 48, 1), 9.0), [1, 2])
assert [list(zip(*np.nonzero(single))) for single in maps] == [[(5, 7)]] * 2, maps.nonzero()
print(test_plots.make_run({root!r}))
"""


@pytest.mark.parametrize("other", ["jax", "torch"])
def test_a_model_trained_under_another_backend_plots_under_tensorflow(tmp_path, other):
    """The other side also checks its own input gradients on the one-pixel model."""
    script = OTHER_BACKEND_SCRIPT.format(
        tests=str(TESTS), project=str(PROJECT), backend=other, root=str(tmp_path / other)
    )
    run_dir = Path(run_under(other, script).stdout.strip().splitlines()[-1])
    assert json.loads((run_dir / "config.json").read_text())["versions"]["backend"] == other
    report_main([str(run_dir), "--out", str(tmp_path / "figures"), "--figures", "confusion,saliency,filters", *FAST])
    for name in ("confusion.png", "saliency.png", "filters_block2_conv1.png"):
        assert_nonblank_png(tmp_path / "figures" / run_dir.name / name)


def test_a_relative_data_path_is_found_from_where_training_ran(tmp_path, monkeypatch):
    """A run named runs/cnn-1 that read data/train.csv: its data is two folders above the run; a run
    recorded by its absolute path says nothing about where training ran, so --data is asked for."""
    (tmp_path / "project" / "data").mkdir(parents=True)
    data = write_csv(tmp_path / "project" / "data" / "train.csv", "label,feature", labeled_rows(14))
    run_path = tmp_path / "project" / "runs" / "cnn-1"
    run_path.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    relative = plots.Run(run_path, {"data": "data/train.csv", "run_dir": "runs/cnn-1"}, None, {})
    assert plots.data_path(relative).resolve() == Path(data).resolve()
    absolute = plots.Run(run_path, {"data": "data/train.csv", "run_dir": str(run_path)}, None, {})
    with pytest.raises(plots.UserError, match="pass --data"):
        plots.data_path(absolute)
    climbed = {"data": "../data/train.csv", "run_dir": "../runs/cnn-1"}  # trained in project/notebooks
    (tmp_path / "project" / "data" / "train.csv").rename(tmp_path / "project" / "data" / "moved.csv")
    with pytest.raises(plots.UserError, match="pass --data"):
        plots.data_path(plots.Run(run_path, {**climbed, "data": "../data/moved.csv"}, None, {}))
    (tmp_path / "project" / "notebooks").mkdir()
    ran_in = {**climbed, "cwd": str(tmp_path / "project" / "notebooks")}  # recorded since session 29
    found = plots.data_path(plots.Run(run_path, {**ran_in, "data": "../data/moved.csv"}, None, {}))
    assert found.resolve() == (tmp_path / "project" / "data" / "moved.csv").resolve()
    deeper = tmp_path / "project" / "runs" / "cnn-1" / "a"  # trained in a/notebooks, runs in a/runs/cnn-1
    for folder in ("notebooks", "data", "runs/cnn-1"):
        (deeper / folder).mkdir(parents=True)
    (deeper / "data" / "moved.csv").write_text("")
    (tmp_path / "project" / "runs" / "data").mkdir()
    (tmp_path / "project" / "runs" / "data" / "moved.csv").write_text("")  # where climbing 3 folders up leads
    config = {**ran_in, "data": "../data/moved.csv", "cwd": str(deeper / "notebooks")}
    decoy = plots.data_path(plots.Run(deeper / "runs" / "cnn-1", config, None, {}))
    assert decoy.resolve() == (deeper / "data" / "moved.csv").resolve()  # not the climb's ../data/moved.csv


def test_the_summary_says_how_each_run_ended(tmp_path):
    history = pd.DataFrame({"epoch": [1], "val_accuracy": [0.4]})
    ended = {
        "finished": {"interrupted": False, "diverged_epoch": None},
        "interrupted": {"interrupted": True, "diverged_epoch": None},
        "diverged": {"interrupted": False, "diverged_epoch": 3},
        "running or killed": {},
    }
    runs = [plots.Run(tmp_path / name, {"parameters": 10}, history, metrics) for name, metrics in ended.items()]
    assert plots.run_summary(runs)["status"].tolist() == list(ended)
    earlier_session = {**ended["interrupted"], "epochs_run": 1}  # its history has gone on to epoch 3
    longer = pd.DataFrame({"epoch": [1, 2, 3], "val_accuracy": [0.4, 0.3, 0.2]})
    resumed = plots.Run(tmp_path / "resumed", {"parameters": 10}, longer, earlier_session)
    assert plots.run_summary([resumed])["status"].tolist() == ["running or killed"]  # its earlier session's metrics
    lone = plots.Run(tmp_path, {"parameters": 10}, longer, {})  # told apart by the training lock, where it has one
    with callbacks.training_lock(tmp_path):
        assert plots.run_summary([lone])["status"].tolist() == ["running"]
    (tmp_path / callbacks.LOCK).touch()  # left behind by a killed process
    assert plots.run_summary([lone])["status"].tolist() == ["killed"]


def test_every_run_trained_on_other_contents_is_warned_about(tmp_path):
    data = write_csv(tmp_path / "train.csv", "label,feature", labeled_rows(14))
    configs = {"same": {"data_digest": plots.file_digest(data)}, "other": {"data_digest": "0" * 16}, "unrecorded": {}}
    cache, warnings = plots.RunCache(), []
    for name, config in configs.items():
        cache.get(
            plots.Run(tmp_path / name, {"data": str(data), **config}, None, {}), plots.Options(), log=warnings.append
        )
    assert len(warnings) == 1 and "other" in warnings[0]
    packed = tmp_path / "train.npz.xz"  # the same faces, another file: compared by its validation faces
    from fersuite import data as fer_data

    fer_data.pack_table(fer_data.load_table(data), packed)
    faces = plots.faces_digest(plots.load_splits(data)["validation"].pixels)
    recorded = {"packed": faces, "other faces": "0" * 32}
    warnings.clear()
    for name, digest in recorded.items():
        config = {"data": str(packed), "data_digest": plots.file_digest(data), "validation_digest": digest}
        cache.get(plots.Run(tmp_path / name, config, None, {}), plots.Options(), log=warnings.append)
    assert len(warnings) == 1 and "other faces" in warnings[0]


@pytest.fixture
def drawn(monkeypatch):
    """The Figure each plot_* function draws, kept instead of saved, so its content can be read."""
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, path, **options: figures.append(figure))
    return figures


def _panel(figure, title_start):
    return next(axis for axis in figure.axes if axis.get_title().startswith(title_start))


def _line(axis, label):
    return next(line for line in axis.get_lines() if line.get_label() == label)


def test_history_figure_draws_each_curve_and_stars_the_best_epoch(drawn, tmp_path):
    history = pd.DataFrame({
        "epoch": [1, 2, 3, 4],
        "accuracy": [0.3, 0.4, 0.5, 0.6], "val_accuracy": [0.35, 0.5, 0.45, 0.48],
        "loss": [1.9, 1.6, 1.4, 1.2], "val_loss": [1.8, 1.5, 1.55, 1.52],
    })
    plots.plot_history(history, tmp_path / "history.png", "run")
    for metric in ("accuracy", "loss"):
        axis = _panel(drawn[0], metric)
        assert _line(axis, "train").get_ydata().tolist() == history[metric].tolist()
        assert _line(axis, "validation").get_ydata().tolist() == history[f"val_{metric}"].tolist()
        star = _line(axis, "best epoch 2")
        assert (star.get_xdata()[0], star.get_ydata()[0]) == (2, history[f"val_{metric}"][1])
    assert _panel(drawn[0], "accuracy").get_title() == "accuracy (validation 0.500 at the best epoch)"


def test_confusion_figure_writes_each_count_in_its_cell(drawn, tmp_path):
    labels, predictions = np.array([0, 0, 0, 3, 3, 6]), np.array([0, 3, 3, 3, 6, 6])
    matrix = evaluation.confusion_frame(labels, predictions).to_numpy()
    plots.plot_confusion(matrix, tmp_path / "confusion.png", "run")
    figure = drawn[0]
    for title, expected in (("counts", [["1", "0", "0", "2"], ["0", "0", "0", "1"]]),
                            ("row-normalized", [["0.33", "0.00", "0.00", "0.67"], ["0.00", "0.00", "0.00", "0.50"]])):
        axis = _panel(figure, title)
        cells = {tuple(map(int, text.get_position())): text.get_text() for text in axis.texts}
        assert len(cells) == NUM_CLASSES**2
        assert [cells[(column, 0)] for column in range(4)] == expected[0]  # Angry's row
        assert [cells[(column, 3)] for column in (0, 1, 2, 6)] == expected[1]  # Happy's row
        assert [label.get_text() for label in axis.get_yticklabels()] == list(EMOTIONS)
        assert (axis.get_xlabel(), axis.get_ylabel()) == ("predicted", "true")
    assert figure.get_suptitle() == "run: 6 images, accuracy 0.500"


def test_size_figure_puts_each_run_at_its_parameters_and_accuracy(drawn, tmp_path):
    summary = pd.DataFrame({
        "run": ["cnn-a", "cnn-b", "mobilenet-a"], "family": ["cnn", "cnn", "mobilenet"],
        "parameters": [30_000, 5_900_000, 60_000], "best_val_accuracy": [0.55, 0.69, 0.63],
    })
    plots.plot_parameters_vs_accuracy(summary, tmp_path / "size.png")
    axis = drawn[0].axes[0]
    assert axis.get_xscale() == "log"
    points = {label: collection.get_offsets().tolist()
              for collection, label in zip(axis.collections, axis.get_legend_handles_labels()[1])}
    assert points == {"cnn": [[30_000, 0.55], [5_900_000, 0.69]], "mobilenet": [[60_000, 0.63]]}
    names = {text.get_text(): text.xy for text in axis.texts}
    assert names == {"cnn-a": (30_000, 0.55), "cnn-b": (5_900_000, 0.69), "mobilenet-a": (60_000, 0.63)}


def test_histories_figure_has_a_validation_line_and_a_dashed_train_line_per_run(drawn, tmp_path):
    first = pd.DataFrame({"epoch": [1, 2], "accuracy": [0.3, 0.4], "val_accuracy": [0.35, 0.45],
                          "loss": [1.9, 1.7], "val_loss": [1.8, 1.6]})
    second = first.assign(val_accuracy=[0.2, 0.6], accuracy=[0.25, 0.5])
    plots.plot_histories({"first": first, "second": second}, tmp_path / "histories.png")
    axis = _panel(drawn[0], "accuracy")
    solid = {line.get_label(): line.get_ydata().tolist() for line in axis.get_lines() if line.get_linestyle() == "-"}
    dashed = [line.get_ydata().tolist() for line in axis.get_lines() if line.get_linestyle() == "--"]
    assert solid == {"first": [0.35, 0.45], "second": [0.2, 0.6]}
    assert dashed == [[0.3, 0.4], [0.25, 0.5]]
    assert [text.get_text() for text in axis.get_legend().get_texts()] == ["first", "second"]


def test_a_one_epoch_run_gets_one_whole_epoch_tick_and_a_visible_validation_point(drawn, tmp_path):
    history = pd.DataFrame({"epoch": [1], "accuracy": [0.3], "val_accuracy": [0.35], "loss": [1.9], "val_loss": [1.8]})
    plots.plot_history(history, tmp_path / "history.png", "run")
    plots.plot_histories({"run": history}, tmp_path / "histories.png")
    for figure in drawn:
        for axis in figure.axes:
            low, high = axis.get_xlim()
            assert [tick for tick in axis.get_xticks() if low <= tick <= high] == [1], axis.get_title()
    star = _line(_panel(drawn[0], "accuracy"), "best epoch 1")
    assert star.get_markerfacecolor() == "none"
    train = [line for line in _panel(drawn[1], "accuracy").get_lines() if line.get_linestyle() == "--"]
    assert [line.get_marker() for line in train] == ["x"]


def test_the_normalized_confusion_matrix_is_drawn_on_a_zero_to_one_scale(drawn, tmp_path):
    labels, predictions = np.array([0, 0, 3, 3, 6, 6]), np.array([0, 3, 3, 6, 6, 0])  # every recall 0.5
    plots.plot_confusion(evaluation.confusion_frame(labels, predictions).to_numpy(), tmp_path / "c.png", "run")
    assert _panel(drawn[0], "row-normalized").images[0].get_clim() == (0, 1)
    assert _panel(drawn[0], "counts").images[0].get_clim() == (0, 1)  # the largest count is 1


def test_a_dead_filter_is_drawn_plain_and_named_and_a_depthwise_layer_has_channels(drawn, tmp_path):
    """A ReLU filter that never fires near gray has no gradient: its image is its starting noise."""
    inputs = keras.Input(INPUT_SHAPE)
    x = layers.Conv2D(2, 3, activation="relu", name="conv")(inputs)
    x = layers.DepthwiseConv2D(3, name="depthwise")(x)
    model = keras.Model(inputs, layers.Dense(NUM_CLASSES, activation="softmax")(layers.Flatten()(x)))
    kernel = np.zeros((3, 3, 1, 2), dtype="float32")
    kernel[1, 1, 0, 0] = 1.0
    model.get_layer("conv").set_weights([kernel, np.array([0.0, -1.0], dtype="float32")])
    patterns, filters, flat = plots.filter_patterns(model, "conv", 2, steps=2)
    assert flat.tolist() == [False, True]
    plots.plot_filters(patterns, filters, tmp_path / "filters.png", "run", flat)
    titles = [axis.get_title() for axis in drawn[0].axes if axis.get_title()]
    assert titles == ["filter 0", "filter 1: no gradient"]
    assert np.ptp(drawn[0].axes[1].images[0].get_array()) == 0
    maps = np.stack([np.arange(9.0).reshape(3, 3), np.zeros((3, 3))], axis=-1)
    plots.plot_activations(np.zeros(INPUT_SHAPE), maps, tmp_path / "maps.png", "run")
    assert [axis.get_title() for axis in drawn[1].axes][1:3] == ["filter 0\n0 to 8", "filter 1: all 0"]
    assert (plots._unit(model, "conv"), plots._unit(model, "depthwise")) == ("filter", "channel")


def test_face_grids_title_each_face_and_mark_wrong_ones(drawn, tmp_path):
    faces = np.zeros((2, *INPUT_SHAPE), dtype="uint8")
    true, predicted, confidence = np.array([3, 0]), np.array([3, 6]), np.array([0.91, 0.55])
    plots.plot_mistakes(faces, true, predicted, confidence, tmp_path / "mistakes.png", "run")
    plots.plot_saliency(faces, np.ones((2, 48, 48)), true, predicted, confidence, tmp_path / "saliency.png", "run")
    mistakes, saliency = ([axis.title for axis in figure.axes if axis.get_title()] for figure in drawn)
    expected = ["true Happy\npred Happy 91.0%", "true Angry\npred Neutral 55.0%"]
    assert [title.get_text() for title in mistakes] == expected
    assert [title.get_text() for title in saliency] == expected
    assert [title.get_color() for title in saliency] == ["black", "tab:red"]


def test_embedding_legend_counts_each_emotion(drawn, tmp_path):
    labels = np.array([0, 0, 3, 6, 6, 6])
    points = np.arange(12, dtype="float32").reshape(6, 2)
    plots.plot_embedding(points, labels, tmp_path / "embedding.png", "run", ("PC 1", "PC 2"))
    axis = drawn[0].axes[0]
    legend = [text.get_text() for text in axis.get_legend().get_texts()]
    assert legend == [f"{emotion} ({count})" for emotion, count in zip(EMOTIONS, [2, 0, 0, 1, 0, 0, 3])]
    assert axis.collections[6].get_offsets().tolist() == points[3:].tolist()


def test_runs_dir_finds_runs_and_a_sweeps_runs_a_folder_deeper(tmp_path, monkeypatch):
    for run in ("cnn-1", "mobilenet-5k/mobilenet-1", "mobilenet-5k/notes", "empty"):
        (tmp_path / run).mkdir(parents=True)
    for run in ("cnn-1", "mobilenet-5k/mobilenet-1"):
        (tmp_path / run / "config.json").write_text("{}")
    (tmp_path / "runs.md").write_text("")
    assert plots.find_runs(tmp_path) == [tmp_path / "cnn-1", tmp_path / "mobilenet-5k" / "mobilenet-1"]
    real_iterdir = Path.iterdir

    def unreadable_empty(folder):  # as a root-owned lost+found is to a user (the tests may run as root)
        if folder.name == "empty":
            raise PermissionError(13, "Permission denied", str(folder))
        return real_iterdir(folder)

    monkeypatch.setattr(Path, "iterdir", unreadable_empty)
    assert len(plots.find_runs(tmp_path)) == 2

