"""Grad-CAM on every network, on real chest X-rays: a true gradient map, the overlay and the test-set panel."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import DATA_ROOT, ROUND_OFF, backbone
from PIL import Image

from ablation.data import decode_image
from ablation.explain import OUTCOMES, gradcam, gradcam_panel, overlay, pick_examples
from ablation.models import build_model

SIZE = 64  # the ResNets' `features` map is 2 x 2 here (1 x 1 at 32 px, where any map is flat)
PER_CLASS = 6


@pytest.fixture(scope="module")
def xrays() -> tuple[np.ndarray, np.ndarray]:
    """Real training images, (n, 64, 64, 1) float32 in [0, 255] as the pipeline feeds them, and labels."""
    files, labels = [], []
    for label, name in enumerate(("NORMAL", "PNEUMONIA")):
        chosen = sorted((DATA_ROOT / "train" / name).iterdir())[:PER_CLASS]
        files += chosen
        labels += [label] * len(chosen)
    images = np.stack([decode_image(f, SIZE) for f in files]).astype(np.float32)[..., None]
    return images, np.array(labels)


def _model(name: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_model(name, (SIZE, SIZE, 1), dropout=0.5, batchnorm=True)


def _varies(maps: np.ndarray) -> np.ndarray:
    return maps.std(axis=(1, 2)) > 0.01


@pytest.mark.parametrize("name", ["cnn", "resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_gradcam_is_an_input_dependent_gradient_map(name, xrays):
    images, _ = xrays
    model = _model(name)
    # ReLU keeps one sign of the evidence: an untrained network may see only pneumonia or only normal
    # evidence in an image, so each image is mapped towards both classes.
    toward_pneumonia, toward_normal = gradcam(model, images), gradcam(model, images, target=0)
    for maps in (toward_pneumonia, toward_normal):
        assert maps.shape == (len(images), SIZE, SIZE) and maps.dtype == np.float32
        assert maps.min() >= 0 and maps.max() <= 1
        nonzero = maps.max(axis=(1, 2)) > 0
        assert np.allclose(maps.max(axis=(1, 2))[nonzero], 1)  # each map scaled to its own peak
    varies = _varies(toward_pneumonia) | _varies(toward_normal)
    assert varies.mean() >= 0.5, f"{name}: only {varies.sum()} of {len(images)} images have a non-flat map"

    # Another X-ray gives another map, and so does the same X-ray with one half blacked out.
    both = np.concatenate([toward_pneumonia, toward_normal], axis=-1)
    i, j = np.flatnonzero(varies)[:2]
    assert np.abs(both[i] - both[j]).mean() > 0.01
    occluded = images.copy()
    occluded[:, :, : SIZE // 2] = 0
    occluded_maps = np.concatenate([gradcam(model, occluded), gradcam(model, occluded, target=0)], axis=-1)
    assert np.abs(occluded_maps - both).mean(axis=(1, 2)).min() > 0.02

    # Per-image targets in one call are the per-class calls, image by image.
    mixed = gradcam(model, images, target=np.arange(len(images)) % 2)
    expected = np.where((np.arange(len(images)) % 2 == 1)[:, None, None], toward_pneumonia, toward_normal)
    np.testing.assert_allclose(mixed, expected, atol=ROUND_OFF)


@pytest.mark.parametrize("crop", [[], [0.125, 0.25, 0.0625, 0.0625]])
def test_gradcam_of_a_global_average_pooling_head_is_the_class_activation_map(xrays, crop):
    """For features -> global average pooling -> Dense, the channel weights are exactly w_k / (h w).

    So Grad-CAM must equal CAM (Zhou et al. 2016) computed from the weights, not from gradients. With a lung crop
    (`model.crop`) the map covers the crop, 8, 16, 4 and 4 px in from the sides here, and is zero outside it.
    """
    images, _ = xrays
    keras.utils.set_random_seed(0)
    model = build_model("resnet18", (SIZE, SIZE, 1), dropout=0.5, batchnorm=True, crop=crop)
    features = backbone(model).predict(images, verbose=0)  # (n, 2, 2, 512)
    kernel = model.get_layer("logit").get_weights()[0][:, 0]
    cam = np.maximum(features @ kernel, 0)[..., None]
    top, bottom, left, right = (8, 16, 4, 4) if crop else (0, 0, 0, 0)
    inside = (SIZE - top - bottom, SIZE - left - right)
    cam = keras.ops.convert_to_numpy(keras.ops.image.resize(cam, inside, interpolation="bilinear"))[..., 0]
    cam = np.pad(cam, ((0, 0), (top, bottom), (left, right)))
    peak = cam.max(axis=(1, 2), keepdims=True)
    expected = np.where(peak > 0, cam / np.where(peak > 0, peak, 1), 0)
    np.testing.assert_allclose(gradcam(model, images), expected, atol=1e-4)


def test_overlay_colours_a_grayscale_xray_at_any_size(xrays):
    images, _ = xrays
    heatmap = np.zeros((8, 8), np.float32)
    heatmap[2:4, 2:4] = 1
    big = decode_image(sorted((DATA_ROOT / "test" / "PNEUMONIA").iterdir())[0], 200)
    for image in (images[0], big, np.repeat(big[..., None], 3, axis=-1)):
        out = overlay(image, heatmap)
        assert out.dtype == np.uint8 and out.shape == (*image.shape[:2], 3)
        assert len(np.unique(out.reshape(-1, 3), axis=0)) > 10
    # The hot square is red where the heatmap peaks, the rest the image tinted blue.
    out = overlay(big, heatmap)
    hot, cold = out[60, 60].astype(int), out[180, 180].astype(int)
    assert hot[0] > hot[2] and cold[2] > cold[0]


def test_pick_examples_takes_the_most_confident_of_each_outcome():
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    probs = np.array([0.9, 0.6, 0.95, 0.1, 0.7, 0.3, 0.2, 0.55])
    picked = pick_examples(labels, probs, threshold=0.5)
    assert picked == {
        "true positive": [2, 0],
        "false positive": [4, 7],
        "true negative": [3, 5],
        "false negative": [6],
    }
    assert pick_examples(labels, probs, threshold=0.0)["true negative"] == []


def _png(path: Path) -> Image.Image:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.load()
        return image.copy()


def test_gradcam_panel_writes_a_png_of_each_outcome(xrays, tmp_path):
    images, labels = xrays
    model = _model("cnn")
    logits = model.predict(images, verbose=0).ravel().astype(np.float64)
    probs = 1 / (1 + np.exp(-logits))
    threshold = float(np.median(probs))
    path = gradcam_panel(model, images.astype(np.uint8), labels, probs, threshold, tmp_path / "gradcam_panel.png")
    assert path == tmp_path / "gradcam_panel.png"
    picked = pick_examples(labels, probs, threshold)
    assert sum(map(len, picked.values())) >= 4
    image = _png(path)
    assert image.width > 800 and image.height > 500
    assert len(image.getcolors(1 << 24)) > 100  # X-rays and heatmaps, not an empty figure

    # Where some outcome has no example (nothing predicted normal at threshold 0), the panel still draws.
    path = gradcam_panel(model, images, labels, probs, 0.0, tmp_path / "all_positive.png")
    _png(path)
    assert [name for name, *_ in OUTCOMES] == ["true positive", "false positive", "true negative", "false negative"]
