"""Read FER2013 CSVs (original and Kaggle-homework layouts) and image files into uint8 arrays.

Layouts, told apart by the header's columns (in any order):
  fer2013.csv       emotion,pixels,Usage   Training/PublicTest/PrivateTest -> train/validation/test
  homework train    label,feature          seeded stratified train/validation split (emotion,pixels too)
  homework test     id,feature             unlabeled; ids go into the submission (pixels alone: row numbers)
Faces that are not histogram-equalized (a raw fer2013.csv, photos) are equalized as they are read
(fersuite.contrast: a file's faces judged together, each image file on its own; --equalize overrides).
"""

import gzip
import hashlib
import io
import lzma
import os
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from fersuite import EMOTIONS, IMAGE_SIZE, contrast
from fersuite.atomic import atomic_path
from fersuite.errors import UserError

PIXELS_PER_IMAGE = IMAGE_SIZE * IMAGE_SIZE
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}
LAYOUTS = {  # columns in any order (Kaggle's icml_face_data.csv has emotion,Usage,pixels)
    ("emotion", "pixels", "Usage"): "fer2013",
    ("emotion", "pixels"): "labeled",
    ("label", "feature"): "labeled",
    ("id", "feature"): "unlabeled",
    ("pixels",): "unlabeled",  # the competition's test.csv: ids are the row numbers
}
ARCHIVES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")  # Kaggle's fer2013.tar.gz holds a folder
CACHE_VERSION = "4"


@dataclass
class Split:
    """Images of one split: pixels (n, 48, 48, 1) uint8, labels (n,) or None, ids (n,) str."""

    pixels: np.ndarray
    labels: np.ndarray | None
    ids: np.ndarray

    def __len__(self):
        return len(self.pixels)


@dataclass
class Table:
    """A whole parsed CSV; labels are -1 and usage empty where the layout has none."""

    pixels: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    usage: np.ndarray
    layout: str
    equalized_as_read: bool = False  # by --equalize always, or by auto judging the faces raw


def report_equalized(path, equalized_as_read, equalize, log=print):
    """Says so when --equalize auto judged a file's faces raw and equalized them: the judgement decides
    what the model sees, and a user should not have to trust it blindly."""
    if equalize == "auto" and equalized_as_read:
        log(
            f"{path}: its faces are not histogram-equalized (judged raw); equalized as read, as the suite's "
            "models expect (--equalize never keeps them as they are)"
        )


def file_digest(path):
    """Content hash (not name or mtime), so a cache or a run's config pins the exact data."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def faces_digest(pixels):
    """One hash of a split's faces in their order: runs with the same one validated on the same faces,
    whichever file (CSV or packed) or layout they came from."""
    return hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=16).hexdigest()


def check_readable_file(path):
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty")
    try:
        open(path, "rb").close()
    except OSError as error:
        raise UserError(f"{path}: cannot read the file ({error.strerror})") from None
    return path


def cache_dir():
    """FERSUITE_CACHE_DIR, unless unset or empty (an empty one would put the cache in the working folder)."""
    return Path(os.environ.get("FERSUITE_CACHE_DIR") or Path.home() / ".cache" / "fersuite")


# Each byte stored as its difference from the pixel above (one row back): 4 % smaller than from the
# pixel to the left on FER2013 (50.0 against 52.1 MB), and no slower to read; xz records the distance.
PACKED_FILTERS = [{"id": lzma.FILTER_DELTA, "dist": IMAGE_SIZE}, {"id": lzma.FILTER_LZMA2, "preset": 9}]


def is_packed(path):
    return Path(path).name.endswith((".npz", ".npz.xz"))


def pack_table(table, path):
    """A parsed table as uint8 .npz (+ xz with a delta filter): ~20% smaller than the .csv.xz,
    and loaded without parsing; how training rows travel to a GPU machine. It holds the faces as
    given: whether they are equalized is decided when it is loaded, as for a CSV."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        pixels=table.pixels,
        labels=table.labels,
        ids=table.ids,
        usage=table.usage,
        layout=np.array(table.layout),
        equalized_as_read=np.array(table.equalized_as_read),
    )
    payload = buffer.getvalue()
    if str(path).endswith(".xz"):
        payload = lzma.compress(payload, format=lzma.FORMAT_XZ, filters=PACKED_FILTERS)
    with atomic_path(path, suffix=".tmp") as temporary:
        temporary.write_bytes(payload)


