"""Flags shared by the training scripts, and the wrapper that turns a UserError into one line."""

import argparse
import atexit
import contextlib
import functools
import importlib
import logging
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

from fersuite import AUGMENTATION, contrast
from fersuite.errors import UserError

PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_TRAIN = PROJECT.parent / "shared" / "data" / "fer2013" / "train.csv.xz"
DEFAULT_TEST = DEFAULT_TRAIN.with_name("test.csv.xz")
SAMPLE = PROJECT / "data" / "fer2013_sample.csv.xz"


def run(main):
    """Call main(); bad input ends with 'error: ...' on stderr and exit status 2, no traceback; Ctrl-C
    with 'interrupted' and status 130, even where a library turned its KeyboardInterrupt into another
    error (Keras's int8 Dense under PyTorch raised 'Invalid dtype: object'). Once the interpreter
    exits, Ctrl-C is ignored: the outputs are written, and an interrupt could only spoil the shutdown
    (PyTorch's takes seconds) with a fatal error."""
    pressed = []
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if in_main_thread else None

    def note_ctrl_c(signum, frame):
        pressed.append(signum)
        signal.default_int_handler(signum, frame)

    if previous is signal.default_int_handler:  # not where SIGINT is ignored (a job started with nohup)
        signal.signal(signal.SIGINT, note_ctrl_c)
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception:
        if pressed:
            print("\ninterrupted", file=sys.stderr)
            raise SystemExit(130) from None
        raise
    finally:
        if previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous)
        if in_main_thread:
            _ignore_ctrl_c_at_exit()


@functools.cache
def _ignore_ctrl_c_at_exit():
    """Registered after the libraries' own exit handlers, so it runs before them (last in, first out)."""
    atexit.register(signal.signal, signal.SIGINT, signal.SIG_IGN)


def module_prog(spec):
    """argparse's prog for a module: `python -m bench.sweep` when run so, the file's name when run by path."""
    return f"python -m {spec.name}" if spec else None


def progress(verbose=None):
    """Keras's verbose for fit and predict: progress bars (1) on a terminal, one line per epoch (2) where the
    output goes to a file or a pipe, since Keras redraws its bars there too, hundreds of times an epoch."""
    if verbose is not None:
        return verbose
    return 1 if sys.stdout.isatty() else 2


def quiet_backend_logs():
    """TensorFlow's start-up chatter hides the one line a user needs to read.

    TF_CPP_MIN_LOG_LEVEL quiets most of it, but TensorFlow 2.21 prints its oneDNN notice from C++
    before that level applies (four lines on stderr above any error); so TensorFlow, where it is
    installed, is imported when Keras first is, with the process's native stderr pointed at
    /dev/null. On every backend: Keras's set_random_seed imports TensorFlow too. The scripts call
    this before parsing flags, and Keras is imported only after, so `--help` stays fast.
    TensorFlow's Python warnings go too (a 12-line retracing warning when an ensemble's models
    each trace their predict step); its errors still show as Python exceptions. Its C++ log is cut to
    fatal messages (level 3): at level 2, TensorFlow 2.21 logs a harmless "NodeDef mentions attribute
    use_unbounded_threadpool" error line at the start of every fit. TF_CPP_MIN_LOG_LEVEL=0 shows it all."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    needed = "keras" not in sys.modules and not any(
        isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path
    )
    if needed:
        sys.meta_path.insert(0, _QuietTensorFlowImport())


@contextlib.contextmanager
def native_stderr_silenced():
    """File descriptor 2 to /dev/null: what C++ code writes there is dropped; Python's own
    tracebacks print after it is restored."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _QuietTensorFlowImport:
    """An import hook that, the first time `keras` is looked up, imports TensorFlow silenced (Keras
    then finds it loaded) and steps aside; it never loads anything in Keras's place."""

    def find_spec(self, name, path=None, target=None):
        if name == "keras":
            sys.meta_path.remove(self)
            with native_stderr_silenced(), contextlib.suppress(ImportError):
                importlib.import_module("tensorflow")


