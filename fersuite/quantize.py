"""Int8 storage for shipped convolution kernels (models/ travels with every GPU run, ≤ 12 MB).

Keras's own int8 quantization covers Dense layers only, and also quantizes their inputs. The
CNN's weights are almost all convolution kernels, so `Int8Conv2D` keeps each kernel as int8
with one float scale per output filter and turns it back into floats on each call: the file
halves against float16 while the activations stay in float, as they were in training.
"""

import keras
import numpy as np
from keras import layers, ops

INT8_MAX = 127


@keras.saving.register_keras_serializable(package="fersuite")
class Int8Conv2D(layers.Conv2D):
    """A Conv2D for prediction whose kernel is int8 × a float32 scale per filter (weight-only)."""

    def build(self, input_shape):
        channels = input_shape[-1]
        kernel_shape = (*self.kernel_size, channels // self.groups, self.filters)
        self.kernel_int8 = self.add_weight(name="kernel_int8", shape=kernel_shape, initializer="zeros", dtype="int8", trainable=False)
        self.kernel_scale = self.add_weight(name="kernel_scale", shape=(self.filters,), initializer="ones", trainable=False)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros") if self.use_bias else None
        self.input_spec = layers.InputSpec(min_ndim=4, axes={-1: channels})
        self.built = True

    @property
    def kernel(self):
        return ops.cast(self.kernel_int8, self.compute_dtype) * ops.cast(self.kernel_scale, self.compute_dtype)

    def _stored_variables(self):
        return [self.kernel_int8, self.kernel_scale] + ([self.bias] if self.use_bias else [])

    def save_own_variables(self, store):
        """Conv2D would store the float kernel that `kernel` computes; store the int8 one."""
        for index, variable in enumerate(self._stored_variables()):
            store[str(index)] = variable

    def load_own_variables(self, store):
        for index, variable in enumerate(self._stored_variables()):
            variable.assign(store[str(index)])

    def set_float_weights(self, kernel, bias=None):
        """Quantize a float kernel symmetrically per output filter: scale = max |w| / 127."""
        kernel = np.asarray(kernel, dtype="float32")
        peak = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0)
        scale = np.where(peak > 0, peak / INT8_MAX, 1.0).astype("float32")
        self.kernel_int8.assign(np.clip(np.round(kernel / scale), -INT8_MAX, INT8_MAX).astype("int8"))
        self.kernel_scale.assign(scale)
        if bias is not None:
            self.bias.assign(bias)


def quantize_convolutions(model):
    """A copy of `model` with every plain channels-last Conv2D replaced by an Int8Conv2D."""

    def convertible(layer):
        return type(layer) is layers.Conv2D and layer.data_format == "channels_last"

    def clone(layer):
        return Int8Conv2D.from_config(layer.get_config()) if convertible(layer) else layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    for original in model.layers:
        quantized = copy.get_layer(original.name)
        if isinstance(quantized, Int8Conv2D):
            quantized.set_float_weights(*original.get_weights())
        else:
            quantized.set_weights(original.get_weights())
    return copy
