"""The data path on real chest X-rays: both layouts, patient grouping, the cache, bad files, pipeline options."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA_ROOT, compose_config, copy_images
from PIL import Image

from ablation import data as data_module
from ablation.data import DataError, load_data, load_images, patient_id, scan_split, split_by_patient


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person1000_virus_1681.jpeg", "person1000"),
        ("person1_virus_10_2.jpeg", "person1"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0115-0001-0002.jpeg", "IM-0115"),
        ("NORMAL2-IM-0427-0001.jpeg", "NORMAL2-IM-0427"),
        ("scan.png", "scan"),
    ],
)
def test_patient_id(name, patient):
    assert patient_id(name) == patient


@pytest.mark.parametrize("seed", [0, 1])
def test_validation_split_is_grouped_by_patient_and_stratified(seed):
    paths, labels = scan_split(DATA_ROOT, "train")
    train, val = split_by_patient(paths, labels, val_fraction=0.1, seed=seed)
    patients = np.array([patient_id(p.name) for p in paths])
    assert not set(patients[train]) & set(patients[val])
    assert len(train) + len(val) == len(paths) == 1341 + 3875
    for c in (0, 1):  # each class keeps about a tenth of its patients for validation
        share = len(set(patients[val][labels[val] == c])) / len(set(patients[labels == c]))
        assert 0.08 < share < 0.12


def test_split_depends_on_seed():
    paths, labels = scan_split(DATA_ROOT, "train")
    assert not np.array_equal(split_by_patient(paths, labels, 0.1, 0)[1], split_by_patient(paths, labels, 0.1, 1)[1])


def test_shared_copy_counts_and_record(cache_dir):
    data = load_data(DATA_ROOT, 32, 0.1, 0, cache_dir)
    record = data.record("balanced")["splits"]
    assert record["test"]["NORMAL"]["images"] == 234 and record["test"]["PNEUMONIA"]["images"] == 390
    train_val = {c: record["train"][c]["images"] + record["val"][c]["images"] for c in ("NORMAL", "PNEUMONIA")}
    assert train_val == {"NORMAL": 1341, "PNEUMONIA": 3875}
    assert data.train.images.shape[1:] == (32, 32, 1) and data.train.images.dtype == np.uint8
    assert record["val"]["PNEUMONIA"]["patients"] < record["val"]["PNEUMONIA"]["images"]


def test_max_train_per_class_caps_training_only(cache_dir):
    data = load_data(DATA_ROOT, 32, 0.1, 0, cache_dir, max_train_per_class=20)
    assert np.bincount(data.train.labels).tolist() == [20, 20]
    assert len(data.val.labels) > 40  # validation keeps every held-out patient


def _original_layout(root: Path) -> None:
    """The Kaggle download's shape: grayscale JPEGs of varied sizes and a tiny val/ folder."""
    sizes = [(517, 389), (1024, 768), (400, 611)]
    for split, n in (("train", 12), ("val", 3), ("test", 4)):
        for cls in ("NORMAL", "PNEUMONIA"):
            for i, f in enumerate(
                copy_images(DATA_ROOT / ("test" if split == "val" else split) / cls, root / split / cls, n)
            ):
                Image.open(f).convert("L").resize(sizes[i % 3]).save(f, "JPEG")


def test_original_kaggle_layout(tmp_path):
    _original_layout(tmp_path / "xray")
    data = load_data(tmp_path / "xray", 48, 0.25, 0, tmp_path / "cache")
    assert data.train.images.shape[1:] == (48, 48, 1)
    # val/ joins the pool: 12 + 3 images per class are split into training and validation.
    assert len(data.train.labels) + len(data.val.labels) == 30
    assert any("/val/" in f for f in data.train.files + data.val.files)
    assert np.bincount(data.test.labels).tolist() == [4, 4]
    assert data.skipped == {}


