"""Write outputs under a temporary name and rename, so a crash never leaves half a file."""

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


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
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path, text):
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_json(path, data):
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def save_model(model, path, include_optimizer=True):
    """Save a `.keras` file atomically (Keras insists the name ends in .keras).

    Without the optimizer (Adam keeps two more copies of every weight) a file is a third the size:
    what prediction and shipping need; resuming needs the optimizer.
    """
    if not include_optimizer:
        lean = model.__class__.from_config(model.get_config())
        lean.set_weights(model.get_weights())
        model = lean
    with atomic_path(path, suffix=".keras") as temporary:
        model.save(temporary)


def save_figure(figure, path, **options):
    with atomic_path(path) as temporary:
        figure.savefig(temporary, **options)
