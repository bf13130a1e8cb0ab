"""Grad-CAM (Selvaraju et al. 2017): where in an X-ray a network finds its evidence for pneumonia.

The map comes from the layer every model names `features` (the last convolutional stage): the gradient
of the pneumonia logit with respect to that feature map, averaged over space, weights its channels;
the ReLU of the weighted sum, upsampled bilinearly to the input size and divided by its maximum, is the map.
A model that crops its input (`model.crop`) gets its map upsampled to the crop and zero outside it.
Bright regions raise the logit. Used by every run (`gradcam_panel.png`) and by
`python -m ablation.predict --explain DIR`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # runs write files; no display
import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402
from PIL import Image  # noqa: E402

from ablation import backend  # noqa: E402
from ablation.contract import CLASSES  # noqa: E402
from ablation.models import CROP  # noqa: E402

LAYER = "features"
COLORMAP = "jet"
# The four outcomes at the run's threshold, in panel order: (name, true label, predicted label).
OUTCOMES = (
    ("true positive", 1, 1),
    ("false positive", 0, 1),
    ("true negative", 0, 0),
    ("false negative", 1, 0),
)


def _split(model: keras.Model, layer: str) -> tuple[keras.Model, keras.Model]:
    """`model` as two: input to the `layer` map, and that map to the logit (what the gradient runs through)."""
    fmap = model.get_layer(layer).output
    return keras.Model(model.input, fmap), keras.Model(fmap, model.output)


def _cropping(model: keras.Model) -> tuple[tuple[int, int], tuple[int, int]]:
    """The pixels `model`'s input crop (`model.crop`) cuts off, ((top, bottom), (left, right)); none without one."""
    names = {layer.name for layer in model.layers}
    return tuple(map(tuple, model.get_layer(CROP).cropping)) if CROP in names else ((0, 0), (0, 0))


def gradcam(
    model: keras.Model, images: np.ndarray, target: int | Sequence[int] = 1, layer: str = LAYER, batch_size: int = 32
) -> np.ndarray:
    """Grad-CAM maps of `images` (n, H, W, C) float32 in [0, 255]: (n, H, W) float32 in [0, 1].

    `target` is the class whose evidence is mapped, for all images or one per image: 1 (PNEUMONIA,
    the default) follows the logit, 0 (NORMAL) its negative. Each map is divided by its maximum; one
    with no positive evidence anywhere is all zero.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (n, H, W, C), got shape {images.shape}")
    signs = np.where(np.broadcast_to(np.asarray(target), (len(images),)) == 1, 1.0, -1.0).astype(np.float32)
    height, width = images.shape[1:3]
    features, head = _split(model, layer)
    (top, bottom), (left, right) = _cropping(model)
    maps = [np.zeros((0, height, width), np.float32)]
    for start in range(0, len(images), batch_size):
        fmap = features(images[start : start + batch_size], training=False)
        sign = ops.convert_to_tensor(signs[start : start + batch_size])

        def score(fmap, sign=sign):
            # Images are independent at inference, so the gradient of the sum is each image's own.
            return ops.sum(sign * ops.reshape(ops.cast(head(fmap, training=False), "float32"), (-1,)))

        grads = backend.gradient(score, fmap).astype(np.float32)
        fmap = ops.convert_to_numpy(ops.cast(fmap, "float32"))
        weights = grads.mean(axis=(1, 2), keepdims=True)  # one weight per channel
        cam = np.maximum((weights * fmap).sum(axis=-1), 0)[..., None]
        cam = ops.image.resize(cam, (height - top - bottom, width - left - right), interpolation="bilinear")[..., 0]
        cam = np.pad(ops.convert_to_numpy(cam).astype(np.float32), ((0, 0), (top, bottom), (left, right)))
        maps.append(cam)
    cams = np.concatenate(maps)
    peak = cams.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, cams / np.where(peak > 0, peak, 1), 0).astype(np.float32)


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
        per_outcome,
        len(OUTCOMES),
        figsize=(3 * len(OUTCOMES) + 1, 3.2 * per_outcome + 0.8),
        squeeze=False,
        layout="constrained",
    )
    for col, (name, *_) in enumerate(OUTCOMES):
        for row in range(per_outcome):
            ax = axes[row, col]
            ax.set_axis_off()
            if row < len(picked[name]):
                i = picked[name][row]
                ax.imshow(overlay(images[i], heatmaps[i]), interpolation="bilinear")
                empty = "" if heatmaps[i].max() > 0 else "\nempty map: no evidence for pneumonia"
                ax.set_title(f"{name}\ntrue {CLASSES[int(labels[i])]}, p={probabilities[i]:.3f}{empty}", fontsize=9)
            elif row == 0:
                ax.text(0.5, 0.5, f"no {name}s", ha="center", va="center", color="grey", transform=ax.transAxes)
    map_h, map_w = model.get_layer(LAYER).output.shape[1:3]
    note = "" if map_h * map_w > 1 else f"\n'{LAYER}' is {map_h} x {map_w} at this image size: the map cannot localise"
    fig.suptitle(f"Grad-CAM of '{LAYER}': evidence for pneumonia, threshold {threshold:.3f}{note}", fontsize=11)
    mappable = matplotlib.cm.ScalarMappable(cmap=COLORMAP, norm=matplotlib.colors.Normalize(0, 1))
    fig.colorbar(mappable, ax=axes, shrink=0.6, label="Grad-CAM (1 = the image's strongest evidence)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