def test_cache_is_hit_and_identical(tmp_path, monkeypatch):
    paths = copy_images(DATA_ROOT / "train" / "NORMAL", tmp_path / "imgs", 10)
    first = load_images(paths, 40, tmp_path / "cache")
    calls = []
    monkeypatch.setattr(data_module, "_decode_all", lambda *a: calls.append(a))
    second = load_images(paths, 40, tmp_path / "cache")
    assert calls == []  # no decoding the second time
    np.testing.assert_array_equal(first.images, second.images)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    # A different size or a changed file list is a different cache entry.
    monkeypatch.undo()
    load_images(paths[:5], 40, tmp_path / "cache")
    load_images(paths, 24, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3


def _build(args):
    paths, cache = args
    return load_images(paths, 36, cache).images.sum()


def test_concurrent_builders_do_not_corrupt_the_cache(tmp_path):
    paths = copy_images(DATA_ROOT / "train" / "PNEUMONIA", tmp_path / "imgs", 60)
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        sums = pool.map(_build, [(paths, tmp_path / "cache")] * 3)
    assert len(set(sums)) == 1
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    assert not list((tmp_path / "cache").glob("*.tmp"))
    assert load_images(paths, 36, tmp_path / "cache").images.sum() == sums[0]


def test_bad_files_are_skipped_by_name_and_odd_files_decode(tmp_path, caplog):
    normal = copy_images(DATA_ROOT / "train" / "NORMAL", tmp_path / "imgs", 6)
    corrupt, truncated, empty, text, png, cmyk = normal
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    truncated.write_bytes(truncated.read_bytes()[:600])
    empty.write_bytes(b"")
    text_file = text.with_name("notes.jpeg")
    text.rename(text_file)
    text_file.write_text("radiologist notes, not an image")
    Image.open(png).save(png, "PNG")  # a PNG saved as .jpeg
    Image.open(cmyk).convert("CMYK").save(cmyk, "JPEG")
    decoded = load_images([corrupt, truncated, empty, text_file, png, cmyk], 32, tmp_path / "cache")
    assert decoded.kept.tolist() == [False, False, False, False, True, True]
    assert set(decoded.skipped) == {str(p) for p in (corrupt, truncated, empty, text_file)}
    assert all(decoded.skipped.values())  # each with its reason
    assert decoded.images.shape == (2, 32, 32, 1)
    assert all(str(p) in caplog.text for p in (corrupt, truncated, empty, text_file))


def test_skipped_files_reach_the_run_record(tmp_path, caplog):
    _original_layout(tmp_path / "xray")
    bad = tmp_path / "xray" / "train" / "NORMAL" / "IM-9999-0001.jpeg"
    bad.write_bytes(b"")
    data = load_data(tmp_path / "xray", 32, 0.25, 0, tmp_path / "cache")
    assert list(data.record("none")["skipped_files"]) == [str(bad)]
    assert str(bad) in caplog.text


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda root: None, "data.root"),
        (lambda root: _original_layout(root) or __import__("shutil").rmtree(root / "test"), "missing split"),
        (
            lambda root: _original_layout(root) or __import__("shutil").rmtree(root / "train" / "NORMAL"),
            "missing class",
        ),
        (
            lambda root: _original_layout(root) or [f.unlink() for f in (root / "test" / "PNEUMONIA").iterdir()],
            "empty class",
        ),
    ],
)
def test_bad_layout_names_the_path(tmp_path, breakage, message):
    root = tmp_path / "xray"
    breakage(root)
    with pytest.raises(DataError, match=message) as error:
        load_data(root, 32, 0.25, 0, tmp_path / "cache")
    assert str(root) in str(error.value) and "NORMAL,PNEUMONIA" in str(error.value)


# --- pipeline options: augmentation and class weighting ------------------------------------------------


def test_balanced_weights_are_n_over_2nc(cache_dir):
    data = load_data(DATA_ROOT, 32, 0.1, 0, cache_dir)
    n, counts = len(data.train.labels), np.bincount(data.train.labels)
    weights = data.class_weights("balanced")
    assert weights == pytest.approx({0: n / (2 * counts[0]), 1: n / (2 * counts[1])})
    assert data.class_weights("none") is None and data.class_weights("oversample") is None


@pytest.mark.parametrize("feed", ["tf.data", "ArrayBatches"])
def test_oversample_gives_class_balanced_batches(cache_dir, feed):
    """Both feeds: TensorFlow's tf.data, and the in-memory batches other backends (JAX) train on."""
    from ablation.pipeline import ArrayBatches, train_batches

    make = train_batches if feed == "tf.data" else ArrayBatches
    data = load_data(DATA_ROOT, 32, 0.1, 0, cache_dir, max_train_per_class=None)
    assert np.mean(data.train.labels) > 0.7  # the real imbalance
    epochs = [
        np.concatenate(
            [np.asarray(y).ravel() for _, y in make(data.train.images, data.train.labels, 64, 0, oversample=True)]
        )
    ]
    assert len(epochs[0]) == len(data.train.labels)  # an epoch stays one pass's worth of images
    assert 0.45 < epochs[0].mean() < 0.55
    plain = make(data.train.images, data.train.labels, 64, 0)
    labels = np.concatenate([np.asarray(y).ravel() for _, y in plain])
    assert labels.mean() == pytest.approx(np.mean(data.train.labels))
    assert not np.array_equal(labels, data.train.labels.astype(float))  # shuffled


