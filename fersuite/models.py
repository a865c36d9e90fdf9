"""The three model families. Every builder shares one signature,
`build_x(input_shape, num_classes, preprocessing=(), **options) -> keras.Model`, and takes raw
0..255 pixels: scaling and augmentation are layers inside the model, so a saved `.keras` file
needs nothing else at prediction time."""

import math

import keras
import numpy as np
from keras import layers

from fersuite import CNN_FILTERS
from fersuite.augment import RandomAffine, RandomErasing

MOBILENET_STAGES = (16, 32, 64, 144)
HW8_MOBILENET_BLOCKS = (16, 16, 32, 32, 64, 64, 128, 128)


def preprocessing_layers(
    augment=None, erasing=0.0, normalization="unit", mean=0.0, std=255.0, seed=None
):
    """Layers between the Input and the network: augmentation (training only), then scaling.

    augment: RandomAffine options (rotation_range, width_shift_range, ...) or None.
    normalization: 'unit' scales to [0, 1]; 'featurewise' subtracts the training mean, divides by std.
    """
    stack = []
    if augment:
        stack.append(RandomAffine(**augment, seed=seed, name="augment"))
    if erasing > 0:
        stack.append(RandomErasing(erasing, seed=_second_seed(seed), name="random_erasing"))
    if normalization == "featurewise":
        stack.append(layers.Rescaling(1.0 / std, offset=-mean / std, name="normalize"))
    else:
        stack.append(layers.Rescaling(1.0 / 255, name="rescale"))
    return stack


def _second_seed(seed):
    """A seed for a second random layer whose draws share none of the first's: with one seed both
    would draw the same numbers in step: with no flip, a face was erased exactly when its vertical
    shift had one sign, and the patch's size followed the rotation.
    (Not seed + 1: torch seeds from the sum of a SeedGenerator's two state numbers.)"""
    return None if seed is None else (seed + 2**30) % 2**31


def _inputs(input_shape, preprocessing):
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = inputs
    for layer in preprocessing:
        x = layer(x)
    return inputs, x


def _classifier(x, num_classes):
    """Softmax kept in float32 so mixed precision cannot produce NaN probabilities."""
    x = layers.Dense(num_classes, name="logits")(x)
    return layers.Activation("softmax", dtype="float32", name="emotion")(x)


def build_cnn(
    input_shape,
    num_classes,
    preprocessing=(),
    filters=CNN_FILTERS,
    convs_per_block=2,
    kernel_size=3,
    dense=(512, 512),
    conv_dropout=0.25,
    dense_dropout=0.5,
    negative_slope=0.1,
    name="cnn",
):
    """VGG-style: blocks of [Conv -> BatchNorm -> LeakyReLU] x n, MaxPool, Dropout; Dense head.

    The defaults are the 5,927,239-parameter network of the 2018 HW3 report.
    """
    inputs, x = _inputs(input_shape, preprocessing)
    for block, width in enumerate(filters, start=1):
        for conv in range(1, convs_per_block + 1):
            x = layers.Conv2D(width, kernel_size, padding="same", name=f"block{block}_conv{conv}")(x)
            x = layers.BatchNormalization(name=f"block{block}_bn{conv}")(x)
            x = layers.LeakyReLU(negative_slope, name=f"block{block}_act{conv}")(x)
        x = layers.MaxPooling2D(name=f"block{block}_pool")(x)
        x = layers.Dropout(conv_dropout, name=f"block{block}_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    for index, units in enumerate(dense, start=1):
        x = layers.Dense(units, name=f"dense{index}")(x)
        x = layers.BatchNormalization(name=f"dense{index}_bn")(x)
        x = layers.LeakyReLU(negative_slope, name=f"dense{index}_act")(x)
        x = layers.Dropout(dense_dropout, name=f"dense{index}_dropout")(x)
    return keras.Model(inputs, _classifier(x, num_classes), name=name)


def build_dnn(
    input_shape, num_classes, preprocessing=(), units=(1024, 1024, 1024), dropout=0.3, name="dnn"
):
    """Fully connected: Flatten, then [Dense -> BatchNorm -> ReLU -> Dropout] per entry of units."""
    inputs, x = _inputs(input_shape, preprocessing)
    x = layers.Flatten(name="flatten")(x)
    for index, width in enumerate(units, start=1):
        x = layers.Dense(width, name=f"dense{index}")(x)
        x = layers.BatchNormalization(name=f"dense{index}_bn")(x)
        x = layers.Activation("relu", name=f"dense{index}_act")(x)
        x = layers.Dropout(dropout, name=f"dense{index}_dropout")(x)
    return keras.Model(inputs, _classifier(x, num_classes), name=name)


def dnn_parameter_count(input_size, num_classes, units):
    """Closed form for build_dnn: Dense weights + bias, BatchNorm's 4 per unit, then the output."""
    total, previous = 0, input_size
    for width in units:
        total += previous * width + width + 4 * width
        previous = width
    return total + previous * num_classes + num_classes


def dnn_units_for_budget(budget, input_shape, num_classes, depth=3):
    """Equal widths for `depth` layers: the widest whose total parameter count stays within the budget
    (a DNN compared with a CNN "at its size" must not be the larger); width 1 if even that is over it."""
    if depth < 1:
        raise ValueError("depth must be at least 1")
    input_size = math.prod(input_shape)
    # (depth - 1) w^2 + (input_size + 5 depth + num_classes) w + num_classes = budget
    a, b, c = depth - 1, input_size + 5 * depth + num_classes, num_classes - budget
    width = max(1, math.floor(-c / b if a == 0 else (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)) + 1)
    while width > 1 and dnn_parameter_count(input_size, num_classes, [width] * depth) > budget:
        width -= 1  # from one above the root, against its rounding
    return (width,) * depth


def _scaled(channels, alpha):
    return max(1, round(channels * alpha))


def _separable(x, width, label, activate=True):
    """MobileNet's block: depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN (-> ReLU)."""
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{label}_depthwise")(x)
    x = layers.BatchNormalization(name=f"{label}_depthwise_bn")(x)
    x = layers.ReLU(name=f"{label}_depthwise_act")(x)
    x = layers.Conv2D(width, 1, use_bias=False, name=f"{label}_pointwise")(x)
    x = layers.BatchNormalization(name=f"{label}_pointwise_bn")(x)
    return layers.ReLU(name=f"{label}_pointwise_act")(x) if activate else x


def build_mobilenet(
    input_shape,
    num_classes,
    preprocessing=(),
    alpha=1.0,
    stem=(8, 8),
    stages=MOBILENET_STAGES,
    blocks_per_stage=2,
    dropout=0.1,
    name="mobilenet",
):
    """Residual depthwise-separable network in mini-Xception's layout, at 59,607 parameters.

    A stem of 3x3 convolutions, then per stage `blocks_per_stage` separable blocks and a
    3x3/2 MaxPool, added to a shortcut (2x2 AvgPool -> 1x1 conv -> BN); global average
    pooling and one Dense layer. Spending the parameters on convolutions instead of a wide
    Dense head is what lifts it above the HW8 network. The shortcut pools before its 1x1
    convolution because a strided 1x1 convolution corrupts memory in the backward pass of TF
    2.21's oneDNN CPU kernels (oneDNN issue 6035). `alpha` scales every width.
    """
    inputs, x = _inputs(input_shape, preprocessing)
    for index, width in enumerate(stem, start=1):
        x = layers.Conv2D(_scaled(width, alpha), 3, padding="same", use_bias=False, name=f"stem_conv{index}")(x)
        x = layers.BatchNormalization(name=f"stem_bn{index}")(x)
        x = layers.ReLU(name=f"stem_act{index}")(x)
    for stage, width in enumerate(stages, start=1):
        width = _scaled(width, alpha)
        shortcut = layers.AveragePooling2D(2, padding="same", name=f"stage{stage}_shortcut_pool")(x)
        shortcut = layers.Conv2D(width, 1, use_bias=False, name=f"stage{stage}_shortcut_conv")(shortcut)
        shortcut = layers.BatchNormalization(name=f"stage{stage}_shortcut_bn")(shortcut)
        for block in range(1, blocks_per_stage + 1):
            x = _separable(x, width, f"stage{stage}_block{block}", activate=block < blocks_per_stage)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"stage{stage}_pool")(x)
        x = layers.Add(name=f"stage{stage}_add")([x, shortcut])
        x = layers.ReLU(name=f"stage{stage}_act")(x)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, _classifier(x, num_classes), name=name)


