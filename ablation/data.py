"""Chest X-ray data: scan the folders, split by patient, decode once into a cache of arrays for the feed.

Every run of `python -m ablation` goes through `load_data(cfg.data, ...)`; the decoded pixels live
under `runs/cache/` so that only the first run at a given image size ever decodes a JPEG.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import GroupShuffleSplit
from sklearn.utils.class_weight import compute_class_weight
from tqdm import tqdm

from ablation.contract import CLASSES

log = logging.getLogger(__name__)

LAYOUT = "data.root/{train,test}[/val]/{NORMAL,PNEUMONIA}/*.jpeg"
# Bump when decoding changes, so old caches are never read (2: 16-bit scaling, EXIF orientation; 3: images under
# MIN_SIDE skipped).
CACHE_VERSION = 3
FORMATS = ("JPEG", "PNG")  # what chest X-rays come as (Pillow's JPEG opener also takes MPO, a JPEG with extras)
MAX_PIXELS = 50_000_000  # larger files are skipped with a warning: ~5x the largest Kaggle X-ray
MIN_SIDE = 32  # px: a smaller side is skipped with a warning; 32 px is the smallest input every network takes
# Memory one decode may hold at its peak (`decode_cost`); a file that would need more is skipped with a warning.
# A PNG or a baseline JPEG of usual proportions that MAX_PIXELS allows fits: 5 bytes a pixel at worst (Pillow holds
# an RGB(A) PNG in 4, plus the 8-bit gray copy), 250 MB at 50 megapixels, plus a strip and the resized image: 255 MiB
# at image sizes up to 1024 px. Not all do: a progressive JPEG with full-resolution colour near 50 megapixels (its
# coefficients: 302 MiB), a PNG thousands of times longer than wide (its row pointers).
DECODE_BUDGET_BYTES = 256 * 2**20
DECODE_THREADS = 8  # at most this many decodes at a time (fewer on fewer cores): at most 2 GiB of decoding in all
STRIP_PIXELS = 2**19  # a 16-bit image is scaled to 8 bits this many pixels at a time (4 MiB of float64)
DECODER_SLACK = 8 * 2**20  # the decoders' own buffers (zlib's, a PNG's rows, a JPEG's) and the interpreter's
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}  # others: 4 a pixel
_ORIENTATION = 0x0112  # the EXIF tag, and the transposition each of its values asks for (as ImageOps.exif_transpose)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_"),  # person1000_bacteria_2931.jpeg
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-"),  # IM-0115-0001.jpeg, NORMAL2-IM-0427-0001.jpeg
)


class DataError(ValueError):
    """The data folder does not have the layout or content a run needs."""


class CacheError(ValueError):
    """A decode-cache file that cannot be used as it is: unreadable, or not what its name promises."""


def escaped(name: str) -> str:
    """A file name as text whatever its bytes: one that is not valid UTF-8 as its escaped bytes, b'...'."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes arrive as surrogate escapes (PEP 383)
        return repr(os.fsencode(name))
    return name


def not_utf8(names) -> list[str]:
    return [shown for name in names if (shown := escaped(name)) != name]


def patient_id(filename: str) -> str:
    """The patient a file belongs to; a name we cannot parse is its own patient."""
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(filename)
        if match:
            return match.group(1)
    return Path(filename).stem


