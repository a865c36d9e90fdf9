"""Histogram equalization: the team's FER2013 copy has it, a raw fer2013.csv or a photo does not.

Models trained on equalized faces lose accuracy on raw ones: on the validation faces given a random
gamma and contrast each (a stand-in for raw faces), the shipped ensemble fell from 0.7224 to 0.6660
(zoom TTA) and the DNN from 0.55 to 0.37; equalized as read here, they score 0.7165. So every face
the suite reads is equalized unless it already is. The team's copy is left as it is: equalized again
by OpenCV's formula, its pixels move by 2.6 grey levels on average (it was not made by that formula)
and the ensemble loses 0.6 points.

A file's faces are judged together (a face alone is a poor judge: 12-15 % of the copy's faces look
unequalized on their own), an image file on its own; --equalize always|never overrides the judgement."""

import numpy as np

LEVELS = 256
# Mean distance, in grey levels, between a face's sorted pixels and evenly spread levels, under which
# faces count as equalized: the team's copy has a median of 1.6, the stand-in for raw faces 31.8.
FLAT = 10.0
SAMPLE = 500  # faces, evenly spaced through it, that a whole file is judged by
CHUNK = 4096  # faces equalized at a time, to bound the memory of the per-face histograms
MODES = ("auto", "always", "never")


def flatness(faces):
    """Per face: mean |sorted pixel - the level it would have in a perfectly flat histogram|."""
    flat = np.sort(faces.reshape(len(faces), -1), axis=1).astype(np.float32)
    even = (np.arange(flat.shape[1], dtype=np.float32) + 0.5) * (LEVELS - 1) / flat.shape[1]
    return np.abs(flat - even).mean(axis=1)


def is_equalized(faces):
    """Whether a set of faces (a file's) already has equalized histograms, judged by up to SAMPLE faces
    spread through it, so raw rows appended to an equalized file count too."""
    if len(faces) == 0:
        return True
    sample = faces[np.unique(np.linspace(0, len(faces) - 1, min(SAMPLE, len(faces))).astype(int))]
    return float(np.median(flatness(sample))) < FLAT


def equalize(faces):
    """OpenCV's equalizeHist, per face: level v -> round(255 (cdf(v) - cdf(darkest)) / (pixels - cdf(darkest)));
    a face of one level stays as it is."""
    out = np.empty_like(faces)
    for start in range(0, len(faces), CHUNK):
        chunk = faces[start : start + CHUNK]
        flat = chunk.reshape(len(chunk), -1).astype(np.intp)
        count, size = flat.shape
        offsets = LEVELS * np.arange(count)[:, None]
        cdf = np.bincount((flat + offsets).ravel(), minlength=LEVELS * count).reshape(count, LEVELS).cumsum(axis=1)
        darkest = cdf[np.arange(count), flat.min(axis=1)][:, None]
        spread = size - darkest
        lut = np.round((cdf - darkest) * (LEVELS - 1) / np.maximum(spread, 1))
        lut = np.where(spread > 0, lut, np.arange(LEVELS)).clip(0, LEVELS - 1).astype(np.uint8)
        out[start : start + CHUNK] = np.take_along_axis(lut, flat, axis=1).reshape(chunk.shape)
    return out


def needs_equalizing(faces, mode="auto"):
    """Whether `mode` equalizes these faces: always, never, or (auto) unless they already are."""
    if mode not in MODES:
        raise ValueError(f"equalize mode {mode!r}, expected one of {MODES}")
    return mode == "always" or (mode == "auto" and not is_equalized(faces))


def as_trained(faces, mode="auto"):
    """The faces as the models saw them in training: equalized (mode auto: unless they already are)."""
    return equalize(faces) if needs_equalizing(faces, mode) else faces