def check_output(path, force, inputs=()):
    """Refuse an output file before any work is done, so nothing is half-done or overwritten by accident;
    one of the command's own input files never, even with --force (a test.csv lost to its submission)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a file name")
    for source in inputs:
        if path.exists() and Path(source).exists() and os.path.samefile(path, source):
            raise UserError(f"{path}: is an input of this command ({source}); write the output elsewhere")
    if path.exists() and not force:
        raise UserError(f"{path}: already exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise UserError(f"{path.parent}: no such directory")
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"{path.parent}: directory is not writable")


def absolute_path(text):
    """A path made absolute where it is parsed, for scripts whose child processes run elsewhere."""
    return str(Path(text).resolve())


def _number(text, kind):
    """The flag's value as int or float; argparse would otherwise name this module's function in its error."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got '{text}'"
        ) from None


def _checked(kind, accept, requirement):
    """An argparse type: the text as `kind`, refused with "must be <requirement>" unless accept(value)."""

    def convert(text):
        value = _number(text, kind)
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {value}")
        return value

    return convert


non_negative_int = _checked(int, lambda value: value >= 0, "0 or more")
finite = _checked(float, math.isfinite, "a finite number")  # argparse's float takes 'nan' and 'inf'
non_negative = _checked(float, lambda value: math.isfinite(value) and value >= 0, "0 or more")
positive_int = _checked(int, lambda value: value >= 1, "at least 1")
fraction = _checked(float, lambda value: 0 <= value < 1, "in [0, 1)")
open_fraction = _checked(float, lambda value: 0 < value < 1, "between 0 and 1 (exclusive)")
numpy_seed = _checked(int, lambda value: 0 <= value < 2**32, "in 0..2**32-1, as NumPy's random seeds are")
# Keras keeps a random layer's seed in int32 under PyTorch
seed = _checked(int, lambda value: 0 <= value < 2**31, "in 0..2**31-1, as Keras's seeds on every backend are")


def add_equalize(parser, default_text="%(default)s"):
    """--equalize: whether the faces read are histogram-equalized (fersuite.contrast)."""
    parser.add_argument(
        "--equalize",
        choices=contrast.MODES,
        default="auto",
        help="histogram-equalize the faces as they are read, as the models were trained: auto = a CSV's faces unless "
        "most already are (the team's copy is), each image file on its own; never for faces exported from an "
        f"equalized copy (default: {default_text})",
    )


def int_list(text):
    try:
        values = tuple(int(part) for part in text.split(","))  # "64,,32" is a typo, not 64,32
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got '{text}'")
    return values