def _load_packed(path):
    try:
        opener = lzma.open if str(path).endswith(".xz") else open
        with opener(path, "rb") as handle, np.load(io.BytesIO(handle.read()), allow_pickle=False) as arrays:
            fields = {name: arrays[name] for name in arrays.files}
        fields.pop("equalized", None)  # written by session 24's packs, whose faces were judged as they are now
        as_read = bool(fields.pop("equalized_as_read", False))  # packs from before session 29 lack it
        return Table(**{**fields, "layout": str(fields["layout"]), "equalized_as_read": as_read})
    except (OSError, EOFError, lzma.LZMAError, zipfile.BadZipFile, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: not a packed FER table, or truncated ({type(error).__name__})") from None


def with_contrast(table, equalize="auto"):
    """The table with its faces as the models are trained on them (fersuite.contrast.as_trained)."""
    pixels = contrast.as_trained(table.pixels, equalize)
    return table if pixels is table.pixels else replace(table, pixels=pixels, equalized_as_read=True)


def load_table(path, use_cache=True, equalize="auto"):
    """Parse a FER CSV once; later loads of the same content come from a uint8 .npz cache (one for
    each --equalize mode, as equalizing a whole raw fer2013.csv takes seconds)."""
    path = check_readable_file(path)
    if is_packed(path):
        return with_contrast(_load_packed(path), equalize)
    cached = cache_dir() / f"{file_digest(path)}-{equalize}-v{CACHE_VERSION}.npz" if use_cache else None
    if cached is not None and cached.exists():
        try:
            return _load_packed(cached)
        except UserError:
            pass  # a damaged cache entry is parsed again and replaced
    table = with_contrast(parse_csv(path), equalize)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            pack_table(table, cached)
        except OSError:
            pass  # an unwritable cache directory only costs speed
    return table


def _read_frame(path):
    if str(path).lower().endswith(ARCHIVES):
        raise UserError(f"{path}: an archive; extract the CSV from it first (tar xf {Path(path).name})")
    try:
        frame = pd.read_csv(
            path,
            dtype=str,
            encoding="utf-8-sig",
            keep_default_na=False,
            skipinitialspace=True,
        )
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty") from None
    except pd.errors.ParserError as error:
        raise UserError(f"{path}: malformed CSV: {str(error).strip()}") from None
    except (EOFError, lzma.LZMAError, gzip.BadGzipFile, zipfile.BadZipFile, OSError) as error:
        raise UserError(f"{path}: cannot read the file, truncated or corrupt ({error})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text CSV file") from None
    except (ValueError, ImportError) as error:  # a .zip of several files, a compression pandas cannot open here
        raise UserError(f"{path}: cannot read the file ({error}); give the CSV itself, plain, .gz or .xz") from None
    frame.columns = [str(column).strip() for column in frame.columns]
    frame = _without_trailing_field(path, frame)
    if len(frame.columns) > 1 and frame.columns[0] == "Unnamed: 0":  # the row numbers pandas' to_csv writes
        frame = frame.iloc[:, 1:]
    return frame


def _without_trailing_field(path, frame):
    """A comma ending each row (and perhaps the header) adds an empty last field: dropped. pandas makes
    the first field the row index when only the rows have it; data in that field is refused."""
    if isinstance(frame.index, pd.RangeIndex):
        last = frame.columns[-1] if len(frame.columns) else ""
        if last.startswith("Unnamed: ") and (frame[last] == "").all():  # the header ends with a comma too
            return frame.iloc[:, :-1]
        return frame
    if frame.index.nlevels > 1 or (frame.iloc[:, -1] != "").any():
        raise UserError(
            f"{path}: the rows have more fields than the header's {len(frame.columns)} ({','.join(frame.columns)})"
        )
    return pd.DataFrame(frame.reset_index().iloc[:, :-1].to_numpy(), columns=frame.columns)


def _layout(path, columns):
    layout = next((layout for names, layout in LAYOUTS.items() if sorted(names) == sorted(columns)), None)
    if layout is None:
        expected = " or ".join(",".join(names) for names in LAYOUTS)
        found = ",".join(columns)
        if any(len(column) > 40 for column in columns):  # the first line holds pixels: a data row, not a header
            raise UserError(
                f"{path}: the first line is a data row ('{found[:40]}...'); the file needs a header line, {expected}"
            )
        raise UserError(f"{path}: unexpected columns '{found}'; expected {expected}")
    return layout


def _line(row):
    """File line of a data row (line 1 is the header)."""
    return int(row) + 2


def parse_pixels(path, column, texts):
    """Turn n strings of 2,304 integers into (n, 48, 48, 1) uint8, naming the first bad line."""
    texts = texts.str.strip()
    counts = texts.str.count(" ").to_numpy() + 1
    for row in np.flatnonzero(counts != PIXELS_PER_IMAGE):
        counts[row] = len(texts.iat[row].split())
        if counts[row] != PIXELS_PER_IMAGE:
            raise UserError(
                f"{path}: line {_line(row)}, column '{column}': expected {PIXELS_PER_IMAGE} pixels, found {counts[row]}"
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            values = np.fromstring(" ".join(texts), dtype=np.int64, sep=" ")
    except ValueError:
        values = np.empty(0, dtype=np.int64)
    if values.size != len(texts) * PIXELS_PER_IMAGE:
        _raise_first_non_integer(path, column, texts)
    bad = np.flatnonzero((values < 0) | (values > 255))
    if bad.size:
        row, position = divmod(int(bad[0]), PIXELS_PER_IMAGE)
        raise UserError(
            f"{path}: line {_line(row)}, column '{column}': pixel {position + 1} is {values[bad[0]]}, outside 0..255"
        )
    return values.astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1)


def _raise_first_non_integer(path, column, texts):
    """Slow path, only taken on bad input: find the row and token that is not an integer."""
    for row, text in enumerate(texts):
        for position, token in enumerate(text.split()):
            if not token.lstrip("+-").isdigit():
                raise UserError(
                    f"{path}: line {_line(row)}, column '{column}': pixel {position + 1} is '{token}', not an integer"
                )
    for row, text in enumerate(texts):  # two spaces where a value was deleted hid the short row from the count
        if len(text.split()) != PIXELS_PER_IMAGE:
            raise UserError(
                f"{path}: line {_line(row)}, column '{column}': expected {PIXELS_PER_IMAGE} pixels, "
                f"found {len(text.split())}"
            )
    raise UserError(f"{path}: column '{column}': pixels could not be parsed")


def parse_labels(path, column, texts):
    labels = pd.to_numeric(texts.str.strip(), errors="coerce").to_numpy()
    bad = np.flatnonzero(~np.isin(labels, np.arange(len(EMOTIONS))))
    if bad.size:
        row = bad[0]
        raise UserError(
            f"{path}: line {_line(row)}, column '{column}': "
            f"label '{texts.iat[row]}' is not one of 0..{len(EMOTIONS) - 1}"
        )
    return labels.astype(np.int64)


def parse_csv(path):
    frame = _read_frame(path)
    layout = _layout(path, list(frame.columns))
    if frame.empty:
        raise UserError(f"{path}: header only, no data rows")
    pixel_column = "pixels" if "pixels" in frame else "feature"
    pixels = parse_pixels(path, pixel_column, frame[pixel_column])
    label_column = "emotion" if "emotion" in frame else "label"
    if label_column in frame:
        labels = parse_labels(path, label_column, frame[label_column])
    else:
        labels = np.full(len(frame), -1, dtype=np.int64)
    if "id" in frame:
        ids = frame["id"].str.strip().to_numpy(dtype=str)
        duplicated = frame["id"].str.strip().duplicated()
        if duplicated.any():
            row = int(np.flatnonzero(duplicated.to_numpy())[0])
            raise UserError(f"{path}: line {_line(row)}, column 'id': duplicate id '{ids[row]}'")
    else:
        ids = np.arange(len(frame)).astype(str)
    usage = frame["Usage"].str.strip().to_numpy(dtype=str) if "Usage" in frame else np.full(len(frame), "")
    unknown = np.flatnonzero(~np.isin(usage, list(USAGE_TO_SPLIT))) if layout == "fer2013" else []
    if len(unknown):
        row = unknown[0]
        raise UserError(
            f"{path}: line {_line(row)}, column 'Usage': '{usage[row]}' is not one of {', '.join(USAGE_TO_SPLIT)}"
        )
    return Table(pixels=pixels, labels=labels, ids=ids, usage=usage, layout=layout)


def split_table(table, val_split=0.1, seed=0):
    """Named splits: Usage where the file has it, else a seeded stratified validation split."""
    if table.layout == "unlabeled":
        return {"test": Split(table.pixels, None, table.ids)}
    if table.layout == "fer2013":
        return {
            name: Split(table.pixels[chosen], table.labels[chosen], table.ids[chosen])
            for usage, name in USAGE_TO_SPLIT.items()
            if (chosen := table.usage == usage).any()
        }
    if not 0 < val_split < 1:
        raise UserError(f"--val-split must be between 0 and 1 (exclusive), got {val_split}")
    if not 0 <= seed < 2**32:
        raise UserError(f"--split-seed must be in 0..2**32-1, got {seed}")
    train_rows, validation_rows = _stratified_split(table.labels, val_split, seed)
    if len(train_rows) == 0 or len(validation_rows) == 0:
        raise UserError(f"--val-split {val_split} leaves an empty split of {len(table.labels)} rows")
    return {
        name: Split(table.pixels[rows], table.labels[rows], table.ids[rows])
        for name, rows in (("train", train_rows), ("validation", validation_rows))
    }


def _stratified_split(labels, val_split, seed):
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels))
    try:
        return train_test_split(rows, test_size=val_split, random_state=seed, stratify=labels)
    except ValueError:
        try:
            return train_test_split(rows, test_size=val_split, random_state=seed)
        except ValueError:
            return rows, rows[:0]


