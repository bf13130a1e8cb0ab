"""The whole input feed and training-time augmentation of `python -m ablation`, for either backend.

Pixels arrive decoded and resized (ablation.data's cache), so an epoch only shuffles, batches, mixes (mixup),
augments and feeds. Under TensorFlow the feed is tf.data (`tf_train_dataset`), where the augmentation runs on the
CPU ahead of the training step (`trainer.augment_on=data`); under JAX it is `ArrayBatches`, a prefetching
`keras.utils.PyDataset` over the cached arrays, and the augmentation runs as the model's first layer, on
the device. The augmentation is written in `keras.ops` and `keras.random`, so both are the same code.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops
from omegaconf import DictConfig

from ablation import backend

ERASED_AREA = (0.02, 0.4)  # random erasing's rectangle, as a fraction of the image (Zhong et al. 2017)
ERASED_RATIO = (0.3, 1 / 0.3)  # and its height/width ratio


class Augmentation:
    """Flip, rotation, shift, zoom and aspect stretch compose into one affine map per image, so each batch is
    resampled once (`keras.ops.image.affine_transform`, bilinear, black outside the image); then brightness
    and contrast; then random erasing (`erasing`: the chance that one rectangle of the image is set to the image's
    mean grey); clipped to [0, 255]. Images are float32 (B, H, W, C) in [0, 255].

    `augmentation(images, seed)` draws each image's parameters from `seed`, an int or a
    `keras.random.SeedGenerator`; `apply(images, parameters)` takes them given (the same geometry on every backend).
    """

    def __init__(self, aug: DictConfig):
        self.flip = bool(aug.flip)
        self.rotation, self.shift, self.zoom = math.radians(aug.rotation_deg), float(aug.shift), float(aug.zoom)
        self.log_aspect = math.log1p(aug.aspect)
        self.brightness, self.contrast = float(aug.brightness) * 255, float(aug.contrast)
        self.erasing = float(aug.erasing)
        self.geometric = bool(self.flip or self.rotation or self.shift or self.zoom or self.log_aspect)

    def __bool__(self) -> bool:
        return bool(self.geometric or self.brightness or self.contrast or self.erasing)

    def parameters(self, n, seed) -> dict:
        """Per-image parameters, each of shape (n,): mirror (+-1), angle (rad), scale, shift_x and shift_y (fractions
        of the side), stretch (the width/height factor is its square), brightness (added), contrast (factor); with
        erasing, also erase (1 or 0), the erased rectangle's centre (erase_y, erase_x) and sides (erase_height,
        erase_width), fractions of the image's. Erasing's draws come last, so without it the others are unchanged."""
        generator = seed if isinstance(seed, keras.random.SeedGenerator) else keras.random.SeedGenerator(seed)

        def uniform(half_width: float, center: float = 0.0):
            return keras.random.uniform((n,), center - half_width, center + half_width, seed=generator)

        parameters = {
            "mirror": ops.where(uniform(0.5) < 0, -1.0, 1.0) if self.flip else ops.ones((n,)),
            "angle": uniform(self.rotation),
            "scale": uniform(self.zoom, 1.0),
            "shift_x": uniform(self.shift),
            "shift_y": uniform(self.shift),
            "stretch": ops.exp(uniform(self.log_aspect / 2)),  # width/height ratio log-uniform in 1/(1+a) .. 1+a
            "brightness": uniform(self.brightness),
            "contrast": uniform(self.contrast, 1.0),
        }
        if self.erasing:
            area = uniform((ERASED_AREA[1] - ERASED_AREA[0]) / 2, sum(ERASED_AREA) / 2)
            log_ratio = uniform(math.log(ERASED_RATIO[1]))  # the ratio range is symmetric in log
            erase_height = ops.minimum(ops.sqrt(area * ops.exp(log_ratio)), 1.0)
            erase_width = ops.minimum(ops.sqrt(area / ops.exp(log_ratio)), 1.0)
            parameters |= {
                "erase": ops.cast(uniform(0.5, 0.5) < self.erasing, "float32"),
                # centres that keep the rectangle inside the image
                "erase_y": erase_height / 2 + uniform(0.5, 0.5) * (1 - erase_height),
                "erase_x": erase_width / 2 + uniform(0.5, 0.5) * (1 - erase_width),
                "erase_height": erase_height,
                "erase_width": erase_width,
            }
        return parameters

    def apply(self, images, p: dict):
        if self.geometric:
            # Output pixel q reads input pixel c + scale * A * R(angle) * M (q - c) - shift, M the mirror or not
            # and A = diag(stretch, 1 / stretch).
            height, width = (ops.cast(side, "float32") for side in ops.shape(images)[1:3])
            stretch, mirror = p["stretch"], p["mirror"]
            cos, sin = p["scale"] * ops.cos(p["angle"]), p["scale"] * ops.sin(p["angle"])
            a0, a1, a3, a4 = cos * mirror * stretch, -sin * stretch, sin * mirror / stretch, cos / stretch
            cx, cy = (width - 1) / 2, (height - 1) / 2
            dx, dy = p["shift_x"] * width, p["shift_y"] * height
            zeros = ops.zeros_like(a0)
            transforms = ops.stack(
                [a0, a1, cx - a0 * cx - a1 * cy - dx, a3, a4, cy - a3 * cx - a4 * cy - dy, zeros, zeros], axis=1
            )
            images = ops.image.affine_transform(images, transforms, "bilinear", "constant", 0.0)
        if self.brightness:
            images = images + p["brightness"][:, None, None, None]
        if self.contrast:
            mean = ops.mean(images, axis=(1, 2, 3), keepdims=True)
            images = (images - mean) * p["contrast"][:, None, None, None] + mean
        if self.erasing:
            images = _erased(images, p)
        return ops.clip(images, 0.0, 255.0)

    def __call__(self, images, seed):
        return self.apply(images, self.parameters(ops.shape(images)[0], seed))


def _erased(images, p: dict):
    """`images` with each chosen image's rectangle (centre and sides as fractions of the image's) set to that
    image's mean grey: the network cannot lean on any one region, a marker or a lung alone."""
    height, width = ops.shape(images)[1:3]

    def inside(centre, side, length):  # (B, length): pixel centres within the rectangle's span on this axis
        position = (ops.cast(ops.arange(length), "float32")[None, :] + 0.5) / ops.cast(length, "float32")
        return ops.abs(position - centre[:, None]) <= side[:, None] / 2

    rows = inside(p["erase_y"], p["erase_height"], height)
    columns = inside(p["erase_x"], p["erase_width"], width)
    erased = rows[:, :, None, None] & columns[:, None, :, None] & (p["erase"][:, None, None, None] > 0)
    return ops.where(erased, ops.mean(images, axis=(1, 2, 3), keepdims=True), images)


