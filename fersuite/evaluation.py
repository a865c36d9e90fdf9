"""Predictions (with test-time augmentation and ensembles), accuracy, confusion matrix, submission."""

import bz2
import gzip
import io
import json
import lzma
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from fersuite import EMOTIONS, INPUT_SHAPE
from fersuite.atomic import atomic_path, write_text
from fersuite.errors import UserError

TTA_CHOICES = ("none", "flip", "crops", "zoom")
TTA_ZOOMS = (0.9, 1.1)


def load_model(path):
    """Load a `.keras` file and check it takes 48x48x1 faces and outputs 7 emotions."""
    import keras

    from fersuite import augment, quantize  # noqa: F401  register the custom layers
    from fersuite.data import check_readable_file

    path = check_readable_file(path)
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001  Keras raises many types for a file that is not a model
        named = "" if Path(path).suffix == ".keras" else "; Keras goes by the name: a .keras file must keep it"
        raise UserError(f"{path}: not a readable Keras model ({type(error).__name__}){named}") from None
    input_shape = tuple(model.input_shape[1:]) if hasattr(model, "input_shape") else None
    if input_shape != INPUT_SHAPE:
        raise UserError(f"{path}: model takes input {input_shape}, expected {INPUT_SHAPE}")
    if model.output_shape[-1] != len(EMOTIONS):
        raise UserError(f"{path}: model outputs {model.output_shape[-1]} classes, expected {len(EMOTIONS)}")
    return model


def run_config(model_path):
    """The config.json of the training run a model file belongs to (RUN/best.keras); {} for a file
    outside a run, such as a shipped model."""
    config_path = Path(model_path).parent / "config.json"
    try:
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) and "family" in config else {}


def trained_setting(paths, read, flag):
    """A data setting as the models' runs trained with it (`read(config)` on the config.json beside a
    run's best.keras; a file with none, such as a shipped model, gives `read({})`, the default). Models
    that differ are refused: no one setting reads the faces as each of them was trained."""
    found = {str(path): read(run_config(path)) for path in paths}
    if len(set(found.values())) > 1:
        trained = ", ".join(f"{value} ({path})" for path, value in found.items())
        raise UserError(f"the models were trained with different {flag}: {trained}; give {flag}")
    return next(iter(found.values()))


def zoomed(pixels, factor):
    """Faces rescaled about their centre as training's zoom does it (input coordinates × factor, so
    0.9 brings the face 10 % closer), borders filled with the nearest pixel as in training."""
    from keras import ops

    height, width = pixels.shape[1:3]
    center_x, center_y = (width - 1) / 2.0, (height - 1) / 2.0
    transform = np.array(
        [factor, 0, center_x * (1 - factor), 0, factor, center_y * (1 - factor), 0, 0], dtype="float32"
    )
    transforms = np.tile(transform, (len(pixels), 1))
    return ops.convert_to_numpy(
        ops.image.affine_transform(
            pixels.astype("float32"), transforms, fill_mode="nearest", data_format="channels_last"
        )
    )