def val_split(config):
    """A run's --val-split; 0.1, the default, for a file outside a run."""
    return config.get("val_split", 0.1)


def split_seed(config):
    """A run's validation-split seed; runs from before --split-seed used --seed for it."""
    return config.get("split_seed", config.get("seed", 0))


def equalize_mode(config):
    """A run's --equalize; runs from before the flag had auto's judgement."""
    return config.get("equalize", "auto")


def recorded_path(recorded, run_path, recorded_run_dir, ran_in=None):
    """A file that a run's config.json names as it was typed, found from here: as it is, else from
    the folder training ran in: the one config.json records (`cwd`, since session 29), or one worked out
    from the run directory (a run recorded as runs/cnn-1 ran two folders above its directory, which a
    moved project keeps). None if neither has it. A run recorded by its absolute path, or by one that
    climbs out with '..', says nothing about that folder."""
    recorded, recorded_run_dir = Path(recorded), Path(recorded_run_dir)
    if recorded.is_absolute() or recorded.exists():
        return recorded
    if not recorded_run_dir.is_absolute() and ".." not in recorded_run_dir.parts:
        training_dir = Path(run_path).resolve()
        for _ in recorded_run_dir.parts:
            training_dir = training_dir.parent
        if (training_dir / recorded).exists():
            return training_dir / recorded
    if ran_in is not None and (Path(ran_in) / recorded).exists():
        return Path(ran_in) / recorded
    return None