def mix(images, labels, draws):
    """mixup in the feed, before the augmentation: each example blended with its partner in the reversed batch (a
    random partner, as batches are shuffled) by max(l, 1 - l), l its draw from Beta(alpha, alpha), so that each
    stays mostly itself; its label likewise. Numpy arrays and tensors alike (both feeds)."""
    w = 0.5 + abs(draws[:, None] - 0.5)
    w_images = w[:, :, None, None]
    return w_images * images + (1 - w_images) * images[::-1], w * labels + (1 - w) * labels[::-1]


def build_augmentation(aug: DictConfig) -> Augmentation | None:
    """The batch augmentation an `augmentation` config asks for; None when it asks for nothing."""
    augmentation = Augmentation(aug)
    return augmentation if augmentation else None


class DeviceAugmentation(layers.Layer):
    """`augment` as a model's first layer (`trainer.augment_on=model`, and always under JAX): it runs where the
    model runs, the GPU when there is one, and only in training."""

    def __init__(self, augment: Augmentation, seed: int, **kwargs):
        super().__init__(dtype="float32", **kwargs)  # pixels stay float32 under a mixed-precision policy
        self.augment = augment
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=False):
        return self.augment(images, self.seed_generator) if training else images


class ArrayBatches(keras.utils.PyDataset):
    """Batches of in-memory arrays as float32 (images, labels (n, 1)), for backends without tf.data.

    With a `seed`, each epoch is a new shuffle (or, with `oversample`, class-balanced draws: half of each batch
    from each class, reshuffled per class as it runs out), one pass's worth of images either way; without one,
    file order (evaluation). Two threads prepare the next batches while the model trains on this one.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        seed: int | None = None,
        oversample=False,
        mixup: float = 0.0,
    ):
        super().__init__(workers=2, use_multiprocessing=False, max_queue_size=8)
        self.images, self.labels, self.batch_size = images, labels.reshape(-1, 1), batch_size
        self.seed, self.epoch = seed, 0
        self.rng = None if seed is None else np.random.default_rng(seed)
        self.oversample, self.mixup = oversample, mixup
        self.order = self._order()

    def _order(self) -> np.ndarray:
        n = len(self.labels)
        if self.rng is None:
            return np.arange(n)
        if not self.oversample:
            return self.rng.permutation(n)
        by_class = [np.flatnonzero(self.labels[:, 0] == c) for c in (0, 1)]
        picks = self.rng.integers(0, 2, n)
        order = np.empty(n, np.int64)
        for c, members in enumerate(by_class):
            wanted = int((picks == c).sum())
            reshuffled = [self.rng.permutation(members) for _ in range(-(-wanted // len(members)))]
            order[picks == c] = np.concatenate(reshuffled)[:wanted]
        return order

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        images, labels = self.images[rows].astype(np.float32), self.labels[rows].astype(np.float32)
        if self.mixup and self.rng is not None:
            # Its own generator per batch: the threads prepare batches in any order.
            draws = np.random.default_rng((self.seed, self.epoch, index)).beta(self.mixup, self.mixup, len(rows))
            images, labels = mix(images, labels, draws.astype(np.float32))
        return images, labels

    def on_epoch_end(self) -> None:
        if self.rng is not None:
            self.order = self._order()
            self.epoch += 1


# --- tf.data: the feed under TensorFlow ------------------------------------------------------------------------


def _as_float(images, labels):
    import tensorflow as tf

    return tf.cast(images, tf.float32), tf.cast(labels, tf.float32)


def tf_train_dataset(
    images, labels, batch_size: int, seed: int, augment=None, oversample: bool = False, mixup: float = 0.0
):
    """Shuffled (or class-balanced) batches, mixed (`mixup` > 0) and augmented on the CPU ahead of the training
    step, prefetched.

    Each batch's mixup and augmentation draw from its own stateless seed: Keras' generator keeps its state in a
    variable, and under op determinism TensorFlow would run a map that touches a variable serially and without prefetch.
    A `keras.StatelessScope` hands the generator each batch's seed instead, so tf.data runs the map in parallel,
    with the same batches for the same seed and new ones every epoch.
    """
    import tensorflow as tf

    autotune = tf.data.AUTOTUNE
    labels = labels.reshape(-1, 1)
    if oversample:
        per_class = [
            tf.data.Dataset.from_tensor_slices((images[mask], labels[mask]))
            .shuffle(int(mask.sum()), seed=seed, reshuffle_each_iteration=True)
            .repeat()
            for mask in (labels[:, 0] == 0, labels[:, 0] == 1)
        ]
        ds = tf.data.Dataset.sample_from_datasets(per_class, weights=[0.5, 0.5], seed=seed).take(len(images))
    else:
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(_as_float, num_parallel_calls=autotune)
    if augment is not None or mixup:
        generator = keras.random.SeedGenerator(seed)

        def augmented(batch, batch_seed):
            images, labels = batch
            with keras.StatelessScope(state_mapping=[(generator.state, tf.cast(batch_seed, generator.state.dtype))]):
                if mixup:
                    draws = keras.random.beta((tf.shape(images)[0],), mixup, mixup, seed=generator)
                    images, labels = mix(images, labels, draws)
                if augment is not None:
                    images = augment(images, generator)
                return images, labels

        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2, drop_remainder=True)
        ds = tf.data.Dataset.zip(ds, seeds).map(augmented, num_parallel_calls=autotune)
    return ds.prefetch(autotune)


def tf_eval_dataset(images, labels, batch_size: int):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels.reshape(-1, 1)))
    return ds.batch(batch_size).map(_as_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def train_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    augment: Augmentation | None = None,
    oversample: bool = False,
    mixup: float = 0.0,
):
    """Shuffled (or class-balanced when `oversample`) training batches, mixed when `mixup` (Beta's alpha) is > 0,
    augmented in the feed when `augment` is given (TensorFlow's tf.data only: elsewhere the model's first layer
    augments). One epoch is `len(images)` examples either way, so epochs stay comparable across weightings."""
    if backend.TENSORFLOW:
        return tf_train_dataset(images, labels, batch_size, seed, augment, oversample, mixup)
    if augment is not None:
        raise ValueError(f"augmentation in the input feed needs tf.data; under {backend.NAME} the model augments")
    return ArrayBatches(images, labels, batch_size, seed, oversample, mixup)


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """Batches in file order, no augmentation: validation and test."""
    if backend.TENSORFLOW:
        return tf_eval_dataset(images, labels, batch_size)
    return ArrayBatches(images, labels, batch_size)
