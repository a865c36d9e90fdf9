"""Augmentation cost: ImageDataGenerator vs Keras's four preprocessing layers vs the suite's
fused RandomAffine, alone (images/s) and feeding CNN training (training images/s).

    python -m bench.augmentation                 # about 2 minutes on 2 idle cores, more when shared
    python -m bench.augmentation --quick         # smoke run
    python -m bench.augmentation --network default --steps 5 --rounds 2

All three do the same job: rotation 10 degrees, shifts 0.1, zoom 0.1 (each axis), horizontal flip,
bilinear, 'nearest' fill, on 48x48x1 batches of 128 taken from the training CSV.

"Eager" calls the layers on each batch, NumPy in and NumPy out. "Compiled" wraps the same layers
in a keras.Model with `InTraining`, which calls them with training=True (a model's predict runs
its layers in inference mode, where augmentation is the identity), and times predict_on_batch:
Keras's own compiled predict step (a tf.function on TensorFlow, jax.jit on JAX), so no backend
API is used here. jit_compile is resolved as model.compile resolves it for training and printed:
XLA is off on a CPU-only TensorFlow, and Keras's own image layers declare that they cannot be
jitted, so on JAX they run op by op even "compiled". ImageDataGenerator is Keras's legacy
NumPy/SciPy implementation and runs on the CPU whatever the backend.

Training speed is model.fit for --warmup + --steps batches, timed over the last --steps (a whole
epoch of the 5.9M CNN takes minutes on this CPU): the generator feeding a model that only
rescales, the suite's model with RandomAffine inside, the same model again with Keras's
TerminateOnNaN (a per-batch callback that makes fit wait for each step's loss before the next, as
the suite's scripts did before session 11; on JAX only, where Keras otherwise runs batch callbacks
in a worker thread), and the same model without augmentation. Every figure is the median of
--rounds rounds that take turns, so a change in the machine's load during the run falls on all of
them.
"""

import keras
from keras import layers

from bench import common
from fersuite import AUGMENTATION, INPUT_SHAPE, NUM_CLASSES
from fersuite.augment import RandomAffine
from fersuite.cli import DEFAULT_TRAIN, positive_int
from fersuite.data import load_table
from fersuite.models import build_cnn, preprocessing_layers
from fersuite.training import one_hot

NETWORKS = {
    "small": {"filters": (32, 64, 128), "dense": (256,)},
    "default": {},
}


GENERATOR, SUITE = "ImageDataGenerator -> fit", "RandomAffine in the model (suite)"
WAITING = "suite, fit waiting for each step"  # differs from SUITE only on JAX (see above)
SPEEDUP_TARGET, UNAUGMENTED_TARGET = 10, 0.9  # issue 6, item 1: meant for the lent GPU


class InTraining(layers.Layer):
    """Calls the wrapped layers with training=True, so a compiled predict step augments."""

    def __init__(self, stack, **kwargs):
        super().__init__(**kwargs)
        self.stack = list(stack)

    def call(self, images):
        for layer in self.stack:
            images = layer(images, training=True)
        return images

    def compute_output_shape(self, input_shape):
        return input_shape


def keras_layers(seed=0):
    """Keras's separate layers set to ImageDataGenerator's meaning of AUGMENTATION."""
    return [
        layers.RandomRotation(AUGMENTATION["rotation_range"] / 360.0, fill_mode="nearest", seed=seed),
        layers.RandomTranslation(
            AUGMENTATION["height_shift_range"], AUGMENTATION["width_shift_range"], fill_mode="nearest", seed=seed
        ),
        layers.RandomZoom(
            (-AUGMENTATION["zoom_range"], AUGMENTATION["zoom_range"]),
            (-AUGMENTATION["zoom_range"], AUGMENTATION["zoom_range"]),
            fill_mode="nearest",
            seed=seed,
        ),
        layers.RandomFlip("horizontal", seed=seed),
    ]


def fused_layer(seed=0):
    return [RandomAffine(**AUGMENTATION, seed=seed)]


def image_data_generator():
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    return ImageDataGenerator(**AUGMENTATION)


def augmentation_rate(produce, batches, warmup, batch_size):
    """Call produce() warmup times untimed, then `batches` times timed."""
    for _ in range(warmup):
        produce()

    def timed_batches():
        for _ in range(batches):
            produce()

    return common.timed(timed_batches, batches * batch_size)


def batch_cycle(pixels, batch_size):
    """An endless supply of float32 batches (what ImageDataGenerator hands out too)."""
    floats = pixels.astype("float32")
    count = len(floats) // batch_size
    state = {"index": 0}

    def next_batch():
        start = (state["index"] % count) * batch_size
        state["index"] += 1
        return floats[start : start + batch_size]

    return next_batch


def eager(stack, next_batch):
    def produce():
        images = next_batch()
        for layer in stack:
            images = layer(images, training=True)
        return keras.ops.convert_to_numpy(images)

    return produce


