"""Figures and tables that explain trained runs, for report_plots.py.

Three layers, each usable alone:
  drawing   plot_* take arrays or frames and a path, draw on a matplotlib Figure (rendered by
            Agg, no pyplot state, never shown) and save it atomically;
  analysis  run a model in inference mode: predictions, penultimate features, saliency,
            filter patterns by gradient ascent, activation maps;
  reports   report_run / report_comparison read run directories and write every figure.
"""

import json
import math
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from keras import layers, ops
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import ndimage

from fersuite import EMOTIONS, backend, complexity, evaluation
from fersuite.atomic import save_figure, write_text
from fersuite.callbacks import best_row, lock_state
from fersuite.data import Split, equalize_mode, faces_digest, file_digest, load_splits, recorded_path, split_seed
from fersuite.errors import UserError

DPI = 150
CLASS_COLORS = ("#d62728", "#8c564b", "#9467bd", "#ff7f0e", "#1f77b4", "#17becf", "#7f7f7f")
FAMILY_STYLES = {"cnn": ("tab:blue", "o"), "dnn": ("tab:orange", "s"), "mobilenet": ("tab:green", "^")}
OTHER_FAMILY_STYLE = ("tab:purple", "D")
CONV_TYPES = (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D)


# ---------------------------------------------------------------- drawing


