"""Shipping with --int8 / --int4 stores convolution kernels in 8 / 4 bits and predicts like the float model."""

import io
import math
import zipfile

import h5py
import numpy as np
import pytest

from fersuite import INPUT_SHAPE, NUM_CLASSES, evaluation, models, training
from fersuite.atomic import save_model
from fersuite.errors import UserError
from fersuite.quantize import INT4_MAX, INT8_MAX, Int4Conv2D, Int8Conv2D, float_weights, quantize_convolutions
from fersuite.ship import ship


def stored_variables(path):
    """{layer name in the archive: [(dtype, bytes) of each stored variable]}."""
    found = {}
    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as weights:
        for name, group in weights["layers"].items():
            if "vars" in group:
                found[name] = [(str(item.dtype), item.nbytes) for item in group["vars"].values()]
    return found


def convolution_bytes(variables):
    return sum(size for name, stored in variables.items() if "conv2d" in name for _, size in stored)


def small_cnn():
    """Weights drawn by NumPy, not by the backend's initializers: the model, and so how close its
    top two classes come on the test faces, is then the same on every backend."""
    model = models.build_cnn(
        INPUT_SHAPE,
        NUM_CLASSES,
        models.preprocessing_layers(augment={"rotation_range": 10}),
        filters=(8, 16),
        dense=(16,),
    )
    rng = np.random.default_rng(0)
    for variable in model.weights:
        shape, kind = tuple(variable.shape), variable.path.rsplit("/", 1)[-1]
        if kind == "kernel":
            value = rng.normal(0, math.sqrt(2 / (math.prod(shape[:-1]) + shape[-1])), shape)
        elif kind in ("gamma", "moving_variance"):
            value = 1 + rng.normal(0, 0.05, shape)
        elif kind in ("bias", "beta", "moving_mean"):
            value = rng.normal(0, 0.05, shape)
        else:
            continue
        variable.assign(value.astype(variable.dtype))
    return model


@pytest.mark.parametrize("bits,layer_class,levels", [(8, Int8Conv2D, INT8_MAX), (4, Int4Conv2D, INT4_MAX)])
def test_each_kernel_is_within_half_a_step_of_the_float_one(bits, layer_class, levels):
    model = small_cnn()
    quantized = quantize_convolutions(model, bits)
    for layer in quantized.layers:
        if isinstance(layer, Int8Conv2D):
            assert type(layer) is layer_class
            original = model.get_layer(layer.name)
            kernel, scale = np.asarray(layer.kernel), np.asarray(layer.kernel_scale)
            assert scale.shape == (kernel.shape[-1],)  # one scale per filter
            assert (np.abs(kernel - np.asarray(original.kernel)) <= scale / 2 + 1e-7).all()
            steps = kernel / scale
            np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)
            assert (np.abs(np.round(steps)).max(axis=(0, 1, 2)) == levels).all()  # each filter uses its full range
            np.testing.assert_array_equal(np.asarray(layer.bias), np.asarray(original.bias))
    assert sum(isinstance(layer, layer_class) for layer in quantized.layers) == 4


def test_int8_ship_halves_a_cnn_and_predicts_like_it(tmp_path):
    source = tmp_path / "best.keras"
    save_model(small_cnn(), source, include_optimizer=False)
    halved, quartered = tmp_path / "cnn16.keras", tmp_path / "cnn8.keras"
    ship(source, halved)
    ship(source, quartered, int8=True)
    with pytest.raises(UserError, match="is an input of this command"):  # a run's best.keras, kept whole
        ship(source, source, force=True)

    stored = stored_variables(quartered)
    convolutions = [name for name in stored if "conv2d" in name]
    assert len(convolutions) == 4 and all(stored[name][0][0] == "int8" for name in convolutions)
    assert convolution_bytes(stored) < 0.6 * convolution_bytes(stored_variables(halved))

    faces = np.random.default_rng(1).integers(0, 256, (16, 48, 48, 1)).astype("float32")
    original = evaluation.load_model(source).predict(faces, verbose=0)
    shipped = evaluation.load_model(quartered).predict(faces, verbose=0)
    np.testing.assert_allclose(shipped, original, atol=2e-2)
    assert (shipped.argmax(axis=1) == original.argmax(axis=1)).mean() >= 0.9


