"""The range checks run before any training: `python -m ablation dropout=1.5` is refused before a run exists,
with a message that names the key, the value and what is allowed. One check per config group; no Keras (the
network's geometry comes from `ablation.geometry`), so a sweep's planning and a dry run validate cheaply.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ablation import geometry
from ablation.config import AugmentOn, Backend, ClassWeighting, Config, OptimizerName, ThresholdRule, flatten


class ConfigError(ValueError):
    """A config value outside its allowed range."""


def _check(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


TTA_WIDTH_RANGE = (0.5, 2.0)
MAX_MIXUP = 10.0  # alpha: at 10 the weights already sit near 0.5 (an even blend); mixup's papers use 0.1 to 1
MAX_CROP = 0.25  # of each side: the lungs reach to within about an eighth of the image's sides
SEED_RANGE = (0, 2**32 - 1)  # what numpy's and TensorFlow's seeding accept
THRESHOLD_ALLOWED = f"a probability in (0, 1), or a rule that picks it on validation: {', '.join(ThresholdRule)}"


def threshold_rule(value: object) -> ThresholdRule | None:
    """`trainer.threshold` as a rule, or None when it is a fixed probability (refused unless in (0, 1))."""
    if isinstance(value, str) and value in tuple(ThresholdRule):
        return ThresholdRule(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigError(f"trainer.threshold={value!r} is not allowed: {THRESHOLD_ALLOWED}")
    return None


def unknown_keys(cfg: DictConfig) -> dict[str, list[str]]:
    """Keys the schema does not know (a misspelt `+dropuot=0.2`), each with the closest known keys."""
    known = list(flatten(OmegaConf.structured(Config)))
    given = [key for key in flatten(cfg) if key != "hydra" and not key.startswith("hydra.")]
    return {key: difflib.get_close_matches(key, known, n=3) for key in given if key not in known}


def _top_level(cfg: DictConfig) -> None:
    for key, closest in unknown_keys(cfg).items():
        hint = f"; did you mean {' or '.join(closest)}?" if closest else ""
        raise ConfigError(f"unknown key {key!r}: the config has no such key{hint} (README: config keys)")
    low, high = SEED_RANGE
    _check(low <= cfg.seed <= high, "seed", cfg.seed, f"an int in [{low}, {high}]")
    _check(0 <= cfg.dropout < 1, "dropout", cfg.dropout, "a float in [0, 1)")
    _check(cfg.epochs >= 1, "epochs", cfg.epochs, "an int >= 1")
    _check(cfg.batch_size >= 1, "batch_size", cfg.batch_size, "an int >= 1")
    for metric, margin in cfg.verdict.margins.items():
        _check(0 < margin < 1, f"verdict.margins.{metric}", margin, "a difference in (0, 1) of the metric")
    wait = cfg.tracking.outage_wait_s
    _check(wait >= 0, "tracking.outage_wait_s", wait, "seconds >= 0 a job's end waits for a store that is away")


def _optimizer(opt: DictConfig) -> None:
    _check(opt.lr > 0, "optimizer.lr", opt.lr, "a float > 0")
    _check(opt.weight_decay >= 0, "optimizer.weight_decay", opt.weight_decay, "a float >= 0")
    _check(0 <= opt.ema < 1, "optimizer.ema", opt.ema, "a momentum in [0, 1); 0 turns it off")
    if opt.name == OptimizerName.sgd:
        ok = opt.momentum is not None and 0 <= opt.momentum < 1
        _check(ok, "optimizer.momentum", opt.momentum, "a float in [0, 1) for sgd")
    else:
        allowed = "null for adam (momentum is sgd's: optimizer=sgd)"
        _check(opt.momentum is None, "optimizer.momentum", opt.momentum, allowed)


def _augmentation(aug: DictConfig) -> None:
    _check(0 <= aug.rotation_deg <= 180, "augmentation.rotation_deg", aug.rotation_deg, "degrees in [0, 180]")
    for key in ("shift", "zoom", "aspect", "brightness", "contrast"):
        _check(0 <= aug[key] < 1, f"augmentation.{key}", aug[key], "a fraction in [0, 1)")
    _check(0 <= aug.erasing <= 1, "augmentation.erasing", aug.erasing, "a probability in [0, 1]; 0 = off")
    _check(0 <= aug.mixup <= MAX_MIXUP, "augmentation.mixup", aug.mixup, f"Beta's alpha in [0, {MAX_MIXUP}]; 0 = off")


def _trainer(trainer: DictConfig, weighting: ClassWeighting) -> None:
    patience = trainer.patience
    _check(patience is None or patience >= 1, "trainer.patience", patience, "null (no early stop) or an int >= 1")
    rule = threshold_rule(trainer.threshold)
    _check(
        not (rule == ThresholdRule.prior and weighting == ClassWeighting.none),
        "trainer.threshold",
        str(rule),
        "youden, midpoint or a probability with class_weighting=none (prior undoes class balancing: oversample or "
        "balanced)",
    )
    smoothing = trainer.label_smoothing
    _check(0 <= smoothing < 0.5, "trainer.label_smoothing", smoothing, "a float in [0, 0.5)")
    widths, (low, high) = list(trainer.tta_widths), TTA_WIDTH_RANGE
    _check(
        not widths or (len(widths) >= 2 and all(low <= w <= high for w in widths)),
        "trainer.tta_widths",
        widths,
        f"[] (off) or two or more width factors in [{low}, {high}], e.g. [0.9,1,1.1]",
    )
    steps = trainer.steps_per_execution
    _check(steps >= 1, "trainer.steps_per_execution", steps, "an int >= 1")
    _check(
        not (trainer.augment_on == AugmentOn.data and trainer.backend != Backend.tensorflow),
        "trainer.augment_on",
        str(trainer.augment_on),
        f"model or auto under the {trainer.backend} backend (only TensorFlow has a tf.data pipeline to augment in)",
    )


def _model_and_data(model: DictConfig, data: DictConfig) -> None:
    crop = list(model.crop)
    _check(0 < model.width <= 4, "model.width", model.width, "a factor in (0, 4] on the ResNets' filters")
    _check(
        not crop or (len(crop) == 4 and all(0 <= fraction <= MAX_CROP for fraction in crop)),
        "model.crop",
        crop,
        f"[] (none) or four fractions [top, bottom, left, right] each in [0, {MAX_CROP}], e.g. [0.05,0.15,0.08,0.08]",
    )
    try:
        geometry.check(str(model.name), (data.image_size, data.image_size), str(model.stem), model.width, crop)
    except geometry.GeometryError as error:
        raise ConfigError(str(error)) from None
    _check(0 < data.val_fraction < 1, "data.val_fraction", data.val_fraction, "a fraction in (0, 1)")
    cap = data.max_train_per_class
    _check(cap is None or cap >= 1, "data.max_train_per_class", cap, "null (all images) or an int >= 1")
    _check(
        Path(data.root).is_dir(),
        "data.root",
        data.root,
        "an existing folder holding train/ and test/ (and optionally val/), each with NORMAL/ and PNEUMONIA/",
    )


def _pack(pack: DictConfig) -> None:
    seeds, workers = list(pack.seeds), pack.workers
    _check(
        all(seed >= 0 for seed in seeds) and len(set(seeds)) == len(seeds),
        "pack.seeds",
        seeds,
        "[] (train `seed` alone) or distinct seeds >= 0, e.g. [0,1,2,3]",
    )
    _check(
        workers == "auto" or (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1),
        "pack.workers",
        workers,
        "auto (one per CPU core) or an int >= 1",
    )


def validate(cfg: DictConfig) -> None:
    """Refuse an unknown key or an out-of-range value, naming the key, the value and what is allowed."""
    _top_level(cfg)
    _optimizer(cfg.optimizer)
    _augmentation(cfg.augmentation)
    _trainer(cfg.trainer, cfg.class_weighting.name)
    _model_and_data(cfg.model, cfg.data)
    _pack(cfg.pack)