def output_dir(path):
    """The folder for figures and tables, made if missing; a path that cannot be one is a one-line error."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{path}: cannot create the figures directory ({error.strerror})") from None
    return path


def _save(figure, path):
    path = Path(path)
    output_dir(path.parent)
    save_figure(figure, path, dpi=DPI, bbox_inches="tight")
    return path


def _bare(axis):
    """No ticks on an image panel, but keep the axis so a y label can name the row."""
    axis.set_xticks([])
    axis.set_yticks([])


def _epoch_ticks():
    """Whole epochs only (a new locator per axis): by default MaxNLocator adds 0.5-steps to show two ticks
    on a one-epoch run."""
    return MaxNLocator(integer=True, min_n_ticks=1)


def _grid(count, max_columns=8):
    columns = max(1, min(max_columns, math.ceil(math.sqrt(count))))
    return math.ceil(count / columns), columns


def _stretch(image, low=1, high=99):
    """Percentile contrast stretch to [0, 1], so faint patterns are visible."""
    bottom, top = np.percentile(image, [low, high])
    return np.clip((image - bottom) / (top - bottom), 0, 1) if top > bottom else np.zeros_like(image)


def _red_overlay(strength):
    """Red whose opacity grows with the square of the strength: weak, noisy gradients stay clear."""
    overlay = np.zeros((*strength.shape, 4), dtype="float32")
    overlay[..., 0] = 1.0
    overlay[..., 3] = 0.9 * strength**2
    return overlay


def _face(image):
    return np.asarray(image, dtype="float32").reshape(image.shape[0], image.shape[1])


def plot_history(history, path, title, best_epoch=None):
    """Accuracy and loss per epoch, train vs validation, the best validation epoch starred."""
    if best_epoch not in set(history["epoch"]):
        best = best_row(history)
        best_epoch = None if best is None else int(best["epoch"])
    marker = "o" if len(history) <= 30 else None
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    for axis, metric in zip(figure.subplots(1, 2), ("accuracy", "loss")):
        axis.plot(history["epoch"], history[metric], marker=marker, label="train")
        heading = metric
        if f"val_{metric}" in history:
            axis.plot(history["epoch"], history[f"val_{metric}"], marker=marker, label="validation")
        if best_epoch is not None and f"val_{metric}" in history:
            value = float(history.loc[history["epoch"] == best_epoch, f"val_{metric}"].iloc[0])
            axis.axvline(best_epoch, color="gray", linestyle=":", linewidth=1)
            axis.plot(
                best_epoch,
                value,
                marker="*",
                markersize=15,
                markerfacecolor="none",
                markeredgecolor="tab:red",
                markeredgewidth=1.5,
                linestyle="none",
                label=f"best epoch {best_epoch}",
            )
            heading = f"{metric} (validation {value:.3f} at the best epoch)"
        axis.set(xlabel="epoch", ylabel=metric, title=heading)
        axis.set_xlim(history["epoch"].min() - 0.5, history["epoch"].max() + 0.5)
        axis.xaxis.set_major_locator(_epoch_ticks())
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title, fontsize=13)
    return _save(figure, path)


def plot_confusion(matrix, path, title):
    """Counts and row-normalized matrix side by side; the diagonal of the second is recall."""
    counts = np.asarray(matrix)
    normalized = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    figure = Figure(figsize=(14, 6), layout="constrained")
    panels = (("counts", counts, "d", counts.max() or 1), ("row-normalized (diagonal = recall)", normalized, ".2f", 1))
    for axis, (name, values, style, top) in zip(figure.subplots(1, 2), panels):  # fractions on one 0..1 scale
        image = axis.imshow(values, cmap="Blues", vmin=0, vmax=top)
        figure.colorbar(image, ax=axis, shrink=0.85)
        for row in range(values.shape[0]):
            for column in range(values.shape[1]):
                axis.text(
                    column, row, format(values[row, column], style), ha="center", va="center", fontsize=9,
                    color="white" if values[row, column] > top / 2 else "black",
                )
        axis.set_xticks(range(len(EMOTIONS)), EMOTIONS, rotation=45, ha="right")
        axis.set_yticks(range(len(EMOTIONS)), EMOTIONS)
        axis.set(xlabel="predicted", ylabel="true", title=name)
    figure.suptitle(f"{title}: {counts.sum():,} images, accuracy {accuracy:.3f}", fontsize=13)
    return _save(figure, path)


def _label_title(true, predicted, confidence):
    """Confidence in percent to a tenth: mistakes ranked by it often share the first two decimals."""
    return f"true {EMOTIONS[true]}\npred {EMOTIONS[predicted]} {confidence:.1%}"


def _grid_title(figure, text, fontsize):
    """A face or filter grid's title, each line wrapped to the figure's width: a grid of three
    columns is narrower than a run name, a layer and what the figure shows."""
    characters = max(30, int(figure.get_figwidth() * 130 / fontsize))
    figure.suptitle("\n".join(textwrap.fill(line, characters) for line in text.split("\n")), fontsize=fontsize)


def _image_grid(rows, columns, panel, margin):
    """A figure of rows x columns image panels (`panel` inches each, plus `margin`), axes hidden."""
    figure = Figure(figsize=(panel[0] * columns + margin[0], panel[1] * rows + margin[1]), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.set_axis_off()
    return figure, axes


def plot_saliency(faces, saliency, true, predicted, confidence, path, title):
    """Per image a column: the face, its saliency map, and the map laid over the face."""
    count = len(faces)
    columns = min(count, len(EMOTIONS))
    groups = math.ceil(count / columns)
    figure, axes = _image_grid(3 * groups, columns, (1.8, 5.6 / 3), (0.6, 0.5))
    for index in range(count):
        group, column = divmod(index, columns)
        face_axis, map_axis, overlay_axis = axes[3 * group : 3 * group + 3, column]
        face = _face(faces[index])
        strength = _stretch(saliency[index], 0, 99.5)
        face_axis.imshow(face, cmap="gray", vmin=0, vmax=255)
        colour = "black" if true[index] == predicted[index] else "tab:red"
        face_axis.set_title(_label_title(true[index], predicted[index], confidence[index]), fontsize=9, color=colour)
        map_axis.imshow(strength, cmap="inferno", vmin=0, vmax=1)
        overlay_axis.imshow(face, cmap="gray", vmin=0, vmax=255)
        overlay_axis.imshow(_red_overlay(strength))
        for axis, name in ((face_axis, "face"), (map_axis, "saliency"), (overlay_axis, "overlay")):
            axis.set_axis_on()
            _bare(axis)
            if column == 0:
                axis.set_ylabel(name, fontsize=10)
    _grid_title(
        figure,
        f"{title}\n|d score / d pixel| of the predicted class, each map stretched to its own 99.5th percentile "
        "(red title: wrong prediction)",
        11,
    )
    return _save(figure, path)


def plot_filters(patterns, filters, path, title, flat=None, unit="filter"):
    """Images that maximize each filter's mean activation, one panel per filter. A `flat` filter had no
    gradient at all (a ReLU dead near gray, common in a barely trained network): its panel is plain
    gray, as stretching its untouched starting noise would look like a learned pattern."""
    flat = np.zeros(len(patterns), dtype=bool) if flat is None else np.asarray(flat)
    figure, axes = _image_grid(*_grid(len(patterns)), (1.6, 1.75), (0.4, 0.8))
    for axis, pattern, number, still in zip(axes.flat, patterns, filters, flat):
        axis.imshow(np.full_like(pattern, 0.5) if still else _stretch(pattern), cmap="gray", vmin=0, vmax=1)
        axis.set_title(f"{unit} {number}" + (": no gradient" if still else ""), fontsize=9)
    note = f"\n{int(flat.sum())} of {len(flat)} had no gradient (plain gray)" if flat.any() else ""
    _grid_title(figure, title + note, 11)
    return _save(figure, path)


def plot_activations(face, activations, path, title, label=None, unit="filter"):
    """The face, then one activation map per channel, each on its own colour scale (its range in its
    title); a map that is zero everywhere is drawn white, not as a dark response."""
    figure, axes = _image_grid(*_grid(activations.shape[-1] + 1), (1.6, 1.75), (0.4, 0.8))
    axes.flat[0].imshow(_face(face), cmap="gray", vmin=0, vmax=255)
    axes.flat[0].set_title("input" if label is None else f"input ({EMOTIONS[label]})", fontsize=9)
    for channel, axis in enumerate(axes.flat[1 : activations.shape[-1] + 1]):
        values = activations[..., channel]
        low, high = float(values.min()), float(values.max())
        if low == high == 0:
            axis.imshow(np.ones_like(values), cmap="gray", vmin=0, vmax=1)
            axis.set_title(f"{unit} {channel}: all 0", fontsize=9)
        else:
            axis.imshow(values, cmap="viridis")
            axis.set_title(f"{unit} {channel}\n{low:.2g} to {high:.2g}", fontsize=8)
        axis.set_axis_on()
        _bare(axis)
    _grid_title(figure, title + "\neach map on its own colour scale (dark = its lowest, yellow = its highest)", 11)
    return _save(figure, path)


def plot_embedding(points, labels, path, title, axis_names):
    """2-D points coloured by emotion, class sizes in the legend."""
    figure = Figure(figsize=(8.5, 6.5), layout="constrained")
    axis = figure.subplots()
    for number, emotion in enumerate(EMOTIONS):
        chosen = labels == number
        axis.scatter(
            points[chosen, 0],
            points[chosen, 1],
            s=9 if len(points) > 300 else 25,
            alpha=0.6,
            color=CLASS_COLORS[number],
            label=f"{emotion} ({int(chosen.sum())})",
        )
    axis.set(xlabel=axis_names[0], ylabel=axis_names[1], title=title)
    axis.grid(alpha=0.3)
    axis.legend(title="true emotion", markerscale=2.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(figure, path)


def plot_mistakes(faces, true, predicted, confidence, path, title):
    """A grid of faces the model got wrong, most confident first."""
    if len(faces) == 0:
        figure = Figure(figsize=(6, 2), layout="constrained")
        figure.text(0.5, 0.5, f"{title}\nno wrong predictions", ha="center", va="center", fontsize=12)
        return _save(figure, path)
    columns = min(8, len(faces))
    rows = math.ceil(len(faces) / columns)
    figure, axes = _image_grid(rows, columns, (1.7, 2.05), (0.3, 0.7))
    for index, axis in enumerate(axes.flat[: len(faces)]):
        axis.imshow(_face(faces[index]), cmap="gray", vmin=0, vmax=255)
        axis.set_title(_label_title(true[index], predicted[index], confidence[index]), fontsize=9)
    _grid_title(figure, title, 12)
    return _save(figure, path)


def plot_complexity(table, path, title):
    """Multiply-adds and parameters of the layers that have either, on a shared layer axis."""
    costly = table[(table["multiply_adds"] > 0) | (table["parameters"] > 0)]
    costly = costly[~costly["type"].isin(("BatchNormalization", "Rescaling", "Normalization"))]
    figure = Figure(figsize=(12, max(3.5, 0.32 * len(costly) + 1.8)), layout="constrained")
    macs_axis, parameters_axis = figure.subplots(1, 2, sharey=True)
    positions = np.arange(len(costly))
    macs_axis.barh(positions, costly["multiply_adds"] / 1e6, color="tab:blue")
    parameters_axis.barh(positions, costly["parameters"] / 1e3, color="tab:orange")
    macs_axis.set_yticks(positions, costly["layer"], fontsize=9)
    macs_axis.invert_yaxis()
    macs_axis.set(xlabel="multiply-adds per image (millions)", title="multiply-adds")
    parameters_axis.set(xlabel="parameters (thousands)", title="parameters")
    for axis in (macs_axis, parameters_axis):
        axis.grid(axis="x", alpha=0.3)
    total_macs, total_parameters = table["multiply_adds"].sum(), table["parameters"].sum()
    figure.suptitle(
        f"{title}: {total_parameters:,} parameters, {total_macs / 1e6:,.1f} M multiply-adds per image", fontsize=12
    )
    return _save(figure, path)


SIZE_TITLE = "Model size vs validation accuracy"


def plot_parameters_vs_accuracy(summary, path, title=SIZE_TITLE):
    """One point per run (colour and marker by family), log-scale parameters, runs labelled."""
    figure = Figure(figsize=(9, 6), layout="constrained")
    axis = figure.subplots()
    for family, rows in summary.groupby("family", sort=True):
        colour, marker = FAMILY_STYLES.get(family, OTHER_FAMILY_STYLE)
        axis.scatter(
            rows["parameters"], rows["best_val_accuracy"], s=70, color=colour, marker=marker, label=family, zorder=3
        )
    axis.set_xscale("log")
    axis.margins(x=0.25, y=0.15)
    axis.set(xlabel="parameters (log scale)", ylabel="best validation accuracy", title=title)
    axis.grid(alpha=0.3, which="both")
    _label_points(axis, summary["parameters"], summary["best_val_accuracy"], summary["run"])
    axis.legend(title="family")  # placed after the names: "best" keeps it off them too
    return _save(figure, path)


# Where a point's name may go, in order of preference: offset in points, then alignment.
LABEL_PLACES = tuple(
    ((7 * dx, 6 * dy), ("right", "center", "left")[dx + 1], ("top", "center", "bottom")[dy + 1])
    for dx, dy in ((1, 1), (-1, 1), (1, -1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
)


# A thin line from each name to its point: among close neighbours a name can sit nearer another point.
LEADER = {"arrowstyle": "-", "color": "0.55", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 4}


def _label_points(axis, xs, ys, names):
    """Each point's name beside it, on the first side where it covers no point and no other name,
    inside the axes; with none free, the side that covers least.

    Runs of about the same size and accuracy (a sweep's neighbours, two recipes of one network)
    otherwise print their names over each other."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.transforms import Bbox

    renderer = FigureCanvasAgg(axis.figure).get_renderer()
    axis.figure.draw(renderer)  # the layout engine fixes the axes' place first
    radius = 6 * axis.figure.dpi / 72
    centres = axis.transData.transform(np.column_stack([xs, ys]))
    taken = [Bbox.from_extents(x - radius, y - radius, x + radius, y + radius) for x, y in centres]
    inside = axis.get_window_extent(renderer)

    def covered(box):
        area = sum(
            max(0, min(box.x1, other.x1) - max(box.x0, other.x0))
            * max(0, min(box.y1, other.y1) - max(box.y0, other.y0))
            for other in taken
        )
        return area + box.width * box.height * (
            not inside.contains(box.x0, box.y0) or not inside.contains(box.x1, box.y1)
        )

    for name, x, y in zip(names, xs, ys):
        tries = []
        for offset, horizontal, vertical in LABEL_PLACES:
            label = axis.annotate(
                name,
                (x, y),
                xytext=offset,
                textcoords="offset points",
                fontsize=8,
                ha=horizontal,
                va=vertical,
                arrowprops=LEADER,
            )
            box = label.get_window_extent(renderer)
            tries.append((covered(box), len(tries), label, box))
            if tries[-1][0] == 0:
                break
        _, _, label, box = min(tries, key=lambda attempt: attempt[:2])
        for _, _, other, _ in tries:
            if other is not label:
                other.remove()
        taken.append(box)


def plot_histories(histories, path):
    """Validation (solid) and train (dashed) curves of several runs on shared axes."""
    figure = Figure(figsize=(13, 5), layout="constrained")
    axes = figure.subplots(1, 2)
    colours = _line_colours(len(histories))
    marked = any(len(history) <= 30 for history in histories.values())
    for colour, (name, history) in zip(colours, histories.items()):
        marker = "o" if len(history) <= 30 else None  # a run of one epoch is a point, not a line
        for axis, metric in zip(axes, ("accuracy", "loss")):
            if f"val_{metric}" in history:
                axis.plot(
                    history["epoch"], history[f"val_{metric}"], color=colour, linewidth=1.8, marker=marker, label=name
                )
            axis.plot(
                history["epoch"],
                history[metric],
                color=colour,
                linewidth=1,
                linestyle="--",
                marker=marker and "x",
                alpha=0.6,
            )
    for axis, metric in zip(axes, ("accuracy", "loss")):
        points = " (points o), train dashed (x)" if marked else ", train dashed"
        axis.set(xlabel="epoch", ylabel=metric, title=f"{metric}: validation solid{points}")
        axis.xaxis.set_major_locator(_epoch_ticks())
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("Training histories", fontsize=13)
    return _save(figure, path)


def _line_colours(count):
    """Distinct colours for `count` lines: tab10, then tab20 when there are more runs."""
    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(index % palette.N) for index in range(count)]


