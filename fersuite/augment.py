"""Augmentation as one Keras layer on the device: ImageDataGenerator's rotation, shifts, zoom
and horizontal flip fused into a single affine transform per image (one resampling per batch).
Mixup, which must blend the labels too, is the one augmentation done on the NumPy batches."""

import math

import keras
import numpy as np
from keras import layers, ops


@keras.saving.register_keras_serializable(package="fersuite")
class RandomAffine(layers.Layer):
    """Random rotation (degrees), shift (fraction of size), zoom and flip; identity at inference."""

    def __init__(
        self,
        rotation_range=0.0,
        width_shift_range=0.0,
        height_shift_range=0.0,
        zoom_range=0.0,
        horizontal_flip=False,
        fill_mode="nearest",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.rotation_range = float(rotation_range)
        self.width_shift_range = float(width_shift_range)
        self.height_shift_range = float(height_shift_range)
        self.zoom_range = float(zoom_range)
        self.horizontal_flip = bool(horizontal_flip)
        self.fill_mode = fill_mode
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _uniform(self, batch, limit):
        return keras.random.uniform((batch,), -limit, limit, seed=self.seed_generator)

    def transforms(self, batch, height, width):
        """Per-image [a0, a1, a2, b0, b1, b2, c0, c1] mapping output to input coordinates."""
        angle = self._uniform(batch, self.rotation_range * math.pi / 180.0)
        zoom_x = 1.0 + self._uniform(batch, self.zoom_range)
        zoom_y = 1.0 + self._uniform(batch, self.zoom_range)
        shift_x = self._uniform(batch, self.width_shift_range * width)
        shift_y = self._uniform(batch, self.height_shift_range * height)
        flip = ops.ones((batch,))
        if self.horizontal_flip:
            coin = keras.random.uniform((batch,), seed=self.seed_generator)
            flip = ops.where(coin < 0.5, -1.0, 1.0)
        cos, sin = ops.cos(angle), ops.sin(angle)
        a0, a1 = cos * zoom_x * flip, -sin * zoom_y
        b0, b1 = sin * zoom_x * flip, cos * zoom_y
        center_x, center_y = (width - 1) / 2.0, (height - 1) / 2.0
        a2 = center_x - a0 * center_x - a1 * center_y + shift_x
        b2 = center_y - b0 * center_x - b1 * center_y + shift_y
        zeros = ops.zeros((batch,))
        return ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)

    def call(self, images, training=False):
        if not training:
            return images
        shape = ops.shape(images)
        transforms = self.transforms(shape[0], images.shape[1], images.shape[2])
        return ops.image.affine_transform(
            images, ops.cast(transforms, images.dtype), fill_mode=self.fill_mode, data_format="channels_last"
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "rotation_range": self.rotation_range,
            "width_shift_range": self.width_shift_range,
            "height_shift_range": self.height_shift_range,
            "zoom_range": self.zoom_range,
            "horizontal_flip": self.horizontal_flip,
            "fill_mode": self.fill_mode,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="fersuite")
class RandomErasing(layers.Layer):
    """Random erasing (Zhong et al. 2017): blank one rectangle per image with probability p."""

    def __init__(self, probability=0.5, max_area=0.25, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.probability = float(probability)
        self.max_area = float(max_area)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=False):
        if not training or self.probability <= 0:
            return images
        batch = ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]

        def uniform(low, high):
            return keras.random.uniform((batch, 1, 1, 1), low, high, seed=self.seed_generator)

        side = ops.sqrt(uniform(0.02, self.max_area))
        aspect = ops.exp(uniform(math.log(0.3), math.log(3.3)))
        half_h = side * ops.sqrt(aspect) * height / 2
        half_w = side / ops.sqrt(aspect) * width / 2
        center_y, center_x = uniform(0, height), uniform(0, width)
        rows = ops.reshape(ops.arange(height, dtype="float32"), (1, height, 1, 1))
        cols = ops.reshape(ops.arange(width, dtype="float32"), (1, 1, width, 1))
        inside = (ops.abs(rows - center_y) < half_h) & (ops.abs(cols - center_x) < half_w)
        chosen = uniform(0, 1) < self.probability
        mean = ops.mean(images, axis=(1, 2, 3), keepdims=True)
        return ops.where(inside & chosen, ops.cast(mean, images.dtype), images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "probability": self.probability,
            "max_area": self.max_area,
            "seed": self.seed,
        }


def full_batch_order(count, batch_size, rng):
    """A shuffled order of `count` rows with random repeats appended up to a whole number of batches.

    A smaller last batch is a new input shape, and under JAX the training step compiles again for
    it: a second compile in the first epoch (10-20 s on a 2-core CPU; on a GPU, where the first
    epoch took 50 s for the CNN and two minutes for the MobileNet, XLA also autotunes it). A few
    repeated faces per epoch cost nothing in comparison."""
    missing = -count % batch_size
    return np.concatenate([rng.permutation(count), rng.choice(count, missing, replace=missing > count)])


class MixUpBatches(keras.utils.PyDataset):
    """Shuffled training batches with mixup (Zhang et al. 2018): each image and its target are
    blended with another image of the batch, x = lam * x_i + (1 - lam) * x_j, lam ~ Beta(alpha, alpha).

    Targets between two emotions discourage over-confident predictions on FER's many ambiguous
    faces. The model's own augmentation layers still run on the blended images."""

    def __init__(self, pixels, targets, batch_size, alpha, sample_weights=None, seed=0, first_epoch=0, **kwargs):
        super().__init__(**kwargs)
        self.pixels, self.targets, self.sample_weights = pixels, targets, sample_weights
        self.batch_size, self.alpha, self.seed = batch_size, alpha, seed
        self.epoch = first_epoch
        self.order = self._shuffled()

    def _shuffled(self):
        return full_batch_order(len(self.pixels), self.batch_size, np.random.default_rng((self.seed, self.epoch)))

    def __len__(self):
        return math.ceil(len(self.pixels) / self.batch_size)

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        lam = rng.beta(self.alpha, self.alpha, len(rows)).astype("float32")
        partner = rng.permutation(len(rows))

        def blend(values):
            share = lam.reshape((-1,) + (1,) * (values.ndim - 1))
            return share * values + (1 - share) * values[partner]

        batch = (blend(self.pixels[rows].astype("float32")), blend(self.targets[rows]))
        if self.sample_weights is not None:
            batch += (blend(self.sample_weights[rows]),)
        return batch

    def on_epoch_end(self):
        self.epoch += 1
        self.order = self._shuffled()
