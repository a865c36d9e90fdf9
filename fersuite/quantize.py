"""Int8 and int4 storage for shipped convolution kernels (models/ travels with every GPU run, ≤ 12 MB).

Keras's own int8 quantization covers Dense layers only, and also quantizes their inputs. The
CNN's weights are almost all convolution kernels, so `Int8Conv2D` keeps each kernel as int8
with one float scale per output filter and turns it back into floats on each call: the file
halves against float16 while the activations stay in float, as they were in training.
`Int4Conv2D` keeps 15 levels per filter, two to a byte, which halves it again: two 5.9M CNNs
then fit in models/ beside the MobileNet and the DNN.
"""

import math

import keras
import numpy as np
from keras import layers, ops

INT8_MAX = 127
INT4_MAX = 7


def per_filter_codes(kernel, levels):
    """Symmetric quantization per output filter: scale = max |w| / levels, codes in [-levels, levels]."""
    kernel = np.asarray(kernel, dtype="float32")
    peak = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0)
    scale = np.where(peak > 0, peak / levels, 1.0).astype("float32")
    return np.clip(np.round(kernel / scale), -levels, levels).astype("int8"), scale


@keras.saving.register_keras_serializable(package="fersuite")
class Int8Conv2D(layers.Conv2D):
    """A Conv2D for prediction whose kernel is int8 × a float32 scale per filter (weight-only)."""

    levels = INT8_MAX

    def build(self, input_shape):
        channels = input_shape[-1]
        self.full_kernel_shape = (*self.kernel_size, channels // self.groups, self.filters)
        self.kernel_codes = self._add_codes()
        self.kernel_scale = self.add_weight(
            name="kernel_scale", shape=(self.filters,), initializer="ones", trainable=False
        )
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros") if self.use_bias else None
        self.input_spec = layers.InputSpec(min_ndim=4, axes={-1: channels})
        self.built = True

    def _add_codes(self):
        return self.add_weight(
            name="kernel_int8", shape=self.full_kernel_shape, initializer="zeros", dtype="int8", trainable=False
        )

    def _codes(self):
        return self.kernel_codes

    def _store_codes(self, codes):
        self.kernel_codes.assign(codes)

    @property
    def kernel(self):
        return ops.cast(self._codes(), self.compute_dtype) * ops.cast(self.kernel_scale, self.compute_dtype)

    def _stored_variables(self):
        return [self.kernel_codes, self.kernel_scale] + ([self.bias] if self.use_bias else [])

    def save_own_variables(self, store):
        """Conv2D would store the float kernel that `kernel` computes; store the codes."""
        for index, variable in enumerate(self._stored_variables()):
            store[str(index)] = variable

    def load_own_variables(self, store):
        for index, variable in enumerate(self._stored_variables()):
            variable.assign(store[str(index)])

    def set_float_weights(self, kernel, bias=None):
        codes, scale = per_filter_codes(kernel, self.levels)
        self._store_codes(codes)
        self.kernel_scale.assign(scale)
        if bias is not None:
            self.bias.assign(bias)


@keras.saving.register_keras_serializable(package="fersuite")
class Int4Conv2D(Int8Conv2D):
    """Int8Conv2D with codes in [-7, 7], stored offset by 8 as two 4-bit nibbles per uint8."""

    levels = INT4_MAX

    def _add_codes(self):
        size = math.prod(self.full_kernel_shape)
        return self.add_weight(
            name="kernel_int4", shape=((size + 1) // 2,), initializer="zeros", dtype="uint8", trainable=False
        )

    def _codes(self):
        packed = ops.cast(self.kernel_codes, "int32")
        nibbles = ops.reshape(ops.stack([ops.bitwise_and(packed, 15), ops.right_shift(packed, 4)], axis=-1), (-1,))
        return ops.reshape(nibbles[: math.prod(self.full_kernel_shape)] - 8, self.full_kernel_shape)

    def _store_codes(self, codes):
        nibbles = codes.astype("int16").ravel() + 8
        nibbles = np.append(nibbles, 8) if nibbles.size % 2 else nibbles
        self.kernel_codes.assign((nibbles[0::2] | (nibbles[1::2] << 4)).astype("uint8"))


def quantize_convolutions(model, bits=8):
    """A copy of `model` with every plain channels-last Conv2D replaced by an Int8Conv2D (or Int4Conv2D)."""
    quantized_class = {8: Int8Conv2D, 4: Int4Conv2D}[bits]

    def convertible(layer):
        """A float Conv2D, or an Int8Conv2D of a model shipped before (its kernel is close to the float one)."""
        return type(layer) in (layers.Conv2D, Int8Conv2D) and layer.data_format == "channels_last"

    def clone(layer):
        return (
            quantized_class.from_config(layer.get_config())
            if convertible(layer)
            else layer.__class__.from_config(layer.get_config())
        )

    copy = keras.models.clone_model(model, clone_function=clone)
    for original in model.layers:
        quantized = copy.get_layer(original.name)
        if isinstance(quantized, Int8Conv2D):
            quantized.set_float_weights(
                _numpy(original.kernel), None if original.bias is None else _numpy(original.bias)
            )
        else:
            quantized.set_weights(original.get_weights())
    return copy


def quantize_dense(model):
    """Keras's int8 quantization of every Dense layer that a model shipped with --int8 has not already got."""
    for layer in model.layers:
        if isinstance(layer, layers.Dense) and layer.dtype_policy.quantization_mode is None:
            layer.quantize("int8")
    return model


def float_weights(layer):
    """A layer's weights as the float layer it was quantized from holds them (kernel, then bias).

    So that `--init-from` can continue training a shipped model: its Conv2D and Dense kernels
    may be int8 or 4-bit codes times a scale, which a freshly built network cannot take as they are."""
    if isinstance(layer, Int8Conv2D):
        kernel = _numpy(layer.kernel)
    elif isinstance(layer, layers.Dense) and layer.dtype_policy.quantization_mode == "int8":
        kernel = (
            _numpy(layer.kernel)  # int8 codes
            / _numpy(layer.kernel_scale)
        )
    else:
        return layer.get_weights()
    return [kernel] + ([_numpy(layer.bias)] if layer.bias is not None else [])


def _numpy(tensor):
    """A float32 array of a variable or of a kernel computed on the fly: np.asarray cannot read a
    torch tensor that lives on a GPU."""
    return np.asarray(ops.convert_to_numpy(tensor), dtype="float32")