def markdown_table(frame):
    """A GitHub Markdown table; integers get thousands separators, floats 4 decimals."""

    def cell(value):
        if pd.api.types.is_scalar(value) and pd.isna(value):
            return ""
        if isinstance(value, (int, np.integer)):
            return f"{value:,}"
        if isinstance(value, (float, np.floating)):
            return f"{value:.4f}"
        return str(value)

    numeric = [pd.api.types.is_numeric_dtype(frame[column]) for column in frame.columns]
    lines = [
        "| " + " | ".join(map(str, frame.columns)) + " |",
        "|" + "|".join("---:" if right else "---" for right in numeric) + "|",
    ]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(frame, stem):
    """The same table as CSV (for programs) and Markdown (for reports): stem.csv, stem.md."""
    stem = Path(stem)
    output_dir(stem.parent)
    csv_path, markdown_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    write_text(csv_path, frame.to_csv(index=False))
    write_text(markdown_path, markdown_table(frame))
    return [csv_path, markdown_path]


def classification_table(labels, predictions):
    """sklearn's per-class precision/recall/f1/support, plus accuracy and averages, as rows."""
    report = evaluation.classification_report(labels, predictions)
    rows = [{"class": name, **values} for name, values in report.items() if isinstance(values, dict)]
    if "accuracy" in report:
        rows.insert(len(EMOTIONS), {"class": "accuracy", "f1-score": report["accuracy"], "support": len(labels)})
    frame = pd.DataFrame(rows, columns=["class", "precision", "recall", "f1-score", "support"])
    frame["support"] = frame["support"].astype(int)
    return frame