def scan_split(root: Path, split: str) -> tuple[list[Path], np.ndarray]:
    """Files and labels of one split folder, in a stable order; refuses a missing or empty folder."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"missing split folder {folder}: expected the layout {LAYOUT}")
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(CLASSES):
        class_dir = folder / name
        if not class_dir.is_dir():
            raise DataError(f"missing class folder {class_dir}: expected the layout {LAYOUT}")
        with os.scandir(class_dir) as entries:  # scandir's is_file() needs no stat per file
            entries = [e for e in entries if not e.name.startswith(".")]
        names = sorted(e.name for e in entries if e.is_file())
        _report_ignored(class_dir, entries)
        if bad := not_utf8(names):
            raise DataError(
                f"{len(bad)} file name(s) in {class_dir} are not valid UTF-8, which the predictions CSV and MLflow "
                f"cannot hold: {', '.join(bad[:10])}; rename them (e.g. convmv -f latin1 -t utf8)"
            )
        files = [class_dir / name for name in names]
        if not files:
            raise DataError(f"empty class folder {class_dir}: expected X-ray images, layout {LAYOUT}")
        paths += files
        labels += [label] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def _report_ignored(class_dir: Path, entries: list[os.DirEntry]) -> None:
    """Name what a class folder holds that is not an image file: nested folders and broken links."""
    nested = sorted(escaped(e.name) for e in entries if e.is_dir())
    broken = sorted(escaped(e.name) for e in entries if e.is_symlink() and not os.path.exists(e.path))
    if nested:
        log.warning(
            "ignored %d nested folder(s) in %s (images must sit directly in it): %s",
            len(nested),
            class_dir,
            ", ".join(nested[:10]),
        )
    if broken:
        log.warning("ignored %d broken link(s) in %s: %s", len(broken), class_dir, ", ".join(broken[:10]))


def data_digest(root: str | Path) -> str:
    """Identity of a data folder for resume: every split's files by relative name and size.

    Not their mtimes (the decode cache's key has them): a copy of the same images to another disk or node
    must not re-run a finished study. A file rewritten to exactly the same size is not noticed.
    """
    root = Path(root).resolve()
    paths = []
    for split in ("train", "val", "test"):
        if split == "val" and not (root / split).exists():
            continue
        paths += scan_split(root, split)[0]
    return files_digest(paths, root)


def files_digest(paths, root: str | Path) -> str:
    """16 hex digits of the files' names relative to `root` and their sizes, in order: a data folder's
    (`data_digest`) or a split's (the run's MLflow dataset inputs)."""
    root = Path(root).resolve()
    files = [[str(Path(p).relative_to(root)), Path(p).stat().st_size] for p in paths]
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]


def decode_cost(mode: str, width: int, height: int, size: int, coefficients: int = 0) -> int:
    """Bytes one `decode_image` holds at its peak, at most, for an image Pillow decodes as `mode` at `width` x
    `height` (after a JPEG's draft): the decoded image (Pillow holds 1 byte a pixel for 8-bit gray or palette, 2
    for 16-bit gray, 4 for anything else) and its 8-bit gray copy (1; for an image already 8-bit gray, its upright
    copy); 64 bytes a row and a column (Pillow's row pointers, 8 each, for the images alive at once, and the
    resize's LANCZOS coefficients, 48 a row or column resized); a strip of the 16-bit scaling (12 bytes a pixel:
    Pillow's, numpy's and the float64 strip); the `size` x `size` result and its last pass; DECODER_SLACK; and
    `coefficients`, the bytes a progressive JPEG's decoder buffers (2 a pixel and component, at full size).
    (Pillow resizes through the smaller of its two intermediate images, never larger than the decoded image that
    was released before it: a 32 x 1,562,000 strip peaks at 131 MiB, its cost 205 MiB.)"""
    pixels = width * height
    per_pixel = _STORED_BYTES.get(mode, 4) + 1
    return (
        pixels * per_pixel + 64 * (width + height) + STRIP_PIXELS * 12 + 2 * size * size + DECODER_SLACK + coefficients
    )


def decode_threads() -> int:
    """How many images are decoded at a time: one a core, at most DECODE_THREADS, so that decoding holds at most
    DECODE_THREADS x DECODE_BUDGET_BYTES (2 GiB) however many cores the machine has."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, DECODE_THREADS))


