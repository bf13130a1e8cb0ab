"""The tf.data input pipeline and training-time augmentation, used by `python -m ablation`.

Pixels arrive decoded and resized (ablation.data's cache), so an epoch only shuffles, batches,
augments and prefetches; augmentation works on whole batches and touches training batches only.

Augmentation draws its random parameters with stateless ops from a seed per batch. Keras' random layers
keep their generator state in a variable, and under op determinism (`trainer.deterministic`, the default)
TensorFlow then runs the whole map serially and without prefetch; stateless ops leave tf.data free to
run it in parallel and ahead of the training step, with the same batches for the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from omegaconf import DictConfig

AUTOTUNE = tf.data.AUTOTUNE

# Augments a float32 batch (B, H, W, C) of pixels in [0, 255] with parameters drawn from `seed` (int, shape [2]).
Augment = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def build_augmentation(aug: DictConfig) -> Augment | None:
    """The batch augmentation an `augmentation` config asks for; None when it asks for nothing.

    Flip, rotation, shift, zoom and aspect stretch compose into one affine map per image, so each batch
    is resampled once (bilinear, black outside the image); then brightness and contrast, clipped to [0, 255].
    """
    flip = bool(aug.flip)
    rotation, shift, zoom = math.radians(aug.rotation_deg), float(aug.shift), float(aug.zoom)
    log_aspect = math.log1p(aug.aspect)
    brightness, contrast = float(aug.brightness) * 255, float(aug.contrast)
    geometric = flip or rotation or shift or zoom or log_aspect
    if not (geometric or brightness or contrast):
        return None

    def augment(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        n = tf.shape(images)[0]
        seeds = tf.random.experimental.stateless_split(seed, 8)

        def uniform(i: int, half_width: float, center: float = 0.0) -> tf.Tensor:
            return tf.random.stateless_uniform([n], seeds[i], center - half_width, center + half_width)

        if geometric:
            # Output pixel p reads input pixel c + zoom * A * R(angle) * M (p - c) - offset, M the mirror or not
            # and A = diag(sqrt(q), 1 / sqrt(q)) changing the width/height ratio by q, log-uniform in
            # [1 / (1 + aspect), 1 + aspect].
            height, width = (tf.cast(side, tf.float32) for side in (tf.shape(images)[1], tf.shape(images)[2]))
            mirror = tf.where(uniform(0, 0.5) < 0, -1.0, 1.0) if flip else tf.ones([n])
            angle, scale = uniform(1, rotation), uniform(2, zoom, 1.0)
            dx, dy = uniform(3, shift) * width, uniform(4, shift) * height
            stretch = tf.exp(uniform(7, log_aspect / 2))
            cos, sin = scale * tf.cos(angle), scale * tf.sin(angle)
            a0, a1, a3, a4 = cos * mirror * stretch, -sin * stretch, sin * mirror / stretch, cos / stretch
            cx, cy = (width - 1) / 2, (height - 1) / 2
            zeros = tf.zeros([n])
            transforms = tf.stack(
                [a0, a1, cx - a0 * cx - a1 * cy - dx, a3, a4, cy - a3 * cx - a4 * cy - dy, zeros, zeros], axis=1
            )
            images = tf.raw_ops.ImageProjectiveTransformV3(
                images=images,
                transforms=transforms,
                output_shape=tf.shape(images)[1:3],
                fill_value=0.0,
                interpolation="BILINEAR",
                fill_mode="CONSTANT",
            )
        if brightness:
            images = images + uniform(5, brightness)[:, None, None, None]
        if contrast:
            mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
            images = (images - mean) * uniform(6, contrast, 1.0)[:, None, None, None] + mean
        return tf.clip_by_value(images, 0.0, 255.0)

    return augment


class DeviceAugmentation(layers.Layer):
    """`augment` as a model's first layer (`trainer.augment_on=model`): it runs where the model runs, the
    GPU when there is one, and only in training."""

    def __init__(self, augment: Augment, seed: int, **kwargs):
        super().__init__(dtype="float32", **kwargs)  # pixels stay float32 under a mixed-precision policy
        self.augment = augment
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=False):
        if not training:
            return images
        return self.augment(images, tf.cast(self.seed_generator.next(), tf.int32))


def _as_float(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(images, tf.float32), tf.cast(labels, tf.float32)


def train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    augment: Augment | None = None,
    oversample: bool = False,
) -> tf.data.Dataset:
    """Shuffled (or class-balanced when `oversample`), batched, augmented, prefetched training batches.

    One epoch is `len(images)` examples either way, so epochs stay comparable across weightings.
    """
    labels = labels.reshape(-1, 1)
    if oversample:
        per_class = [
            tf.data.Dataset.from_tensor_slices((images[mask], labels[mask]))
            .shuffle(int(mask.sum()), seed=seed, reshuffle_each_iteration=True)
            .repeat()
            for mask in (labels[:, 0] == 0, labels[:, 0] == 1)
        ]
        ds = tf.data.Dataset.sample_from_datasets(per_class, weights=[0.5, 0.5], seed=seed)
        ds = ds.take(len(images))
    else:
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(_as_float, num_parallel_calls=AUTOTUNE)
    if augment is not None:
        # A stateless seed per batch: the same for the same seed, new ones every epoch.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda batch, batch_seed: (augment(batch[0], batch_seed), batch[1]), num_parallel_calls=AUTOTUNE
        )
    return ds.prefetch(AUTOTUNE)


def eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Batches in file order, no augmentation: validation and test."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels.reshape(-1, 1)))
    return ds.batch(batch_size).map(_as_float, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
