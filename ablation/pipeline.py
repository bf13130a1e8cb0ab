"""The tf.data input pipeline and training-time augmentation, used by `python -m ablation`.

Pixels arrive decoded and resized (ablation.data's cache), so an epoch only shuffles, batches,
augments and prefetches; augmentation works on whole batches and touches training batches only.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from omegaconf import DictConfig

AUTOTUNE = tf.data.AUTOTUNE


def build_augmentation(aug: DictConfig, seed: int) -> keras.Sequential | None:
    """The Keras random layers an `augmentation` config asks for; None when it asks for nothing."""
    steps: list[layers.Layer] = []
    if aug.flip:
        # A left-right flip puts the heart on the wrong side: kept only to reproduce the reference study.
        steps.append(layers.RandomFlip("horizontal", seed=seed))
    if aug.rotation_deg:
        steps.append(layers.RandomRotation(aug.rotation_deg / 360, fill_mode="constant", seed=seed + 1))
    if aug.shift:
        steps.append(layers.RandomTranslation(aug.shift, aug.shift, fill_mode="constant", seed=seed + 2))
    if aug.zoom:
        steps.append(layers.RandomZoom(aug.zoom, fill_mode="constant", seed=seed + 3))
    if aug.brightness:
        steps.append(layers.RandomBrightness(aug.brightness, value_range=(0, 255), seed=seed + 4))
    if aug.contrast:
        steps.append(layers.RandomContrast(aug.contrast, value_range=(0, 255), seed=seed + 5))
    return keras.Sequential(steps, name="augmentation") if steps else None


def _as_float(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(images, tf.float32), tf.cast(labels, tf.float32)


def train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    augmentation: keras.Sequential | None = None,
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
    if augmentation is not None:
        ds = ds.map(lambda x, y: (augmentation(x, training=True), y), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Batches in file order, no augmentation: validation and test."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels.reshape(-1, 1)))
    return ds.batch(batch_size).map(_as_float, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