def test_array_batches_reshuffle_each_epoch_the_same_for_the_same_seed(cache_dir):
    from ablation.pipeline import ArrayBatches

    data = load_data(DATA_ROOT, 32, 0.1, 0, cache_dir, max_train_per_class=16)

    def epochs(seed, n=2):
        feed = ArrayBatches(data.train.images, data.train.labels, 8, seed)
        passes = []
        for _ in range(n):
            passes.append(np.concatenate([feed[i][0] for i in range(len(feed))]))
            feed.on_epoch_end()
        return passes

    first, second = epochs(0), epochs(0)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[0], epochs(1, 1)[0])
    x, y = ArrayBatches(data.train.images, data.train.labels, 8)[0]  # no seed: file order, float32
    np.testing.assert_array_equal(x, data.train.images[:8].astype(np.float32))
    assert x.dtype == y.dtype == np.float32 and y.shape == (8, 1)


def _recovered_mixup(plain_batch, mixed_batch):
    """Each mixed example as w x + (1 - w) x_partner, the partner its mirror in the batch: w by least squares on the
    pixels, and how far the pixels and the label stray from that blend."""
    (x, y), (xm, ym) = (tuple(np.asarray(a, np.float64) for a in batch) for batch in (plain_batch, mixed_batch))
    n = len(x)
    weights, pixel_error, label_error = np.empty(n), np.empty(n), np.empty(n)
    for i in range(n):
        partner = n - 1 - i
        d = (x[i] - x[partner]).ravel()
        w = 1.0 if not d.any() else float(d @ (xm[i] - x[partner]).ravel() / (d @ d))
        weights[i] = w
        pixel_error[i] = np.abs(xm[i] - (w * x[i] + (1 - w) * x[partner])).max()
        label_error[i] = abs(ym[i, 0] - (w * y[i, 0] + (1 - w) * y[partner, 0]))
    return weights, pixel_error, label_error


@pytest.mark.parametrize("feed", ["tf.data", "ArrayBatches"])
def test_mixup_blends_each_example_with_its_partner_and_keeps_it_dominant(feed, cache_dir):
    from ablation.pipeline import ArrayBatches, train_batches

    data = load_data(DATA_ROOT, 32, 0.1, 0, cache_dir, max_train_per_class=16)

    def batches(mixup, seed=0):
        if feed == "ArrayBatches":
            feed_ = ArrayBatches(data.train.images, data.train.labels, 8, seed, mixup=mixup)
            return [feed_[i] for i in range(len(feed_))]
        return list(train_batches(data.train.images, data.train.labels, 8, seed, mixup=mixup))

    plain, mixed = batches(0.0), batches(0.4)
    assert len(plain) == len(mixed)
    weights = []
    for plain_batch, mixed_batch in zip(plain, mixed, strict=True):
        w, pixel_error, label_error = _recovered_mixup(plain_batch, mixed_batch)
        assert pixel_error.max() < 1e-3 and label_error.max() < 1e-5
        weights.append(w)
    weights = np.concatenate(weights)
    assert weights.min() >= 0.5 - 1e-6 and weights.max() <= 1 + 1e-6 and weights.std() > 0.05
    labels = np.concatenate([np.asarray(y).ravel() for _, y in mixed])
    assert ((labels > 0) & (labels < 1)).any()  # soft labels where the classes met
    again = batches(0.4)
    for a, b in zip(mixed, again, strict=True):
        np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))  # the same seed, the same blends


@pytest.mark.parametrize("option", ["none", "flip", "xray"])
def test_augmentation_options(option, cache_dir):
    from ablation.pipeline import build_augmentation, eval_batches, train_batches

    cfg = compose_config(f"augmentation={option}")
    data = load_data(DATA_ROOT, 32, 0.1, 0, cache_dir, max_train_per_class=8)
    images, labels = data.train.images, data.train.labels
    augment = build_augmentation(cfg.augmentation)
    # Without shuffling noise: compare each augmented batch with its own source images, in order.
    batch, _ = next(iter(train_batches(images[:1].repeat(16, 0), labels[:1].repeat(16), 16, 0, augment)))
    batch = batch.numpy()
    source = images[:1].astype(np.float32)
    if option == "none":
        assert augment is None
        np.testing.assert_array_equal(batch, np.repeat(source, 16, 0))
    else:
        changed = [not np.allclose(b, source[0]) for b in batch]
        assert sum(changed) >= 4
        assert batch.min() >= 0 and batch.max() <= 255
        if option == "flip":  # every image is either itself or its mirror, and both occur
            mirrored = [np.allclose(b, source[0][:, ::-1], atol=1e-3) for b in batch]
            assert all(m or not c for m, c in zip(mirrored, changed, strict=True)) and any(mirrored)
    # Evaluation batches are never augmented.
    x, _ = next(iter(eval_batches(images, labels, 16)))
    np.testing.assert_array_equal(x.numpy(), images[:16].astype(np.float32))


