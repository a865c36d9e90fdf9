"""Teachers' probabilities for distillation (--teacher), from models or from a file saved once.

    python -m fersuite.teachers models/cnn.keras models/cnn_dropout.keras --data train.csv.xz --out teachers.npz

A `.npz` written so can stand in for its models in any --teacher list: a run on another machine then
needs neither the teachers' files nor the minutes their predictions take (five 5.9M CNNs on the
28,709 faces of train.csv.xz and their mirrors: 37 minutes on a 2-core CPU, a 0.96 MB file). Each
face is found by a hash of its pixels, so the file serves any split of the data it was made from,
and a face it lacks is an error.
"""

import argparse
import hashlib
from pathlib import Path

import numpy as np

from fersuite import EMOTIONS, cli, evaluation
from fersuite.atomic import atomic_path
from fersuite.data import check_readable_file, load_table, report_equalized
from fersuite.errors import UserError

TTA = "flip"  # each face and its mirror, as training's augmentation shows both


def face_keys(pixels):
    """A 64-bit hash of each face's pixels: the same face gets the same key in any file or split."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(face.tobytes(), digest_size=8).digest(), "little") for face in pixels],
        dtype=np.uint64,
    )


def save(path, pixels, probabilities, sources):
    with atomic_path(path, suffix=".npz") as temporary:
        np.savez_compressed(
            temporary,
            keys=face_keys(pixels),
            probabilities=probabilities.astype("float32"),
            sources=np.array([str(source) for source in sources]),
        )


def _load(path):
    """(keys, probabilities, the models they average) of a saved file."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            keys, probabilities, sources = arrays["keys"], arrays["probabilities"], arrays["sources"]
    except (OSError, EOFError, ValueError, KeyError) as error:
        raise UserError(
            f"{path}: not a teachers' file of python -m fersuite.teachers ({type(error).__name__})"
        ) from None
    if probabilities.shape != (len(keys), len(EMOTIONS)):
        raise UserError(
            f"{path}: probabilities of shape {probabilities.shape}, expected ({len(keys)}, {len(EMOTIONS)})"
        )
    return keys, probabilities, sources.tolist()


def saved_probabilities(path, pixels):
    """The saved probabilities of these faces, in their order, and how many models they average."""
    keys, probabilities, sources = _load(check_readable_file(path))
    row_of = dict(zip(keys.tolist(), range(len(keys))))
    rows = [row_of.get(key) for key in face_keys(pixels).tolist()]
    missing = sum(row is None for row in rows)
    if missing:
        raise UserError(
            f"{path}: has no probabilities for {missing:,} of the {len(pixels):,} training faces; "
            "it was made from other data"
        )
    return probabilities[np.array(rows)], len(sources)


def probabilities(paths, pixels, verbose=0):
    """The teachers' mean probabilities for each face and its mirror; a saved file counts as the
    models it averaged, so `a.keras b.keras` and a file made from them give the same targets."""
    total, models = np.zeros((len(pixels), len(EMOTIONS))), 0
    files = [path for path in paths if str(path).endswith(".npz")]
    for path in files:
        saved, count = saved_probabilities(path, pixels)
        total, models = total + saved * count, models + count
    network_paths = [path for path in paths if path not in files]
    networks = [evaluation.load_model(path) for path in network_paths]
    if networks:
        mean = evaluation.predict_probabilities(networks, pixels, tta=TTA, verbose=verbose, names=network_paths)
        total, models = total + mean * len(networks), models + len(networks)
    return total / models


def main(argv=None):
    parser = cli.Parser(
        prog="python -m fersuite.teachers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help=".keras teachers (or saved .npz files), averaged")
    parser.add_argument("--data", required=True, help="the training CSV (or packed .npz.xz) the student will use")
    parser.add_argument("--out", required=True, help="where to write the probabilities (.npz)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    cli.add_equalize(parser)
    args = parser.parse_args(argv)
    if not args.out.endswith(".npz"):
        parser.error("--out must end in .npz")
    cli.check_output(args.out, args.force, inputs=[args.data, *args.models])
    table = load_table(args.data, equalize=args.equalize)
    report_equalized(args.data, table.equalized_as_read, args.equalize)
    print(f"{len(args.models)} teacher file(s) on {len(table.pixels):,} faces and their mirrors")
    mean = probabilities(args.models, table.pixels, verbose=cli.progress())
    labeled = table.labels >= 0
    if labeled.any():
        print(
            "teachers' accuracy on the labeled faces (training faces included): "
            f"{evaluation.accuracy(table.labels[labeled], mean[labeled]):.4f}"
        )
    sources = [source for path in args.models for source in (_load(path)[2] if path.endswith(".npz") else [path])]
    save(args.out, table.pixels, mean, sources)
    print(f"wrote {args.out}: {Path(args.out).stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    cli.quiet_backend_logs()
    cli.run(main)