def _scaled_to_8_bits(image: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) image scaled from its own range to 0-255, STRIP_PIXELS at a time into one
    uint8 array: 1 byte a pixel more than the image, not 8 (a float64 copy of the whole image and its temporaries)."""
    low, high = image.getextrema()
    width, height = image.size
    out = np.zeros((height, width), np.uint8)
    if high > low:
        scale = 255.0 / (high - low)
        rows = max(1, STRIP_PIXELS // width)
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            with image.crop((0, top, width, bottom)) as strip:
                block = np.asarray(strip, dtype=np.float64)  # the same arithmetic as the whole image in float64
            block -= low
            block *= scale
            out[top:bottom] = np.rint(block, out=block)
    return Image.fromarray(out)  # mode L, sharing the array's memory


def _to_gray(image: Image.Image) -> Image.Image:
    """8-bit grayscale. A 16-bit (or 32-bit integer) image is scaled from its own range to 0-255: a 12-bit
    detector's 0-4095 stored in 16 bits would otherwise be clipped at 255, almost white. An image already 8-bit
    gray is returned as it is (loaded), not copied."""
    if image.mode.startswith("I"):
        return _scaled_to_8_bits(image)
    if image.mode == "L":
        image.load()
        return image
    return image.convert("L")


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _progressive_coefficients(image: Image.Image) -> int:
    """Bytes a progressive JPEG's decoder buffers whatever the draft: every DCT coefficient of the full-size image,
    an 8 x 8 block of 2-byte coefficients per block of each component at its sampling (as libjpeg sizes them: a
    4:2:0 colour JPEG holds about 3 bytes a pixel); 0 for anything else."""
    if image.format not in ("JPEG", "MPO") or not image.info.get("progressive"):
        return 0
    layers = getattr(image, "layer", None) or [(0, 1, 1, 0)] * len(image.getbands())  # (id, h, v, table)
    h_max, v_max = max(h for _, h, _, _ in layers), max(v for _, _, v, _ in layers)
    blocks = 0
    for _, h, v, _ in layers:
        across = _ceil(_ceil(image.width * h, h_max), 8)
        down = _ceil(_ceil(image.height * v, v_max), 8)
        blocks += _ceil(across, h) * h * _ceil(down, v) * v
    return blocks * 64 * 2


def _open_gray(path: Path, size: int) -> tuple[Image.Image, Image.Transpose | None]:
    """The file as an 8-bit gray image (a JPEG at the smallest scale its draft allows above `size`), and the
    transposition its EXIF orientation asks for; refused as `decode_image` says. Only the gray image outlives
    this call: the decoded one is released as soon as the gray copy exists."""
    try:
        opened = Image.open(path, formats=FORMATS)  # no other format's parser ever sees the bytes
    except UnidentifiedImageError:
        raise ValueError("not a JPEG or PNG file: chest X-rays are read as JPEG or PNG") from None
    with opened as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ValueError(f"{width} x {height} pixels, over the limit of {MAX_PIXELS:,} (ablation.data)")
        if min(width, height) < MIN_SIDE:
            raise ValueError(
                f"{width} x {height} pixels, a side under the minimum of {MIN_SIDE} px (ablation.data.MIN_SIDE): "
                "too small to be a chest X-ray"
            )
        mode, coefficients = image.mode, _progressive_coefficients(image)
        image.draft("L", (size, size))  # lets libjpeg decode large JPEGs at a reduced scale
        cost = decode_cost(image.mode, *image.size, size, coefficients)
        if cost > DECODE_BUDGET_BYTES:
            raise ValueError(
                f"{width} x {height} pixels ({mode}{', progressive JPEG' if coefficients else ''}) need "
                f"{cost / 2**20:.0f} MiB to decode, over the budget of {DECODE_BUDGET_BYTES / 2**20:.0f} MiB "
                "(ablation.data.DECODE_BUDGET_BYTES)"
            )
        upright = _UPRIGHT.get(image.getexif().get(_ORIENTATION))
        gray = _to_gray(image)
        if gray is not image:
            image.close()  # the decoded image's memory goes now, before the gray copy is turned and resized
    return gray, upright


def decode_image(path: Path, size: int) -> np.ndarray:
    """One grayscale `size` x `size` uint8 image from a JPEG or PNG (RGB, CMYK, L, 16-bit; any name), turned
    upright by its EXIF orientation. Refused (ValueError; the file is then skipped with a warning naming it and
    why): other formats; images over `MAX_PIXELS`; images with a side under `MIN_SIDE` (32 px: no chest X-ray is
    that small, and it is the smallest input every network takes, so anything smaller would only be blown up);
    and images whose decode would hold more than `DECODE_BUDGET_BYTES` (`decode_cost`).

    Memory: the decoded image is released as soon as its 8-bit gray copy exists, a 16-bit image is scaled to 8
    bits in strips, and the EXIF turn and the resize work on the 8-bit copy, so one decode holds at most
    `decode_cost` bytes: 158 MiB for a 50-megapixel 16-bit PNG (it held 1.4 GB before), 254 MiB for a
    50-megapixel RGBA PNG; a baseline JPEG is decoded at a reduced scale (draft) and costs little."""
    gray, upright = _open_gray(path, size)
    if upright is not None:  # orientation and gray conversion commute: turning the 8-bit copy costs less
        gray = gray.transpose(upright)
    # Squashed, not cropped: the 224 px copy was made the same way and the lungs fill the frame.
    return np.asarray(gray.resize((size, size), Image.Resampling.LANCZOS))


@dataclass
class DecodedImages:
    images: np.ndarray  # (n, size, size, 1) uint8, the readable files only
    kept: np.ndarray  # (len(paths),) bool: which of the requested files decoded
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason


def _cache_key(paths: list[Path], size: int) -> str:
    entries = []
    for path in paths:  # absolute already: load_data resolves the root once
        stat = os.stat(path)
        entries.append([str(path), stat.st_size, stat.st_mtime_ns])
    blob = json.dumps({"version": CACHE_VERSION, "size": size, "files": entries})
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _decode_all(paths: list[Path], size: int) -> DecodedImages:
    def one(path: Path) -> np.ndarray | str:
        try:
            return decode_image(path, size)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            return f"{type(error).__name__}: {error}"

    # A cold cache can take minutes on the full data set: one line in the log, a bar on a terminal.
    log.info("decoding %d images at %d px into the cache (once per file list and size)", len(paths), size)
    bar = {"total": len(paths), "desc": f"decoding at {size} px", "unit": "image", "leave": False}
    # Pillow releases the GIL while decoding, so threads use the cores (at most DECODE_THREADS: memory stays bounded).
    with ThreadPoolExecutor(max_workers=decode_threads()) as pool:
        results = list(tqdm(pool.map(one, paths), disable=not sys.stderr.isatty(), **bar))
    kept = np.array([not isinstance(r, str) for r in results], dtype=bool)
    skipped = {str(p): r for p, r in zip(paths, results, strict=True) if isinstance(r, str)}
    pixels = [r for r in results if not isinstance(r, str)]
    images = np.stack(pixels)[..., None] if pixels else np.zeros((0, size, size, 1), np.uint8)
    return DecodedImages(images=images, kept=kept, skipped=skipped)


def _read_cache(file: Path, count: int, size: int) -> DecodedImages:
    """The cache file's contents, checked against what its name promises (CacheError says what is wrong)."""
    try:
        with np.load(file, allow_pickle=False) as archive:
            decoded = DecodedImages(archive["images"], archive["kept"], json.loads(str(archive["skipped"])))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise CacheError(f"unreadable: {type(error).__name__}: {error}") from error
    images, kept = decoded.images, decoded.kept
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 1):
        raise CacheError(f"holds {images.dtype} images of shape {images.shape}, not uint8 (n, {size}, {size}, 1)")
    if kept.dtype != bool or kept.shape != (count,) or int(kept.sum()) != len(images):
        raise CacheError(
            f"lists {kept.shape} files with {int(kept.sum())} kept for {len(images)} images; {count} asked"
        )
    return decoded