def compiled(stack, next_batch):
    inputs = keras.Input(INPUT_SHAPE)
    model = keras.Model(inputs, InTraining(stack)(inputs))
    model.compile()
    print(f"  ({', '.join(type(layer).__name__ for layer in stack)} compiled with jit_compile={model.jit_compile})")
    return lambda: model.predict_on_batch(next_batch())


def augmentation_alone(pixels, args):
    print(
        f"\naugmentation alone: {args.batches} batches of {args.batch_size} after {args.warmup} warm-up batches, "
        f"median (min-max) of {args.rounds} rounds; images per second and per CPU-second of this process"
    )
    flow = image_data_generator().flow(pixels.astype("float32"), batch_size=args.batch_size, shuffle=True, seed=0)
    producers = {"ImageDataGenerator.flow (NumPy/SciPy)": lambda: next(flow)}
    for name, make in (("4 Keras layers", keras_layers), ("fused RandomAffine", fused_layer)):
        for mode, wrap in (("eager", eager), ("compiled", compiled)):
            producers[f"{name}, {mode}"] = wrap(make(), batch_cycle(pixels, args.batch_size))
    measures = {
        name: (lambda produce=produce: augmentation_rate(produce, args.batches, args.warmup, args.batch_size))
        for name, produce in producers.items()
    }
    results = common.interleaved(measures, args.rounds)
    for name, rates in results.items():
        print(f"  {name:40s} {common.spread(rates)}")
    return results


def cnn(network, preprocessing):
    model = build_cnn(INPUT_SHAPE, NUM_CLASSES, preprocessing, **NETWORKS[network])
    return common.compile_like_suite(model)


def training_speed(pixels, labels, args):
    print(
        f"\nCNN training ({args.network} network), model.fit: {args.steps} batches of {args.batch_size} "
        f"after {args.warmup} warm-up batches, median (min-max) of {args.rounds} rounds; "
        f"training images per second and per CPU-second of this process; the generator with {args.workers} worker(s)"
    )
    count = (args.warmup + args.steps) * args.batch_size
    pixels, labels = common.repeat_to(pixels, labels, count)
    targets = one_hot(labels)

    def fit(model, inputs, labels=None, callbacks=()):
        return lambda: common.fit_rate(model, inputs, labels, args.warmup, args.steps, args.batch_size, callbacks)

    generator = image_data_generator().flow(pixels.astype("float32"), targets, batch_size=args.batch_size, seed=0)
    generator.workers = args.workers
    rescale_only = cnn(args.network, preprocessing_layers())
    print(f"  {args.network} CNN: {rescale_only.count_params():,} parameters")
    suite = cnn(args.network, preprocessing_layers(augment=AUGMENTATION, seed=0))
    measures = {
        GENERATOR: fit(rescale_only, generator),
        SUITE: fit(suite, pixels, targets),
        WAITING: fit(suite, pixels, targets, [keras.callbacks.TerminateOnNaN()]),
        "no augmentation": fit(cnn(args.network, preprocessing_layers()), pixels, targets),
    }
    results = common.interleaved(measures, args.rounds)
    for name, rates in results.items():
        print(f"  {name:40s} {common.spread(rates)}")
    suite_rates, unaugmented = results[SUITE], results["no augmentation"]
    print(f"  {SUITE} / ImageDataGenerator -> fit = {common.ratio(suite_rates, results[GENERATOR], SPEEDUP_TARGET)}")
    print(f"  {SUITE} / no augmentation = {common.ratio(suite_rates, unaugmented, UNAUGMENTED_TARGET)}")
    for name in (GENERATOR, WAITING):
        print(f"  {name} / no augmentation = {common.ratio(results[name], unaugmented)}")
    return results


def main():
    parser = common.parser(__doc__, __spec__)
    parser.add_argument("--data", default=str(DEFAULT_TRAIN), help="labeled CSV (default: %(default)s)")
    parser.add_argument(
        "--images", type=positive_int, default=4096, help="images taken from --data (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=common.BATCH_SIZE, help="(default: %(default)s)")
    parser.add_argument(
        "--batches",
        type=positive_int,
        default=30,
        help="timed batches, augmentation alone, each round (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup", type=positive_int, default=2, help="untimed batches first, each round (default: %(default)s)"
    )
    parser.add_argument(
        "--network",
        choices=tuple(NETWORKS),
        default="small",
        help="CNN for training speed; small = filters 32,64,128, dense 256 (default: %(default)s)",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=10, help="timed training batches, each round (default: %(default)s)"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="PyDataset workers for the generator in fit; 1 = Keras's default, no threads (default: %(default)s)",
    )
    args = parser.parse_args()
    if args.quick:
        args.images, args.batches, args.warmup, args.steps, args.rounds = 512, 3, 1, 2, 2

    machine = common.MachineReport()
    machine.start()
    table = load_table(args.data)
    count = args.batch_size * max(1, args.images // args.batch_size)  # whole batches, as every producer hands out
    pixels, labels = common.repeat_to(table.pixels[: args.images], table.labels[: args.images], count)
    augmentation_alone(pixels, args)
    training_speed(pixels, labels, args)
    machine.end()


if __name__ == "__main__":
    main()