def load_splits(path, val_split=0.1, seed=0, equalize="auto"):
    return split_table(load_table(path, equalize=equalize), val_split, seed)


def _eight_bit(image):
    """A grayscale 0..255 image; a 16-bit one (PIL mode I;16, or I holding values above 255) is scaled
    down, as PIL's convert("L") clips it, turning the face almost white."""
    from PIL import Image

    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image.convert("L")
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or values.max() > 255:
        values = values / 257
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def load_images(paths, equalize="auto", log=None):
    """Image files of any size or colour as grayscale 48x48 uint8, the model's input; histogram-equalized
    unless they already are, each judged on its own (a photo among faces from the copy is still equalized).

    One face is little to judge by, so under 'auto' each face equalized is named to `log`: a face
    exported from the equalized copy may be taken for a raw one, and equalizing it again can change
    its answer."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    faces = []
    for path in paths:
        path = check_readable_file(path)
        try:
            with Image.open(path) as image:
                face = _eight_bit(ImageOps.exif_transpose(image)).resize(
                    (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR
                )
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:  # PIL: SyntaxError, broken PNG
            raise UserError(f"{path}: not a readable image ({type(error).__name__})") from None
        face = np.asarray(face, dtype=np.uint8)[None]
        equalized = contrast.needs_equalizing(face, equalize)
        if equalized and equalize == "auto" and log is not None:
            log(f"{path}: equalized, judged a raw face (--equalize never keeps a face of the equalized copy as it is)")
        faces.append(contrast.equalize(face)[0] if equalized else face[0])
    return Split(np.stack(faces)[..., None], None, np.array([str(path) for path in paths]))


def main(argv=None):
    """`python -m fersuite.data pack SOURCE.csv[.xz] DEST.npz.xz`: the compact form for carrying."""
    from fersuite import cli

    parser = cli.Parser(prog="python -m fersuite.data", description=main.__doc__)
    parser.add_argument("command", choices=["pack"])
    parser.add_argument("source")
    parser.add_argument("destination", help="its folder is made if missing")
    parser.add_argument("--force", action="store_true", help="overwrite an existing destination")
    args = parser.parse_args(argv)
    if not is_packed(args.destination):
        parser.error("the destination must end in .npz or .npz.xz")
    destination = Path(args.destination)
    if destination.parent.is_dir():
        cli.check_output(destination, args.force)  # before the parse; a missing folder is made after it
    table = load_table(args.source, equalize="never")  # judged when loaded
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{destination.parent}: cannot create the folder ({error.strerror})") from None
    cli.check_output(destination, args.force)
    pack_table(table, destination)
    print(f"wrote {args.destination}: {Path(args.destination).stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    from fersuite.cli import run

    run(main)
