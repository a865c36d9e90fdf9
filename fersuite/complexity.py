"""Per-layer cost of a model: output shape, parameters and multiply-adds for one image.

Multiply-adds count the layers that dominate inference cost:
  Conv2D           k_h * k_w * (c_in / groups) * c_out * H_out * W_out
  DepthwiseConv2D  k_h * k_w * c_in * depth_multiplier * H_out * W_out
  SeparableConv2D  its depthwise part + c_in * depth_multiplier * c_out * H_out * W_out
  Dense            inputs * units (times any positions before the last axis)
Everything else (BatchNorm, activations, pooling, dropout, rescaling) is counted as 0: these
are elementwise or folded into the preceding convolution at inference time.
"""

import math

import pandas as pd
from keras import layers

COLUMNS = ("layer", "type", "output_shape", "parameters", "multiply_adds")


def _spatial(shape):
    """H_out * W_out of a channels-last 4-D shape."""
    return int(shape[1]) * int(shape[2])


def multiply_adds(layer):
    """Multiply-adds of one layer for a single image (see the module docstring)."""
    if isinstance(layer, layers.SeparableConv2D):
        c_in, c_out = int(layer.input.shape[-1]), int(layer.output.shape[-1])
        positions = _spatial(layer.output.shape)
        depthwise = math.prod(layer.kernel_size) * c_in * layer.depth_multiplier * positions
        return depthwise + c_in * layer.depth_multiplier * c_out * positions
    if isinstance(layer, layers.DepthwiseConv2D):
        c_in = int(layer.input.shape[-1])
        return math.prod(layer.kernel_size) * c_in * layer.depth_multiplier * _spatial(layer.output.shape)
    if isinstance(layer, layers.Conv2D):
        c_in, c_out = int(layer.input.shape[-1]), int(layer.output.shape[-1])
        return math.prod(layer.kernel_size) * (c_in // layer.groups) * c_out * _spatial(layer.output.shape)
    if isinstance(layer, layers.Dense):
        shape = layer.input.shape
        return math.prod(int(size) for size in shape[1:-1]) * int(shape[-1]) * layer.units
    return 0


def _shape_text(shape):
    return "x".join(str(size) for size in shape[1:])


def layer_table(model):
    """One row per layer of a flat Functional model, in order, without a total row."""
    rows = []
    for layer in model.layers:
        output = layer.output
        shape = output.shape if hasattr(output, "shape") else output[0].shape
        rows.append(
            {
                "layer": layer.name,
                "type": type(layer).__name__,
                "output_shape": _shape_text(shape),
                "parameters": int(layer.count_params()) if layer.built else 0,
                "multiply_adds": int(multiply_adds(layer)),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def with_total(table):
    """The table with a last 'total' row summing parameters and multiply-adds."""
    total = {"layer": "total", "type": "", "output_shape": "", **table[["parameters", "multiply_adds"]].sum().to_dict()}
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)