def test_an_int8_dense_unit_of_tiny_weights_keeps_them(tmp_path):
    """Its scale, 127 / max |w|, passes float16's 65,504 below |w| = 0.002: stored as float16 it was inf,
    and the unit's output 0."""
    model = small_cnn()
    dense = model.get_layer("dense1")
    kernel = np.asarray(dense.kernel).copy()
    kernel[:, 0] *= 1e-3 / np.abs(kernel[:, 0]).max()
    dense.kernel.assign(kernel)
    source, shipped = tmp_path / "best.keras", tmp_path / "cnn8.keras"
    save_model(model, source, include_optimizer=False)
    ship(source, shipped, int8=True)
    restored = float_weights(evaluation.load_model(shipped).get_layer("dense1"))[0]
    assert np.isfinite(restored).all()
    np.testing.assert_allclose(restored[:, 0], kernel[:, 0], atol=1e-3 / INT8_MAX)


def test_int4_ship_halves_the_int8_kernels_again_and_also_takes_an_int8_file(tmp_path):
    source = tmp_path / "best.keras"
    save_model(small_cnn(), source, include_optimizer=False)
    eight, four, four_from_eight = tmp_path / "cnn8.keras", tmp_path / "cnn4.keras", tmp_path / "cnn4b.keras"
    ship(source, eight, int8=True)
    ship(source, four, int4=True)
    parameters, _ = ship(eight, four_from_eight, int4=True)
    assert parameters == evaluation.load_model(source).count_params()  # not counting the int8 file's scales

    stored_eight, stored_four = stored_variables(eight), stored_variables(four)
    kernels_eight, kernels_four = (
        [stored[name][0] for name in sorted(stored) if "conv2d" in name] for stored in (stored_eight, stored_four)
    )
    assert len(kernels_four) == len(kernels_eight) == 4
    for (dtype, size), (dtype_eight, size_eight) in zip(kernels_four, kernels_eight):
        assert (dtype, dtype_eight) == ("uint8", "int8") and size == (size_eight + 1) // 2
    assert "int8" in {dtype for name, stored in stored_four.items() if name.startswith("dense") for dtype, _ in stored}

    faces = np.random.default_rng(1).integers(0, 256, (16, 48, 48, 1)).astype("float32")
    original = evaluation.load_model(source).predict(faces, verbose=0)
    for path in (four, four_from_eight):
        shipped = evaluation.load_model(path).predict(faces, verbose=0)
        np.testing.assert_allclose(shipped, original, atol=5e-2)
        assert (shipped.argmax(axis=1) == original.argmax(axis=1)).mean() >= 0.8


@pytest.mark.parametrize("bits", [8, 4])
def test_init_from_a_shipped_model_continues_from_its_dequantized_weights(tmp_path, bits):
    """The shipped CNN and DNN hold int8 / 4-bit kernels; --init-from must still take them."""
    source, shipped = tmp_path / "best.keras", tmp_path / f"cnn{bits}.keras"
    save_model(small_cnn(), source, include_optimizer=False)
    ship(source, shipped, int8=bits == 8, int4=bits == 4)
    fresh = models.build_cnn(
        INPUT_SHAPE,
        NUM_CLASSES,
        models.preprocessing_layers(augment={"rotation_range": 10}),
        filters=(8, 16),
        dense=(16,),
    )
    training.start_from(fresh, shipped)

    assert not any(isinstance(layer, Int8Conv2D) for layer in fresh.layers)
    faces = np.random.default_rng(1).integers(0, 256, (16, 48, 48, 1)).astype("float32")
    original = evaluation.load_model(source).predict(faces, verbose=0)
    continued = fresh.predict(faces, verbose=0)
    np.testing.assert_allclose(continued, original, atol=5e-2)
    assert (continued.argmax(axis=1) == original.argmax(axis=1)).mean() >= 0.8


def test_a_mixed_precision_model_ships_in_float32(tmp_path):
    """A GPU run trains under mixed_float16; Keras refuses to quantize float16 layers, and a CPU predicts faster in
    float32."""
    import keras

    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        trained = small_cnn()
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    source = tmp_path / "best.keras"
    save_model(trained, source, include_optimizer=False)
    destination = tmp_path / "cnn8.keras"
    ship(source, destination, int8=True)

    shipped = evaluation.load_model(destination)
    assert {layer.compute_dtype for layer in shipped.layers} == {"float32"}
    faces = np.random.default_rng(1).integers(0, 256, (16, 48, 48, 1)).astype("float32")
    original = evaluation.load_model(source).predict(faces, verbose=0)
    np.testing.assert_allclose(shipped.predict(faces, verbose=0), original, atol=2e-2)