# ---------------------------------------------------------------- analysis


def logits_layer(model):
    """The layer whose input is the penultimate representation: 'logits', else the last Dense."""
    names = [layer.name for layer in model.layers]
    if "logits" in names:
        return model.get_layer("logits")
    dense = [layer for layer in model.layers if isinstance(layer, layers.Dense)]
    if not dense:
        raise UserError(f"model '{model.name}' has no 'logits' or Dense layer to take scores from")
    return dense[-1]


def conv_layer_names(model):
    return [layer.name for layer in model.layers if isinstance(layer, CONV_TYPES)]


def pick_conv_layer(model, name=None):
    """The named layer, or the middle convolution: past the edge detectors, not yet 3x3 maps. Only
    convolutions wider than 1x1 count for the default, when there are any: a MobileNet's pointwise and
    shortcut layers mix channels and draw flat grey squares as filter patterns. None for a model without
    convolutions (a DNN beside CNNs is skipped, --layer or not)."""
    convolutions = conv_layer_names(model)
    if not convolutions:
        return None
    if name is None:
        spatial = [layer for layer in convolutions if max(model.get_layer(layer).kernel_size) > 1] or convolutions
        return spatial[len(spatial) // 2] if spatial else None
    if name not in [layer.name for layer in model.layers]:
        raise UserError(
            f"model '{model.name}' has no layer '{name}'; its conv layers: {', '.join(convolutions)}"
        )
    if len(model.get_layer(name).output.shape) != 4:
        raise UserError(
            f"layer '{name}' of model '{model.name}' has no feature maps; pick a conv layer: {', '.join(convolutions)}"
        )
    return name


def check_runs(runs, figures, options, cache):
    """Refuse a --layer, --split, --face or data file that a run cannot use before any figure is drawn,
    not halfway through; the splits and models it loads stay in `cache` for the figures."""
    conv = bool(set(CONV_FIGURES) & set(figures))
    for run in runs:
        if not run.model_path.is_file() or not set(MODEL_FIGURES) & set(figures):
            continue
        try:
            layer = pick_conv_layer(cache.model(run), options.layer) if conv else None
            activations = layer is not None and "activations" in figures
            if activations or set(PREDICTION_FIGURES) & set(figures):
                _, split = cache.get(run, options, log=lambda message: None)
                if activations:
                    check_face(split, options)
        except UserError as error:
            message = str(error)  # some already name the run
            raise UserError(message if message.startswith(str(run.path)) else f"{run.path}: {message}") from None


def check_face(split, options):
    if not 0 <= options.face < len(split):
        raise UserError(f"--face {options.face} is outside the {options.split} split's 0..{len(split) - 1}")


def predict(model, pixels, with_features=False, batch_size=256, name=None):
    """Class probabilities and, if asked, penultimate features (the input of 'logits'), one pass;
    `name` (the model's file) is what an error names."""
    pixels = np.asarray(pixels, dtype="float32")
    if not with_features:
        probabilities = model.predict(pixels, batch_size=batch_size, verbose=0)
        return evaluation.checked_probabilities(probabilities, model, name), None
    both = keras.Model(model.input, [logits_layer(model).input, model.output])
    features, probabilities = both.predict(pixels, batch_size=batch_size, verbose=0)
    return evaluation.checked_probabilities(probabilities, model, name), features.reshape(len(pixels), -1)


def saliency_maps(model, images, classes):
    """|d score_c / d pixel| per image, c from `classes`; the score is the logit (pre-softmax)."""
    scores = keras.Model(model.input, logits_layer(model).output)
    mask = np.eye(scores.output.shape[-1], dtype="float32")[np.asarray(classes)]

    def chosen_scores(pixels):
        return ops.multiply(ops.cast(scores(pixels, training=False), "float32"), mask)

    gradients = backend.input_gradients(chosen_scores, images)
    return np.abs(gradients).max(axis=-1)


def filter_patterns(model, layer_name, count, steps=40, step_size=2.0, blur=0.7, seed=0):
    """Gradient ascent from a gray image on each of the first `count` filters' mean activation.

    All filters are optimized at once, one image each; steps use the RMS-normalized gradient so
    `step_size` is in pixel units whatever the layer's scale, and a light Gaussian blur every 4
    steps keeps pixel noise out (Yosinski et al. 2015). Returns (patterns, filter numbers, flat):
    flat marks the filters whose gradient was zero at every step, whose image never left its start.
    """
    activations = keras.Model(model.input, model.get_layer(layer_name).output)
    channels = activations.output.shape[-1]
    filters = np.arange(min(count, channels))
    mask = np.zeros((len(filters), channels), dtype="float32")
    mask[np.arange(len(filters)), filters] = 1.0

    def objective(pixels):
        means = ops.mean(ops.cast(activations(pixels, training=False), "float32"), axis=(1, 2))
        return ops.multiply(means, mask)

    rng = np.random.default_rng(seed)
    images = 128.0 + rng.normal(0.0, 4.0, (len(filters), *model.input_shape[1:])).astype("float32")
    moved = np.zeros(len(filters), dtype=bool)
    for step in range(1, steps + 1):
        gradients = backend.input_gradients(objective, images)
        moved |= np.abs(gradients).max(axis=(1, 2, 3)) > 0
        scale = np.sqrt(np.mean(gradients**2, axis=(1, 2, 3), keepdims=True)) + 1e-8
        images = np.clip(images + step_size * gradients / scale, 0.0, 255.0)
        if blur and step % 4 == 0:
            images = ndimage.gaussian_filter(images, sigma=(0, blur, blur, 0))
        images = images.astype("float32")
    return images[..., 0], filters, ~moved


def _unit(model, layer_name):
    """What a panel of the layer is: a depthwise convolution has one filter per input channel."""
    return "channel" if isinstance(model.get_layer(layer_name), keras.layers.DepthwiseConv2D) else "filter"


def layer_activations(model, layer_name, face):
    """The layer's feature maps (H, W, C) for one face."""
    activations = keras.Model(model.input, model.get_layer(layer_name).output)
    return ops.convert_to_numpy(activations(np.asarray(face, dtype="float32")[None], training=False))[0]


def embed(features, method="pca", seed=0):
    """2-D points and axis names: PCA (with explained variance) or t-SNE (after PCA to 50 dims)."""
    from sklearn.decomposition import PCA

    if method == "pca":
        pca = PCA(n_components=2, random_state=seed)
        points = pca.fit_transform(features)
        explained = pca.explained_variance_ratio_
        return points, [f"PC {index + 1} ({share:.1%} of variance)" for index, share in enumerate(explained)]
    from sklearn.manifold import TSNE

    if features.shape[1] > 50 and len(features) > 50:
        features = PCA(n_components=50, random_state=seed).fit_transform(features)
    perplexity = min(30.0, max(1.0, (len(features) - 1) / 3))
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)
    return points, ["t-SNE 1", "t-SNE 2"]


