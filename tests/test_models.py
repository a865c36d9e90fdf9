"""The builders express the reports' networks exactly and size the DNN to a budget."""

import math

import keras
import numpy as np
import pytest

from fersuite import INPUT_SHAPE, NUM_CLASSES, models
from fersuite.augment import RandomAffine, RandomErasing


def test_default_cnn_is_the_hw3_network():
    assert models.build_cnn(INPUT_SHAPE, NUM_CLASSES).count_params() == 5_927_239


def test_hw8_mobilenet_is_the_reports_network():
    assert models.build_hw8_mobilenet(INPUT_SHAPE, NUM_CLASSES).count_params() == 73_095


def test_default_mobilenet_fits_the_60k_budget_and_uses_separable_blocks():
    model = models.build_mobilenet(INPUT_SHAPE, NUM_CLASSES)
    assert model.count_params() == 59_607
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"DepthwiseConv2D", "Add", "GlobalAveragePooling2D"} <= kinds


@pytest.mark.parametrize(
    "budget,depth",
    [(5_927_239, 3), (1_500_000, 3), (1_000_000, 2), (300_000, 1), (60_000, 4), (33_943, 3), (2_400, 3), (50_000, 1)],
)
def test_dnn_is_the_widest_within_the_budget(budget, depth):
    """The default (the CNN's 5,927,239) built 5,930,335; a 34k budget was refused though 32,963 fit."""
    units = models.dnn_units_for_budget(budget, INPUT_SHAPE, NUM_CLASSES, depth)
    model = models.build_dnn(INPUT_SHAPE, NUM_CLASSES, units=units)
    assert len(units) == depth and len(set(units)) == 1
    assert model.count_params() <= budget < models.dnn_parameter_count(48 * 48, NUM_CLASSES, [units[0] + 1] * depth)
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
    kept = [np.allclose(result, image, atol=1e-3) for image, result in zip(images, out)]
    mirrored = [np.allclose(result, image[:, ::-1], atol=1e-3) for image, result in zip(images, out)]
    assert all(np.logical_or(kept, mirrored)) and 3 <= sum(mirrored) <= 13


def dot_positions(settings, count=64):
    """Where a blurred dot 12 pixels right of the centre lands in `count` augmented copies: (row, column)
    offsets from the centre, by the intensity-weighted centroid."""
    rows, cols = np.mgrid[0:48, 0:48] - 23.5
    dot = np.exp(-((rows**2 + (cols - 12) ** 2) / (2 * 1.5**2))).astype("float32")
    out = np.asarray(RandomAffine(**settings, seed=3)(np.tile(dot[None, :, :, None], (count, 1, 1, 1)), training=True))
    mass = out[..., 0].sum(axis=(1, 2))
    return (out[..., 0] * rows).sum(axis=(1, 2)) / mass, (out[..., 0] * cols).sum(axis=(1, 2)) / mass


def test_each_augmentation_moves_a_dot_within_its_range():
    """ImageDataGenerator's meaning of each setting: degrees, fractions of the size, zoom 1 ± range."""
    row, col = dot_positions({"width_shift_range": 0.1})
    assert np.abs(row).max() < 0.05 and np.abs(col - 12).max() <= 4.8 + 0.05 and np.abs(col - 12).max() > 3
    row, col = dot_positions({"height_shift_range": 0.1})
    assert np.abs(col - 12).max() < 0.05 and np.abs(row).max() <= 4.8 + 0.05 and np.abs(row).max() > 3
    row, col = dot_positions({"rotation_range": 10})
    angle = np.degrees(np.arctan2(row, col))
    assert np.abs(np.hypot(row, col) - 12).max() < 0.2 and np.abs(angle).max() <= 10.3 and np.abs(angle).max() > 6
    row, col = dot_positions({"zoom_range": 0.1})
    assert np.abs(row).max() < 0.05 and 12 / 1.1 - 0.1 <= col.min() and col.max() <= 12 / 0.9 + 0.1
    assert col.max() - col.min() > 1.5


def test_random_erasing_blanks_one_rectangle_to_the_faces_mean():
    images = np.random.default_rng(4).uniform(0, 255, (64, 48, 48, 1)).astype("float32")
    np.testing.assert_array_equal(np.asarray(RandomErasing(0.0, seed=1)(images, training=True)), images)
    np.testing.assert_array_equal(np.asarray(RandomErasing(1.0, seed=1)(images, training=False)), images)
    out = np.asarray(RandomErasing(1.0, seed=1)(images, training=True))
    changed = out != images
    means = images.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(np.where(changed, out, means), np.broadcast_to(means, out.shape), rtol=1e-5)
    for mask in changed[..., 0]:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        assert mask.sum() == len(rows) * len(cols) == mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].sum()
    area = changed.mean(axis=(1, 2, 3))
    assert (area > 0).all() and area.max() <= 0.3 and area.mean() > 0.03
    half = np.asarray(RandomErasing(0.5, seed=1)(images, training=True))
    assert 16 <= (half != images).any(axis=(1, 2, 3)).sum() <= 48


def test_augmentation_and_erasing_draw_different_numbers_from_one_seed():
    """One seed for both layers once made their draws equal: with no flip (five draws a step each)
    a face was erased exactly when it was shifted up."""
    settings = {"rotation_range": 10, "width_shift_range": 0.1, "height_shift_range": 0.1, "zoom_range": 0.1}
    augment, erasing = models.preprocessing_layers(augment=settings, erasing=0.5, seed=3)[:2]
    draws = [np.asarray(keras.random.uniform((64,), seed=layer.seed_generator)) for layer in (augment, erasing)]
    assert np.abs(draws[0] - draws[1]).max() > 0.1


def test_a_fifth_mobilenet_stage_adds_a_shortcut_of_its_own_size():
    """The fifth stage meets a 3x3 map: its shortcut pooled to 1x1 was broadcast over the 2x2 main path."""
    model = models.build_mobilenet(INPUT_SHAPE, NUM_CLASSES, stages=(8, 8, 8, 8, 8), alpha=0.5)
    for stage in range(1, 6):
        main, shortcut = (model.get_layer(f"stage{stage}_{name}").output.shape[1:3] for name in ("pool", "shortcut_bn"))
        assert main == shortcut == (math.ceil(48 / 2**stage),) * 2


def test_models_with_augmentation_survive_a_save_and_load(tmp_path):
    model = models.build_mobilenet(
        INPUT_SHAPE, NUM_CLASSES, models.preprocessing_layers(augment={"zoom_range": 0.1}, erasing=0.5), alpha=0.25
    )
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    images = np.random.default_rng(2).uniform(0, 255, (2, 48, 48, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)
