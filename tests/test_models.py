"""The builders express the reports' networks exactly and size the DNN to a budget."""

import keras
import numpy as np
import pytest

from fersuite import INPUT_SHAPE, NUM_CLASSES, models
from fersuite.augment import RandomAffine


def test_default_cnn_is_the_hw3_network():
    assert models.build_cnn(INPUT_SHAPE, NUM_CLASSES).count_params() == 5_927_239


def test_hw8_mobilenet_is_the_reports_network():
    assert models.build_hw8_mobilenet(INPUT_SHAPE, NUM_CLASSES).count_params() == 73_095


def test_default_mobilenet_fits_the_60k_budget_and_uses_separable_blocks():
    model = models.build_mobilenet(INPUT_SHAPE, NUM_CLASSES)
    assert model.count_params() == 59_607
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"DepthwiseConv2D", "Add", "GlobalAveragePooling2D"} <= kinds


@pytest.mark.parametrize("budget,depth", [(5_927_239, 3), (1_000_000, 2), (300_000, 1), (60_000, 4)])
def test_dnn_lands_within_two_percent_of_the_budget(budget, depth):
    units = models.dnn_units_for_budget(budget, INPUT_SHAPE, NUM_CLASSES, depth)
    model = models.build_dnn(INPUT_SHAPE, NUM_CLASSES, units=units)
    assert len(units) == depth
    assert abs(model.count_params() - budget) / budget < 0.02
    assert models.dnn_parameter_count(48 * 48, NUM_CLASSES, units) == model.count_params()


@pytest.mark.parametrize("builder", [models.build_mobilenet, models.build_hw8_mobilenet])
def test_mobilenet_width_multiplier_shrinks_it(builder):
    counts = [builder(INPUT_SHAPE, NUM_CLASSES, alpha=alpha).count_params() for alpha in (0.25, 0.5, 1.0, 2.0)]
    assert counts == sorted(counts) and counts[0] < 10_000 and counts[-1] > 100_000


def test_preprocessing_adds_no_parameters_and_scales_inside_the_model():
    plain = models.build_cnn(INPUT_SHAPE, NUM_CLASSES, filters=(4,), dense=(8,))
    wrapped = models.build_cnn(
        INPUT_SHAPE, NUM_CLASSES, models.preprocessing_layers(augment={"rotation_range": 10}), filters=(4,), dense=(8,)
    )
    assert wrapped.count_params() == plain.count_params()
    scaled = keras.Model(wrapped.input, wrapped.get_layer("rescale").output)
    np.testing.assert_allclose(scaled.predict(np.full((1, 48, 48, 1), 255.0), verbose=0), 1.0)


def test_featurewise_normalization_uses_training_statistics():
    layer = models.preprocessing_layers(normalization="featurewise", mean=100.0, std=50.0)[-1]
    np.testing.assert_allclose(np.asarray(layer(np.array([[100.0, 150.0]]))), [[0.0, 1.0]], atol=1e-6)


def test_augmentation_changes_images_only_in_training():
    images = np.random.default_rng(0).uniform(0, 255, (8, 48, 48, 1)).astype("float32")
    layer = RandomAffine(10, 0.1, 0.1, 0.1, True, seed=1)
    np.testing.assert_array_equal(np.asarray(layer(images, training=False)), images)
    assert np.abs(np.asarray(layer(images, training=True)) - images).mean() > 1.0
    identity = RandomAffine(seed=1)
    np.testing.assert_allclose(np.asarray(identity(images, training=True)), images, atol=1e-3)


def test_horizontal_flip_alone_mirrors_or_keeps_each_image():
    images = np.random.default_rng(1).uniform(0, 255, (16, 48, 48, 1)).astype("float32")
    out = np.asarray(RandomAffine(horizontal_flip=True, seed=2)(images, training=True))
    for image, result in zip(images, out):
        assert np.allclose(result, image, atol=1e-3) or np.allclose(result, image[:, ::-1], atol=1e-3)
    assert not np.allclose(out, images, atol=1e-3)


def test_models_with_augmentation_survive_a_save_and_load(tmp_path):
    model = models.build_mobilenet(
        INPUT_SHAPE, NUM_CLASSES, models.preprocessing_layers(augment={"zoom_range": 0.1}, erasing=0.5), alpha=0.25
    )
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    images = np.random.default_rng(2).uniform(0, 255, (2, 48, 48, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)