def saliency_choice(labels, probabilities, count):
    """Round-robin over classes, each class's images in order of confidence in their true label."""
    ranked = []
    for number in range(len(EMOTIONS)):
        rows = np.flatnonzero(labels == number)
        ranked.append(rows[np.argsort(-probabilities[rows, number], kind="stable")])
    chosen = []
    for rank in range(max(map(len, ranked), default=0)):
        chosen += [rows[rank] for rows in ranked if rank < len(rows)]
    return np.array(chosen[:count], dtype=int)


def confident_mistakes(labels, probabilities, count):
    """Indices of wrong predictions, the most confident first."""
    wrong = np.flatnonzero(probabilities.argmax(axis=1) != labels)
    order = np.argsort(-probabilities[wrong].max(axis=1), kind="stable")
    return wrong[order][:count]


# ---------------------------------------------------------------- reports


@dataclass
class Run:
    """What report_plots needs from a run directory; history is None before the first epoch."""

    path: Path
    config: dict
    history: pd.DataFrame | None
    metrics: dict
    label: str = ""

    @property
    def name(self):
        """The label given (bench/sweep.py names runs by size), else the run directory's name."""
        return self.label or self.path.name

    @property
    def family(self):
        return self.config.get("family") or self.metrics.get("family") or self.name.split("-")[0]

    @property
    def model_path(self):
        return self.path / "best.keras"

    def best_val_accuracy(self):
        """From metrics.json once the run has ended, else from its history so far."""
        if "best_val_accuracy" in self.metrics:
            return float(self.metrics["best_val_accuracy"])
        best = best_row(self.history)
        return None if best is None else float(best["val_accuracy"])

    def best_epoch(self):
        if "best_epoch" in self.metrics:
            return int(self.metrics["best_epoch"])
        best = best_row(self.history)
        return None if best is None else int(best["epoch"])


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None