def chosen_names(parser, text, known, flag="--families"):
    """The comma-separated names given to a flag such as --families, each checked against `known`."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = set(names) - set(known)
    if unknown or not names:
        parser.error(f"{flag}: unknown {', '.join(sorted(unknown)) or repr(text)}; choose from {', '.join(known)}")
    return names


def command_line():
    """This process's command as a shell would take it back (a path with a space in it stays one word):
    what config.json records and a resume or a sweep reads."""
    return shlex.join(sys.argv)


def run_script(line, **options):
    """Run a script as a child process (a benchmark's training run); if it fails, this process ends with one
    line too, below the child's own error."""
    status = subprocess.run(line, cwd=PROJECT, check=False, **options).returncode
    if status:
        raise UserError(f"{Path(line[1]).name} stopped with exit status {status}: {shlex.join(map(str, line[2:]))}")


class Parser(argparse.ArgumentParser):
    """argparse, but its usage errors exit 2 with one line, like every other bad input."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)

    def given(self, args=None):
        """The settings typed on the command line, even at their default value: parsed again with no defaults."""
        defaults = {action: action.default for action in self._actions}
        try:
            for action in self._actions:
                action.default = argparse.SUPPRESS
            return set(vars(argparse.ArgumentParser.parse_args(self, args)))
        finally:
            for action, default in defaults.items():
                action.default = default


# What a resumed run may be given again; every other setting comes from its config.json.
RESUME_SETTINGS = ("resume_every", "verbose")


class TrainingParser(Parser):
    """A training script's flags; with --resume, a setting given again is refused rather than ignored."""

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        if not parsed.augment:  # the images as they are: a script's default erasing or mixup goes too
            given = self.given(args)
            for name in ("random_erasing", "mixup"):
                if name not in given:
                    setattr(parsed, name, 0.0)
        if parsed.resume:
            given = self.given(args)
            refused = [name for name in vars(parsed) if name in given and name not in ("resume", *RESUME_SETTINGS)]
            if refused:
                typed = {action.dest: action.option_strings[0] for action in self._actions if action.option_strings}
                flags = ", ".join(typed.get(name, f"--{name.replace('_', '-')}") for name in refused)  # --no-augment
                self.error(
                    f"--resume continues a run with the settings in its config.json; drop {flags} "
                    "(or start a new run with --init-from RUN_DIR/best.keras)"
                )
            for name in RESUME_SETTINGS:  # not given again: the run's own setting stands
                if name not in given:
                    delattr(parsed, name)
        return parsed


def training_parser(description, defaults):
    """The settings every family shares; `defaults` holds the family's best recipe."""
    parser = TrainingParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default=str(DEFAULT_TRAIN),
        help="train.csv (label,feature) or fer2013.csv (emotion,pixels,Usage); .gz/.xz fine, or a table packed by "
        "python -m fersuite.data pack (default: %(default)s)",
    )
    data.add_argument(
        "--val-split",
        type=open_fraction,
        default=0.1,
        help="validation fraction of a file without Usage (label,feature or emotion,pixels); "
        "fer2013.csv uses PublicTest (default: %(default)s)",
    )
    data.add_argument(
        "--split-seed",
        type=numpy_seed,
        default=0,
        help="which faces a file without Usage holds out for validation; "
        "keep it the same across the models of an ensemble (default: %(default)s)",
    )
    add_equalize(data)
    data.add_argument("--runs-dir", default="runs", help="each run gets its own directory here (default: %(default)s)")
    data.add_argument(
        "--init-from",
        metavar="MODEL",
        help="start from a trained .keras model's weights "
        "(the same network, trained on the same --data, --val-split, --split-seed and --equalize), "
        "e.g. to train a shipped model longer with a new schedule",
    )
    data.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from the epoch its last.keras holds, with the settings in its config.json "
        "(only --resume-every, --quiet and --no-quiet may be given again)",
    )
    data.add_argument(
        "--resume-every",
        type=non_negative,
        default=60.0,
        metavar="SECONDS",
        help="save last.keras, the state --resume continues from, at most this often, on each new best "
        "validation accuracy and at the end; 0 = after every epoch (default: %(default)s)",
    )

    optimization = parser.add_argument_group("optimization")
    optimization.add_argument("--epochs", type=positive_int, default=defaults["epochs"], help="(default: %(default)s)")
    optimization.add_argument(
        "--time-budget",
        type=finite,
        default=0.0,
        metavar="MINUTES",
        help="stop before this many minutes from the start (data loading and --teacher predictions included), "
        "with the cosine schedule spread over them (or over --epochs, if they end first); for a fixed GPU slot. "
        "0 = none (default: %(default)s)",
    )
    optimization.add_argument(
        "--batch-size", type=positive_int, default=defaults.get("batch_size", 128), help="(default: %(default)s)"
    )
    optimization.add_argument(
        "--optimizer",
        choices=("adam", "adamw", "sgd"),
        default=defaults.get("optimizer", "adam"),
        help="sgd is Nesterov momentum 0.9 (default: %(default)s)",
    )
    optimization.add_argument(
        "--lr", type=finite, default=defaults.get("lr", 1e-3), help="peak learning rate (default: %(default)s)"
    )
    optimization.add_argument(
        "--weight-decay",
        type=non_negative,
        default=defaults.get("weight_decay", 0.0),
        help="decoupled weight decay, with any --optimizer (default: %(default)s)",
    )
    optimization.add_argument(
        "--schedule",
        choices=("plateau", "cosine", "constant"),
        default=defaults.get("schedule", "cosine"),
        help="(default: %(default)s)",
    )
    optimization.add_argument(
        "--warmup-epochs",
        type=non_negative_int,
        default=defaults.get("warmup_epochs", 0),
        help="linear warm-up before cosine decay (default: %(default)s)",
    )
    optimization.add_argument(
        "--patience",
        type=non_negative_int,
        default=defaults.get("patience", 0),
        help="early stop after this many epochs without a better val accuracy; 0 = never (default: %(default)s)",
    )
    optimization.add_argument(
        "--label-smoothing", type=fraction, default=defaults.get("label_smoothing", 0.0), help="(default: %(default)s)"
    )
    optimization.add_argument(
        "--ema",
        type=fraction,
        default=defaults.get("ema", 0.0),
        metavar="MOMENTUM",
        help="validate and keep the best of an exponential moving average of the weights (Polyak averaging), "
        "updated each step with this momentum; 0 = off, 0.999 averages about the last 1,000 steps "
        "(default: %(default)s)",
    )
    optimization.add_argument(
        "--class-weight",
        choices=("none", "balanced"),
        default="none",
        help="balanced up-weights rare classes such as Disgust (default: %(default)s)",
    )
    optimization.add_argument(
        "--mixed-precision",
        choices=("auto", "on", "off"),
        default=defaults.get("mixed_precision", "auto"),
        help="float16 compute; auto = on when a GPU is present (default: %(default)s)",
    )
    optimization.add_argument(
        "--seed",
        type=seed,
        default=0,
        help="initial weights, augmentation and shuffling; "
        "models trained with different seeds make an ensemble (default: %(default)s)",
    )

    distillation = parser.add_argument_group("distillation (soft targets from trained models)")
    distillation.add_argument(
        "--teacher",
        action="append",
        default=None,
        metavar="MODEL",
        help=".keras model whose predictions on the training images become soft targets, "
        "or a .npz of them saved by python -m fersuite.teachers; repeat for an ensemble. "
        "It must have been trained with the same --data, --val-split and --split-seed, "
        "or validation accuracy is inflated, and see faces as this run's --equalize reads them",
    )
    distillation.add_argument(
        "--teacher-weight",
        type=fraction,
        default=defaults.get("teacher_weight", 0.5),
        help="share of the target taken from the teachers; the rest is the one-hot label (default: %(default)s)",
    )
    distillation.add_argument(
        "--teacher-temperature",
        type=finite,
        default=defaults.get("teacher_temperature", 1.0),
        help="above 1 softens the teachers' probabilities (default: %(default)s)",
    )

    augmentation = parser.add_argument_group("augmentation (ImageDataGenerator's names; applied on the device)")
    augmentation.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="train on the images as they are: no rotation, shift, zoom, flip, and unless given, no erasing or mixup",
    )
    augmentation.add_argument(
        "--rotation-range",
        type=non_negative,
        default=defaults.get("rotation_range", AUGMENTATION["rotation_range"]),
        help="degrees (default: %(default)s)",
    )
    augmentation.add_argument(
        "--width-shift-range",
        type=fraction,
        default=defaults.get("width_shift_range", AUGMENTATION["width_shift_range"]),
        help="fraction of width (default: %(default)s)",
    )
    augmentation.add_argument(
        "--height-shift-range",
        type=fraction,
        default=defaults.get("height_shift_range", AUGMENTATION["height_shift_range"]),
        help="fraction of height (default: %(default)s)",
    )
    augmentation.add_argument(
        "--zoom-range",
        type=fraction,
        default=defaults.get("zoom_range", AUGMENTATION["zoom_range"]),
        help="(default: %(default)s)",
    )
    augmentation.add_argument(
        "--horizontal-flip",
        action=argparse.BooleanOptionalAction,
        default=AUGMENTATION["horizontal_flip"],
        help="(default: %(default)s)",
    )
    augmentation.add_argument(
        "--random-erasing",
        type=fraction,
        default=defaults.get("random_erasing", 0.0),
        help="probability of blanking one rectangle per image (default: %(default)s)",
    )
    augmentation.add_argument(
        "--mixup",
        type=finite,
        default=defaults.get("mixup", 0.0),
        metavar="ALPHA",
        help="blend pairs of training images and their labels, lam ~ Beta(ALPHA, ALPHA); "
        "0 = off, 0.2-0.4 is usual (default: %(default)s)",
    )
    augmentation.add_argument(
        "--normalization",
        choices=("unit", "featurewise"),
        default="unit",
        help="unit = pixels/255; featurewise = (pixels - mean) / std of the training set (default: %(default)s)",
    )
    parser.add_argument(
        "--quiet",
        dest="verbose",
        action="store_const",
        const=2,
        help="one line per epoch instead of progress bars (the default when the output is not a terminal)",
    )
    parser.add_argument(
        "--no-quiet",
        dest="verbose",
        action="store_const",
        const=1,
        help="progress bars even into a file or pipe; undoes --quiet when resuming a run that had it",
    )
    return parser
