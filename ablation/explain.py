"""Grad-CAM (Selvaraju et al. 2017): where in an X-ray a network finds its evidence for pneumonia.

The map comes from the layer every model names `features` (the last convolutional stage): the gradient
of the pneumonia logit with respect to that feature map, averaged over space, weights its channels;
the ReLU of the weighted sum, upsampled bilinearly to the input size and scaled to [0, 1], is the map.
Bright regions raise the logit. Used by every run (`gradcam_panel.png`) and by
`python -m ablation.predict --explain DIR`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # runs write files; no display
import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from ablation.data import CLASSES  # noqa: E402

LAYER = "features"
COLORMAP = "jet"
# The four outcomes at the run's threshold, in panel order: (name, true label, predicted label).
OUTCOMES = (
    ("true positive", 1, 1),
    ("false positive", 0, 1),
    ("true negative", 0, 0),
    ("false negative", 1, 0),
)


def _cam_model(model: keras.Model, layer: str) -> keras.Model:
    return keras.Model(model.inputs, [model.get_layer(layer).output, model.outputs[0]])


def gradcam(model: keras.Model, images: np.ndarray, layer: str = LAYER, batch_size: int = 32) -> np.ndarray:
    """Grad-CAM maps of `images` (n, H, W, C) float32 in [0, 255]: (n, H, W) float32 in [0, 1].

    An image whose map is zero everywhere (no feature raises the logit) gets an all-zero map.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (n, H, W, C), got shape {images.shape}")
    height, width = images.shape[1:3]
    cam_model = _cam_model(model, layer)
    maps = []
    for start in range(0, len(images), batch_size):
        batch = tf.convert_to_tensor(images[start : start + batch_size])
        with tf.GradientTape() as tape:
            fmap, logits = cam_model(batch, training=False)
            # Images are independent at inference, so one gradient of the sum is each image's own.
            score = tf.reduce_sum(tf.cast(logits, tf.float32))
        grads = tf.cast(tape.gradient(score, fmap), tf.float32)
        fmap = tf.cast(fmap, tf.float32)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # one weight per channel
        cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1))[..., None]
        cam = tf.image.resize(cam, (height, width), method="bilinear")[..., 0]
        maps.append(cam.numpy())
    if not maps:
        return np.zeros((0, height, width), np.float32)
    cams = np.concatenate(maps).astype(np.float32)
    low = cams.min(axis=(1, 2), keepdims=True)
    span = cams.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (cams - low) / np.where(span > 0, span, 1), 0).astype(np.float32)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """`heatmap` (h, w) in [0, 1], coloured and blended onto `image` (H, W[, 1 or 3]): (H, W, 3) uint8.

    The heatmap is resized bilinearly to the image, so a map at the model's input size can be drawn on
    the picture at any display size.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got shape {image.shape}")
    heatmap = np.clip(np.asarray(heatmap, dtype=np.float32), 0, 1)
    height, width = image.shape[:2]
    if heatmap.shape != (height, width):
        heatmap = np.asarray(Image.fromarray(heatmap).resize((width, height), Image.Resampling.BILINEAR))
    colour = matplotlib.colormaps[COLORMAP](np.clip(heatmap, 0, 1))[..., :3] * 255
    blended = (1 - alpha) * image + alpha * colour
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def pick_examples(labels: np.ndarray, probabilities: np.ndarray, threshold: float, per_outcome: int = 2) -> dict:
    """Indices of up to `per_outcome` images of each outcome, the most confident first.

    Confident means far from the threshold: the clearest hits and the worst mistakes.
    """
    labels, probabilities = np.asarray(labels).ravel(), np.asarray(probabilities, dtype=np.float64).ravel()
    predicted = (probabilities >= threshold).astype(int)
    picked = {}
    for name, truth, guess in OUTCOMES:
        idx = np.flatnonzero((labels == truth) & (predicted == guess))
        order = np.argsort(-np.abs(probabilities[idx] - threshold), kind="stable")
        picked[name] = idx[order][:per_outcome].tolist()
    return picked


def gradcam_panel(
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    threshold: float,
    path: str | Path,
    per_outcome: int = 2,
) -> Path:
    """A figure of test images with their Grad-CAM overlaid: up to `per_outcome` of each outcome.

    Columns: true positives, false positives, true negatives, false negatives (empty where none exist);
    each title gives the true class and the predicted probability of pneumonia.
    """
    path = Path(path)
    picked = pick_examples(labels, probabilities, threshold, per_outcome)
    chosen = [i for name, *_ in OUTCOMES for i in picked[name]]
    images = np.asarray(images)
    heatmaps = dict(zip(chosen, gradcam(model, images[chosen]), strict=True)) if chosen else {}

    fig, axes = plt.subplots(
        per_outcome, len(OUTCOMES), figsize=(3 * len(OUTCOMES), 3.2 * per_outcome + 0.6), squeeze=False
    )
    for col, (name, *_) in enumerate(OUTCOMES):
        for row in range(per_outcome):
            ax = axes[row, col]
            ax.set_axis_off()
            if row < len(picked[name]):
                i = picked[name][row]
                ax.imshow(overlay(images[i], heatmaps[i]), interpolation="bilinear")
                ax.set_title(f"{name}\ntrue {CLASSES[int(labels[i])]}, p={probabilities[i]:.2f}", fontsize=9)
            elif row == 0:
                ax.text(0.5, 0.5, f"no {name}s", ha="center", va="center", color="grey", transform=ax.transAxes)
    fig.suptitle(f"Grad-CAM of '{LAYER}' (evidence for pneumonia), threshold {threshold:.2f}", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