def load_run(path):
    path = Path(path)
    if not path.is_dir():
        raise UserError(
            f"{path}: no such run directory"
            if not path.exists()
            else f"{path}: not a run directory (give its folder, e.g. runs/cnn-…)"
        )
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a run directory (no config.json)")
    history = None
    if (path / "history.csv").is_file() and (path / "history.csv").stat().st_size:
        history = pd.read_csv(path / "history.csv")
    metrics = _read_json(path / "metrics.json") if (path / "metrics.json").is_file() else {}
    return Run(path, _read_json(path / "config.json"), history, metrics)


def distinct_names(runs):
    """The runs, each named so that no two share an output folder or a legend entry: the directory's
    name, with as many of its parent folders as it takes where names collide (bench.gpu_session starts
    its runs in the same second under different folders); a directory given twice counts once."""
    unique = {run.path.resolve(): run for run in runs}
    parts = [path.parts for path in unique]
    depth = [1] * len(parts)
    while True:
        names = [run.label or "/".join(parts[index][-depth[index] :]) for index, run in enumerate(unique.values())]
        clashing = [
            index
            for index, run in enumerate(unique.values())
            if names.count(names[index]) > 1 and not run.label and depth[index] < len(parts[index]) - 1
        ]
        if not clashing:
            return [replace(run, label=name) for run, name in zip(unique.values(), names)]
        for index in clashing:
            depth[index] += 1