def tta_views(pixels, tta="none"):
    """Views averaged at test time: the image and its mirror (flip); with crops, 4 two-pixel diagonal
    shifts; with zoom, the image and its mirror also 10 % closer and 10 % farther (the ends of
    training's zoom range)."""
    if tta == "none":
        return [pixels]
    views = [pixels, pixels[:, :, ::-1]]
    if tta == "crops":
        height, width = pixels.shape[1:3]
        padded = np.pad(pixels, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
        for dy, dx in ((0, 0), (0, 4), (4, 0), (4, 4)):
            views.append(padded[:, dy : dy + height, dx : dx + width])
    if tta == "zoom":
        for factor in TTA_ZOOMS:
            view = zoomed(pixels, factor)
            views += [view, view[:, :, ::-1]]
    return views


def predict_probabilities(models, pixels, tta="none", batch_size=256, verbose=0, names=None):
    """Mean softmax over models and TTA views: the ensemble's class probabilities.

    The views go through each model as one stacked array: one progress bar per model, not per view,
    headed (verbose) by the model's name in `names` so that a user sees which of an ensemble runs."""
    from keras import ops

    views = tta_views(pixels, tta)
    stacked = np.concatenate(views).astype("float32")
    total = np.zeros((len(views), len(pixels), len(EMOTIONS)), dtype=np.float64)
    for number, model in enumerate(models):
        if verbose:
            print(
                f"{names[number] if names else model.name} ({number + 1} of {len(models)}): {len(stacked):,} views",
                flush=True,
            )
        if len(stacked) <= batch_size:  # predict() costs tens of ms per call before any work
            outputs = ops.convert_to_numpy(model.predict_on_batch(stacked))
        else:
            outputs = model.predict(stacked, batch_size=batch_size, verbose=verbose)
        total += checked_probabilities(outputs, model, names[number] if names else None).reshape(total.shape)
    return total.mean(axis=0) / len(models)


def checked_probabilities(outputs, model, name=None):
    """A model's outputs, refused unless each row is a probability distribution: scores without a softmax
    would outweigh every other model of an ensemble and print as 'confidence' 318."""
    outputs = np.asarray(outputs)
    if len(outputs) and (outputs.min() < -1e-3 or np.abs(outputs.sum(axis=1) - 1).max() > 1e-2):
        raise UserError(
            f"{name or model.name}: outputs scores, not probabilities (its last layer has no softmax); "
            "add one, e.g. keras.layers.Softmax(), and save it again"
        )
    return outputs


def accuracy(labels, probabilities):
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def submission_rows(table):
    """The rows a submission covers: fer2013.csv's PublicTest and PrivateTest rows, every row of the others."""
    return table.usage != "Training" if table.layout == "fer2013" else slice(None)


def labeled_scores(table, probabilities):
    """(name, accuracy, images) for the submission rows that have labels: fer2013.csv's Kaggle
    leaderboards (public = PublicTest, private = PrivateTest), a labeled CSV as a whole, none for test.csv."""
    rows = submission_rows(table)
    if table.layout == "labeled":
        return [("accuracy", accuracy(table.labels, probabilities), len(table.labels))]
    scores = []
    if table.layout == "fer2013":
        for usage, board in (("PublicTest", "public"), ("PrivateTest", "private")):
            chosen = table.usage[rows] == usage
            if chosen.any():
                scores.append(
                    (
                        f"{board} ({usage}) accuracy",
                        accuracy(table.labels[rows][chosen], probabilities[chosen]),
                        int(chosen.sum()),
                    )
                )
    return scores


def each_and_ensemble(models, pixels, tta="none", batch_size=256, names=None):
    """Each model's probabilities and their mean, the ensemble's: how --validation compares them."""
    names = names or [model.name for model in models]
    each = [predict_probabilities([model], pixels, tta, batch_size, names=[name]) for model, name in zip(models, names)]
    return each, np.mean(each, axis=0)


def confusion(labels, predictions):
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(labels, predictions, labels=range(len(EMOTIONS)))


def confusion_frame(labels, predictions):
    return pd.DataFrame(confusion(labels, predictions), index=EMOTIONS, columns=EMOTIONS)


def classification_report(labels, predictions):
    from sklearn.metrics import classification_report as report

    return report(
        labels, predictions, labels=range(len(EMOTIONS)), target_names=EMOTIONS, zero_division=0, output_dict=True
    )


def submission_csv(ids, probabilities):
    """Kaggle format: `id,label`, one row per test image."""
    frame = pd.DataFrame({"id": ids, "label": np.argmax(probabilities, axis=1)})
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue()


COMPRESSED = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}


def write_submission(path, ids, probabilities):
    """The submission, compressed as its name says (.gz, .bz2, .xz, or .zip holding one CSV), as Kaggle
    and the suite's reader take them: a .gz name over plain text would be refused on upload."""
    text = submission_csv(ids, probabilities)
    suffix = Path(path).suffix.lower()
    if suffix not in (*COMPRESSED, ".zip"):
        write_text(path, text)
        return
    if suffix == ".zip":
        buffer = io.BytesIO()
        inner = Path(path).stem if Path(path).stem.lower().endswith(".csv") else f"{Path(path).stem}.csv"
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(inner, text)
        payload = buffer.getvalue()
    else:
        payload = COMPRESSED[suffix](text.encode())
    with atomic_path(path) as temporary:
        temporary.write_bytes(payload)