def build_hw8_mobilenet(
    input_shape,
    num_classes,
    preprocessing=(),
    alpha=1.0,
    stem=8,
    blocks=HW8_MOBILENET_BLOCKS,
    strided=(3, 5, 7),
    last_kernel=2,
    dense=64,
    dropout=0.2,
    negative_slope=0.3,
    name="mobilenet_hw8",
):
    """The HW8 report's network, kept as a preset. Depthwise-separable: Conv stem, then [depthwise -> BN ->
    LeakyReLU -> pointwise -> BN -> LeakyReLU] blocks (1-based `strided` ones use stride 2, valid padding),
    a `last_kernel` depthwise in the last block, MaxPool, Dropout, Dense head. The defaults are the
    73,095-parameter network of the HW8 report; `alpha` scales every width."""

    def activate(x, label):
        x = layers.BatchNormalization(name=f"{label}_bn")(x)
        return layers.LeakyReLU(negative_slope, name=f"{label}_act")(x)

    inputs, x = _inputs(input_shape, preprocessing)
    x = layers.Conv2D(_scaled(stem, alpha), 3, padding="same", name="stem_conv")(x)
    x = activate(x, "stem")
    for index, width in enumerate(blocks, start=1):
        stride = 2 if index in strided else 1
        last = index == len(blocks)
        x = layers.DepthwiseConv2D(
            last_kernel if last else 3,
            strides=stride,
            padding="valid" if stride == 2 or last else "same",
            name=f"block{index}_depthwise",
        )(x)
        x = activate(x, f"block{index}_depthwise")
        x = layers.Conv2D(_scaled(width, alpha), 1, name=f"block{index}_pointwise")(x)
        x = activate(x, f"block{index}_pointwise")
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="pool_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(_scaled(dense, alpha), name="dense")(x)
    x = layers.BatchNormalization(name="dense_bn")(x)
    x = layers.Dropout(dropout, name="dense_dropout")(x)
    x = layers.LeakyReLU(negative_slope, name="dense_act")(x)
    return keras.Model(inputs, _classifier(x, num_classes), name=name)


BUILDERS = {"cnn": build_cnn, "dnn": build_dnn, "mobilenet": build_mobilenet}


def trainable_parameter_count(model):
    return int(sum(np.prod(weight.shape) for weight in model.trainable_weights))