def find_runs(runs_dir):
    """Every run directory (one with a config.json) under runs_dir, or a folder deeper as a sweep keeps
    them (runs/sweep/<size>/<run>), in name order."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir}: no such runs directory; name run directories explicitly")
    found = sorted(
        run
        for child in runs_dir.iterdir()
        if child.is_dir()
        for run in ([child] if (child / "config.json").is_file() else _readable_folders(child))
        if (run / "config.json").is_file()
    )
    if not found:
        raise UserError(f"{runs_dir}: no run directories (with a config.json) inside")
    return found


def _readable_folders(folder):
    """The folders in a folder, none if it cannot be read (a root-owned lost+found where runs/ is a mount)."""
    try:
        return [child for child in folder.iterdir() if child.is_dir()]
    except OSError:
        return []


@dataclass
class Options:
    """Settings shared by every run's report; report_plots.py's flags fill them."""

    data: str | None = None
    split: str = "validation"
    max_images: int | None = None
    saliency_images: int = len(EMOTIONS)
    filters: int = 16
    layer: str | None = None
    steps: int = 40
    face: int = 0
    mistakes: int = 16
    embedding_images: int = 2000
    tsne: bool = False
    seed: int = 0
    batch_size: int = 256


def data_path(run, data=None):
    """--data, else the run's config 'data', found from where training ran if it was relative."""
    if data is not None:
        return Path(data)
    if "data" not in run.config:
        raise UserError(f"{run.path / 'config.json'}: has no 'data'; pass --data")
    found = recorded_path(run.config["data"], run.path, run.config.get("run_dir", "runs/x"), run.config.get("cwd"))
    if found is None:
        raise UserError(f"{run.path}: its data file {run.config['data']} is not found from here; pass --data")
    return found


class RunCache:
    """Parse each CSV once, recreate each split (data, val_split, split seed, equalize) once, load each model once."""

    def __init__(self):
        self.splits = {}
        self.digests = {}
        self.models = {}

    def model(self, run):
        if run.path not in self.models:
            self.models[run.path] = evaluation.load_model(run.model_path)
        return self.models[run.path]

    def _trained_on(self, run, path, key, splits):
        """Whether the run trained on this data: by the hash of its validation faces where it recorded
        one (a packed copy of its CSV has the same faces), else by the file's content."""
        recorded = run.config.get("validation_digest")
        if recorded is not None and "validation" in splits:
            if key not in self.digests:
                self.digests[key] = faces_digest(splits["validation"].pixels)
            return self.digests[key] == recorded
        if key[0] not in self.digests:
            self.digests[key[0]] = file_digest(path)
        return run.config.get("data_digest", self.digests[key[0]]) == self.digests[key[0]]

    def get(self, run, options, log=print):
        path = data_path(run, options.data)
        key = (str(path.resolve()), run.config.get("val_split", 0.1), split_seed(run.config), equalize_mode(run.config))
        if key not in self.splits:
            self.splits[key] = load_splits(path, *key[1:])
        splits = self.splits[key]
        if not self._trained_on(run, path, key, splits):
            log(
                f"warning: {path} is not the file {run.name} was trained on; "
                f"its {options.split} split may include training images"
            )
        if options.split not in splits:
            raise UserError(f"{path}: has no '{options.split}' split (it has {', '.join(splits)})")
        split = splits[options.split]
        if split.labels is None:
            raise UserError(f"{path}: the '{options.split}' split has no labels to compare with")
        if options.max_images is not None:
            split = Split(
                split.pixels[: options.max_images], split.labels[: options.max_images], split.ids[: options.max_images]
            )
        return path, split


PREDICTION_FIGURES = ("confusion", "mistakes", "saliency", "features")
CONV_FIGURES = ("filters", "activations")
MODEL_FIGURES = ("complexity", *PREDICTION_FIGURES, *CONV_FIGURES)


def report_run(run, out_dir, figures, options=None, cache=None, log=print):
    """Every per-run figure and table asked for, into out_dir/<run name>/; returns the paths."""
    options = options or Options()
    cache = cache or RunCache()
    target = Path(out_dir) / run.name
    written = []

    def wrote(paths):
        for path in paths:
            written.append(path)
            log(f"wrote {path}")

    if "history" in figures:
        if run.history is None or not len(run.history):
            log(f"{run.name}: no history.csv yet, no history figure")
        else:
            title = f"{run.name}: training history"
            wrote([plot_history(run.history, target / "history.png", title, run.best_epoch())])
    wanted = [figure for figure in MODEL_FIGURES if figure in figures]
    if not wanted:
        return written
    if not run.model_path.is_file():
        log(f"{run.name}: no best.keras yet, skipping {', '.join(wanted)}")
        return written
    model = cache.model(run)
    if "complexity" in figures:
        table = complexity.with_total(complexity.layer_table(model))
        wrote(write_table(table, target / "complexity"))
        wrote([plot_complexity(table.iloc[:-1], target / "complexity.png", f"{run.name} ({model.name})")])
    layer = pick_conv_layer(model, options.layer) if set(CONV_FIGURES) & set(figures) else None
    if layer is None and set(CONV_FIGURES) & set(figures):
        log(f"{run.name}: model has no convolution layers, no filter or activation figures")
    if layer is not None and "filters" in figures:
        wrote([_filters_figure(model, run, layer, options, target)])
    if not set(PREDICTION_FIGURES) & set(figures) and (layer is None or "activations" not in figures):
        return written
    data, split = cache.get(run, options, log)
    if layer is not None and "activations" in figures:
        wrote([_activations_figure(model, run, layer, split, options, target)])
    if set(PREDICTION_FIGURES) & set(figures):
        source = f"{data.name} {options.split} split"
        wrote(_prediction_figures(model, run, source, split, figures, options, target, log))
    return written


