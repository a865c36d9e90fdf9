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