def _usable_cache(file: Path, count: int, size: int) -> DecodedImages | None:
    if not file.exists():
        return None
    try:
        return _read_cache(file, count, size)
    except CacheError as error:
        log.warning("decode cache %s %s: rebuilding it", file, error)
        return None


def _write_cache(file: Path, decoded: DecodedImages) -> None:
    """Written to a temporary name, flushed to disk and renamed, so a reader never sees half a file; the
    temporary file is removed whatever happens."""
    tmp = None
    try:
        with tempfile.NamedTemporaryFile(dir=file.parent, suffix=".tmp", delete=False) as out:
            tmp = Path(out.name)
            np.savez(out, images=decoded.images, kept=decoded.kept, skipped=json.dumps(decoded.skipped))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, file)
        tmp = None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def load_images(paths: list[Path], size: int, cache_dir: Path) -> DecodedImages:
    """Decoded pixels for `paths`, from the cache keyed by the file list and size, built on a miss or when
    the file found there is not usable. A file lock makes concurrent builders wait for the first one."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    file = cache_dir / f"{size}px-{_cache_key(paths, size)}.npz"
    decoded = _usable_cache(file, len(paths), size)
    if decoded is None:
        with FileLock(str(file) + ".lock"):
            decoded = _usable_cache(file, len(paths), size)  # another process may have built it meanwhile
            if decoded is None:
                decoded = _decode_all(paths, size)
                _write_cache(file, decoded)
    for path, reason in decoded.skipped.items():
        log.warning("skipped image %s (%s)", path, reason)  # unreadable, refused or too small
    return decoded


def split_by_patient(
    paths: list[Path], labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices: per class, a seeded `val_fraction` of the patients goes to validation."""
    groups = np.array([patient_id(p.name) for p in paths])
    train_idx, val_idx = [], []
    for label in range(len(CLASSES)):
        idx = np.flatnonzero(labels == label)
        splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
        tr, va = next(splitter.split(idx, groups=groups[idx]))
        train_idx.append(idx[tr])
        val_idx.append(idx[va])
    train, val = np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))
    shared = set(groups[train]) & set(groups[val])
    if shared:  # only possible if one patient id names images of both classes
        raise DataError(f"patients in both training and validation: {sorted(shared)[:5]}")
    return train, val