def _prediction_figures(model, run, source, split, figures, options, target, log=print):
    paths = []
    probabilities, features = predict(model, split.pixels, "features" in figures, options.batch_size, run.model_path)
    predictions = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    if "confusion" in figures:
        matrix = evaluation.confusion_frame(split.labels, predictions)
        write_text(output_dir(target) / "confusion_matrix.csv", matrix.to_csv())
        paths.append(target / "confusion_matrix.csv")
        paths += write_table(classification_table(split.labels, predictions), target / "classification_report")
        paths.append(plot_confusion(matrix.to_numpy(), target / "confusion.png", f"{run.name} on the {source}"))
    if "mistakes" in figures:
        chosen = confident_mistakes(split.labels, probabilities, options.mistakes)
        title = f"{run.name}: most confident mistakes on the {source}"
        paths.append(
            plot_mistakes(
                split.pixels[chosen],
                split.labels[chosen],
                predictions[chosen],
                confidence[chosen],
                target / "mistakes.png",
                title,
            )
        )
    if "saliency" in figures:
        chosen = saliency_choice(split.labels, probabilities, options.saliency_images)
        maps = saliency_maps(model, split.pixels[chosen], predictions[chosen])
        paths.append(
            plot_saliency(
                split.pixels[chosen], maps, split.labels[chosen], predictions[chosen], confidence[chosen],
                target / "saliency.png", f"{run.name}: saliency maps on the {source}",
            )
        )
    embedded = 0 if features is None else min(len(features), options.embedding_images)
    if "features" in figures and embedded < 3:
        log(f"{run.name}: {embedded} images are too few for an embedding figure")
    elif "features" in figures:
        sample = np.sort(np.random.default_rng(options.seed).permutation(len(features))[: options.embedding_images])
        for method, label in (("pca", "PCA"), ("tsne", "t-SNE"))[: 2 if options.tsne else 1]:
            points, names = embed(features[sample], method, options.seed)
            title = f"{run.name}: penultimate features of {len(sample):,} {options.split} images ({label})"
            paths.append(plot_embedding(points, split.labels[sample], target / f"embedding_{method}.png", title, names))
    return paths


def _filters_figure(model, run, layer, options, target):
    patterns, filters, flat = filter_patterns(model, layer, options.filters, options.steps, seed=options.seed)
    unit = _unit(model, layer)
    title = f"{run.name}: {layer}, images that maximize each {unit} ({options.steps} gradient-ascent steps from gray)"
    return plot_filters(patterns, filters, target / f"filters_{layer}.png", title, flat, unit)


def _activations_figure(model, run, layer, split, options, target):
    check_face(split, options)
    face = split.pixels[options.face]
    maps = layer_activations(model, layer, face)[..., : options.filters]
    title = (
        f"{run.name}: {layer} activation maps ({maps.shape[0]}x{maps.shape[1]}) "
        f"for {options.split} image {options.face}"
    )
    path = target / f"activations_{layer}.png"
    return plot_activations(face, maps, path, title, split.labels[options.face], _unit(model, layer))


def run_status(metrics, epochs=0, lock=None):
    """How a run ended, from its metrics.json and its training lock (callbacks.lock_state): without
    metrics.json, or one that counts fewer epochs than the history, it is running or was killed, which the
    lock tells apart (runs from before it have none)."""
    if not metrics or epochs > metrics.get("epochs_run", epochs):
        return lock or "running or killed"
    if metrics.get("diverged_epoch") is not None:
        return "diverged"
    return "interrupted" if metrics.get("interrupted") else "finished"


def run_summary(runs):
    """One row per run with a validation score: family, parameters, best validation accuracy, and
    whether it finished (an interrupted run's score is not its last word)."""
    rows = []
    for run in runs:
        accuracy = run.best_val_accuracy()
        parameters = run.metrics.get("parameters", run.config.get("parameters"))
        if accuracy is None or parameters is None:
            continue
        rows.append(
            {
                "run": run.name,
                "family": run.family,
                "parameters": int(parameters),
                "best_val_accuracy": accuracy,
                "best_epoch": run.best_epoch(),
                "epochs_run": len(run.history) if run.history is not None else 0,
                "status": run_status(
                    run.metrics, len(run.history) if run.history is not None else 0, lock_state(run.path)
                ),
            }
        )
    columns = ["run", "family", "parameters", "best_val_accuracy", "best_epoch", "epochs_run", "status"]
    return pd.DataFrame(rows, columns=columns)


def report_comparison(runs, out_dir, log=print, title=SIZE_TITLE):
    """Cross-run figures into out_dir: parameters vs accuracy, overlaid histories, a summary table."""
    out_dir = Path(out_dir)
    written = []
    summary = run_summary(runs)
    if summary.empty:
        log("no run has a validation accuracy yet, no comparison figures")
        return written
    written += write_table(summary, out_dir / "runs")
    written.append(plot_parameters_vs_accuracy(summary, out_dir / "parameters_vs_accuracy.png", title))
    histories = {run.name: run.history for run in runs if run.history is not None and len(run.history)}
    if histories:
        written.append(plot_histories(histories, out_dir / "histories.png"))
    else:
        log("no run has a history.csv yet, no histories figure")
    for path in written:
        log(f"wrote {path}")
    return written
