"""Write outputs under a temporary name and rename, so a crash never leaves half a file."""

import io
import json
import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.stem}-", suffix=suffix, dir=path.parent
    )
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~UMASK)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _umask():
    """The process's umask; reading it means setting it, so it is read once, before any thread starts."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()


def write_text(path, text):
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_json(path, data):
    """Keys in the order they were set, not sorted: per-emotion figures then read in label order."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def save_model(model, path, include_optimizer=True, float16=False, entries=None):
    """Save a `.keras` file atomically (Keras insists the name ends in .keras).

    Without the optimizer (Adam keeps two more copies of every weight) a file is a third the size:
    what prediction and shipping need; resuming needs the optimizer. float16 halves it again
    for shipping: keras.saving.load_model casts the stored values back into float32 variables.
    entries: more files for the archive, {name: text}; Keras's loader reads only its own, and what
    must match the weights (a run's resume state) is then replaced together with them.
    """
    if not include_optimizer:
        lean = model.__class__.from_config(model.get_config())
        lean.set_weights(model.get_weights())
        model = lean
    with atomic_path(path, suffix=".keras") as temporary:
        model.save(temporary)
        if float16:
            _store_weights_as_float16(temporary)
        with zipfile.ZipFile(temporary, "a", zipfile.ZIP_DEFLATED) as archive:
            for name, text in (entries or {}).items():
                archive.writestr(name, text)


def _fits_float16(values):
    """A float32 array float16 can hold: not one whose values pass 65,504, such as the scale
    (127 / max |w|) of an int8 Dense unit whose weights are all below 0.002, which would become inf."""
    return values.dtype == np.float32 and not np.abs(values).max(initial=0) > np.finfo(np.float16).max


def _store_weights_as_float16(path):
    """Rewrite the archive's model.weights.h5 with every float32 array stored as float16, except
    the few whose values float16 cannot hold."""
    import h5py

    def convert(source):
        converted = io.BytesIO()
        with h5py.File(io.BytesIO(source), "r") as old, h5py.File(converted, "w") as new:
            new.attrs.update(old.attrs)

            def copy(name, item):
                if isinstance(item, h5py.Dataset):
                    values = item[()]
                    new.create_dataset(name, data=values.astype(np.float16) if _fits_float16(values) else values)
                else:
                    new.require_group(name)
                new[name].attrs.update(item.attrs)

            old.visititems(copy)
        return converted.getvalue()

    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info.filename)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in entries:
            archive.writestr(info, convert(data) if info.filename == "model.weights.h5" else data)


def save_figure(figure, path, **options):
    with atomic_path(path) as temporary:
        figure.savefig(temporary, **options)