def cap_per_class(indices: np.ndarray, labels: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """At most `cap` seeded-random indices of each class (all of them when `cap` is None)."""
    if cap is None:
        return indices
    rng = np.random.default_rng(seed)
    kept = [rng.permutation(indices[labels[indices] == c])[:cap] for c in range(len(CLASSES))]
    return np.sort(np.concatenate(kept))


@dataclass
class Split:
    images: np.ndarray  # (n, size, size, 1) uint8
    labels: np.ndarray  # (n,) int64, 1 = PNEUMONIA
    files: list[str]

    def record(self) -> dict:
        patients = np.array([patient_id(Path(f).name) for f in self.files])
        return {
            name: {
                "images": int(np.sum(self.labels == c)),
                "patients": len(set(patients[self.labels == c])),
            }
            for c, name in enumerate(CLASSES)
        }


@dataclass
class ChestXray:
    train: Split
    val: Split
    test: Split
    skipped: dict[str, str]
    image_size: int

    def class_weights(self, mode: str) -> dict[int, float] | None:
        """`balanced`: n / (2 n_c) on the training split; None for `none` and `oversample`."""
        if mode != "balanced":
            return None
        weights = compute_class_weight("balanced", classes=np.arange(len(CLASSES)), y=self.train.labels)
        return {c: float(w) for c, w in enumerate(weights)}

    def record(self, class_weighting: str) -> dict:
        return {
            "image_size": self.image_size,
            "splits": {name: getattr(self, name).record() for name in ("train", "val", "test")},
            "class_weights": self.class_weights(class_weighting),
            "skipped_files": self.skipped,
        }


def load_data(
    root: str | Path,
    image_size: int,
    val_fraction: float,
    seed: int,
    cache_dir: str | Path,
    max_train_per_class: int | None = None,
) -> ChestXray:
    """The three splits: train and validation from `train/` (+ `val/` if present), test from `test/`."""
    root, cache_dir = Path(root).resolve(), Path(cache_dir)
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder: expected the layout {LAYOUT}")
    pool_paths, pool_labels = scan_split(root, "train")
    if (root / "val").exists():  # the original Kaggle download's 16 images join the pool
        val_paths, val_labels = scan_split(root, "val")
        pool_paths, pool_labels = pool_paths + val_paths, np.concatenate([pool_labels, val_labels])
    test_paths, test_labels = scan_split(root, "test")

    pool = load_images(pool_paths, image_size, cache_dir)
    test = load_images(test_paths, image_size, cache_dir)

    # Split on the readable files only; the cache holds every file of the folder, so every seed,
    # fraction and cap reuses it.
    readable = [p for p, ok in zip(pool_paths, pool.kept, strict=True) if ok]
    labels = pool_labels[pool.kept]
    train_idx, val_idx = split_by_patient(readable, labels, val_fraction, seed)
    train_idx = cap_per_class(train_idx, labels, max_train_per_class, seed)

    def subset(idx: np.ndarray) -> Split:
        return Split(pool.images[idx], labels[idx], [str(readable[i]) for i in idx])

    test_files = [str(p) for p, ok in zip(test_paths, test.kept, strict=True) if ok]
    data = ChestXray(
        train=subset(train_idx),
        val=subset(val_idx),
        test=Split(test.images, test_labels[test.kept], test_files),
        skipped={**pool.skipped, **test.skipped},
        image_size=image_size,
    )
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        if len(set(split.labels.tolist())) < len(CLASSES):
            raise DataError(f"the {name} split of {root} lacks a class after skipping unreadable files")
    return data