def test_augmentation_is_seeded_per_batch_and_new_each_epoch(cache_dir):
    from ablation.pipeline import build_augmentation, train_batches

    augment = build_augmentation(compose_config("augmentation=xray").augmentation)
    data = load_data(DATA_ROOT, 32, 0.1, 0, cache_dir, max_train_per_class=16)
    images, labels = data.train.images, data.train.labels

    def epochs(seed, n=2):
        ds = train_batches(images, labels, 8, seed, augment)
        return [np.concatenate([x.numpy() for x, _ in ds]) for _ in range(n)]

    first, second = epochs(0), epochs(0)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)  # the same seed gives the same batches, epoch by epoch
    assert not np.allclose(first[0], first[1])  # a new epoch draws new parameters (and a new order)
    assert not np.allclose(first[0], epochs(1, 1)[0])


def test_each_augmentation_range_alone_changes_images(cache_dir):
    from ablation.pipeline import build_augmentation

    xray = compose_config("augmentation=xray").augmentation
    data = load_data(DATA_ROOT, 32, 0.1, 0, cache_dir, max_train_per_class=8)
    images = data.train.images[:8].astype(np.float32)
    ranges = ("rotation_deg", "shift", "zoom", "aspect", "brightness", "contrast", "erasing")
    for key in ranges:
        only = xray.copy()
        for other in ranges:
            only[other] = (xray[other] or 0.3) if other == key else 0  # xray has no aspect stretch
        out = np.asarray(build_augmentation(only)(images, 3))
        assert out.shape == images.shape and not np.allclose(out, images, atol=0.5), key
    identity = xray.copy()
    for key in ranges:
        identity[key] = 0
    assert build_augmentation(identity) is None


def test_aspect_stretch_changes_the_width_height_ratio_not_the_area():
    from ablation.pipeline import build_augmentation

    aspect = 0.3
    only = compose_config("augmentation=none", f"augmentation.aspect={aspect}").augmentation
    square = np.zeros((64, 96, 96, 1), np.float32)
    square[:, 28:68, 28:68] = 255  # a centred 40 px square
    out = np.asarray(build_augmentation(only)(square, 5))[..., 0] > 127
    widths, heights = out.any(axis=1).sum(axis=1), out.any(axis=2).sum(axis=1)
    ratios = widths / heights
    # Ratios spread over [1 / (1 + aspect), 1 + aspect] (up to a pixel of rounding) ...
    assert ratios.min() < 0.9 and ratios.max() > 1.1
    assert ratios.min() > 1 / (1 + aspect) - 0.06 and ratios.max() < 1 + aspect + 0.06
    # ... and each stretch keeps the area: one side grows as the other shrinks.
    np.testing.assert_allclose(out.sum(axis=(1, 2)), 40 * 40, rtol=0.08)


def test_random_erasing_blanks_one_rectangle_of_the_drawn_size_to_the_image_mean(cache_dir):
    from ablation.pipeline import ERASED_AREA, build_augmentation

    data = load_data(DATA_ROOT, 32, 0.1, 0, cache_dir, max_train_per_class=64)
    images = data.train.images[:128].astype(np.float32)
    erasing = build_augmentation(compose_config("augmentation=none", "augmentation.erasing=0.5").augmentation)
    p = erasing.parameters(len(images), 7)
    out = np.asarray(erasing.apply(images, p))[..., 0]
    chosen = np.asarray(p["erase"]) > 0
    assert 0.3 < chosen.mean() < 0.7  # about half the images
    np.testing.assert_array_equal(out[~chosen], images[~chosen, ..., 0])
    for image, source, height, width in zip(
        out[chosen],
        images[chosen, ..., 0],
        np.asarray(p["erase_height"])[chosen],
        np.asarray(p["erase_width"])[chosen],
        strict=True,
    ):
        changed = image != source
        rows, columns = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        # One solid rectangle: every pixel in the changed rows and columns' box changed (or already had the value) ...
        box = image[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
        np.testing.assert_allclose(box, source.mean(), rtol=1e-5)
        # ... the drawn size to within a pixel a side, in Zhong et al.'s area range.
        assert abs(len(rows) - height * 32) <= 1 and abs(len(columns) - width * 32) <= 1
        assert ERASED_AREA[0] - 0.01 <= height * width <= ERASED_AREA[1] + 1e-6
    # Erasing's draws come after the others': with it on, the geometry and intensity of a seed stay as they were.
    strong = compose_config("augmentation=strong").augmentation
    plain = build_augmentation(strong).parameters(8, 3)
    strong.erasing = 0.5
    erased = build_augmentation(strong).parameters(8, 3)
    for key, values in plain.items():
        np.testing.assert_array_equal(np.asarray(values), np.asarray(erased[key]), err_msg=key)
