"""Copy a trained model into models/ for predict.py: no optimizer state, float16 weights.

    python -m fersuite.ship runs/cnn-20261124-140000/best.keras models/cnn.keras
    python -m fersuite.ship runs/dnn-20261124-140000/best.keras models/dnn.keras --int8

models/ travels with every run on the GPU machine and stays under 12 MB, so shipped weights are
stored as float16 (half the bytes; Keras loads them back into float32 variables, and the
predictions move by about 1e-3). --int8 also quantizes Dense kernels with Keras's int8
quantization and convolution kernels as int8 with a scale per filter (fersuite.quantize): a DNN or
a CNN, almost all Dense or convolution weights, shrinks to about a quarter of float32. --int4
stores the convolution kernels in 4 bits instead (15 levels per filter, two to a byte; Dense
kernels stay int8), for a CNN about an eighth of float32; it also takes a model shipped with --int8.

A run trained with mixed precision (the default on a GPU) stores layers that compute in float16;
a shipped model computes in float32, which a CPU runs faster and Keras's int8 quantization needs.
"""

import argparse
from pathlib import Path

from fersuite import cli
from fersuite.errors import UserError

HALF_DTYPES = ("float16", "bfloat16")


def float32_config(config):
    """A model config with every mixed or half-precision dtype replaced by float32."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy":
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {
            key: "float32" if key == "dtype" and value in HALF_DTYPES else float32_config(value)
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [float32_config(value) for value in config]
    return config


def float32_model(model):
    copy = model.__class__.from_config(float32_config(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def float_parameter_count(model):
    """Parameters as the float network has them: a source shipped in int8 already also holds its scales."""
    from fersuite.quantize import float_weights

    return sum(weight.size for layer in model.layers for weight in float_weights(layer))


def ship(source, destination, force=False, int8=False, int4=False):
    """Check the model, then write it lean and in float16; returns its parameters and the file's size in bytes."""
    from fersuite.atomic import save_model
    from fersuite.evaluation import load_model

    destination = Path(destination)
    if destination.suffix != ".keras":
        raise UserError(f"{destination}: the name must end in .keras")
    cli.check_output(destination, force, inputs=[source])
    model = float32_model(load_model(source))
    parameters = float_parameter_count(model)
    if int8 or int4:
        from fersuite.quantize import quantize_convolutions, quantize_dense

        model = quantize_dense(quantize_convolutions(model, bits=4 if int4 else 8))
    save_model(model, destination, include_optimizer=False, float16=True)
    return parameters, destination.stat().st_size


def main():
    parser = cli.Parser(
        prog="python -m fersuite.ship", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", help="a run's best.keras")
    parser.add_argument("destination", help="e.g. models/cnn.keras")
    parser.add_argument("--force", action="store_true", help="overwrite an existing destination")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument(
        "--int8", action="store_true", help="also store Dense and Conv2D kernels as int8 (about half the float16 size)"
    )
    precision.add_argument(
        "--int4",
        action="store_true",
        help="Dense kernels as int8, Conv2D kernels in 4 bits (a CNN in about a quarter of the float16 size)",
    )
    args = parser.parse_args()
    parameters, size = ship(args.source, args.destination, args.force, args.int8, args.int4)
    print(f"{args.destination}: {parameters:,} parameters, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    cli.quiet_backend_logs()
    cli.run(main)
