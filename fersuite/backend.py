"""The only module that imports a backend (TensorFlow, JAX or PyTorch) directly."""

import keras


def name():
    return keras.backend.backend()


def gpu_available():
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def make_deterministic(seed):
    """Same seed, same history on the CPU: seed every generator, pin TF's op choices."""
    keras.utils.set_random_seed(seed)
    if name() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def versions():
    import numpy

    found = {"keras": keras.__version__, "numpy": numpy.__version__, "backend": name()}
    for module in ("tensorflow", "jax", "torch"):
        if module == name():
            found[module] = __import__(module).__version__
    return found


def input_gradients(function, inputs):
    """d sum(function(x)) / dx as NumPy: the one autodiff call saliency and filter pictures need.

    `function` maps a float32 batch to a tensor using Keras ops (e.g. a model called with
    training=False); each backend differentiates it its own way.
    """
    import numpy

    inputs = numpy.asarray(inputs, dtype="float32")
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(inputs)
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(function(x))
        return tape.gradient(total, x).numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        return numpy.asarray(jax.grad(lambda x: jnp.sum(function(x)))(jnp.asarray(inputs)))
    if backend == "torch":
        import torch

        x = keras.ops.convert_to_tensor(inputs).detach().requires_grad_(True)
        torch.sum(function(x)).backward()
        return x.grad.detach().cpu().numpy()
    raise NotImplementedError(f"input gradients are not implemented for the {backend} backend")
