"""Typed schema of the Hydra config (`conf/train.yaml`), the range checks run before any training, and
what one configuration is.

OmegaConf enforces the types and the string choices (Enums) at composition time (`dropout=abc` and
`trainer.precision=float16` fail there); `validate` enforces the ranges, so that `python -m ablation
dropout=1.5` is refused before a run exists. `config_hash` (resume) and `is_configuration_key`
(analysis' factors) share one definition of what is not part of a configuration. No Keras here: the
job imports this module before it pins a GPU.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

MODELS = ("cnn", "resnet18", "resnet50")
CLASS_WEIGHTINGS = ("none", "balanced", "oversample")
# Keys that locate, label or display things rather than define the training: two runs that differ only
# in them are one configuration (resume skips the second; analysis never takes them for a factor).
NOT_CONFIGURATION = ("tracking", "paths", "hydra", "data.root", "data.cache_dir", "trainer.verbose")
# Keys added after runs were logged, each with the value that does what runs before it did: at that value a key stays
# out of a configuration's identity, so resume still finds the older runs (keys added before this rule are not here).
ADDED_KEYS = {
    "trainer.tta_widths": "[]",
    "model.input_norm": "fixed",
    "model.width": "1.0",
    "model.crop": "[]",
    "optimizer.momentum": "None",
    "augmentation.mixup": "0.0",
    "augmentation.erasing": "0.0",
}


class Precision(StrEnum):
    float32 = "float32"
    mixed_float16 = "mixed_float16"
    mixed_bfloat16 = "mixed_bfloat16"


class Monitor(StrEnum):
    val_auc = "val_auc"
    val_loss = "val_loss"


class OptimizerName(StrEnum):  # the config group optimizer/ (ablation.train.build_optimizer)
    adam = "adam"
    sgd = "sgd"  # with Nesterov momentum


class Schedule(StrEnum):
    constant = "constant"
    cosine = "cosine"


class ThresholdRule(StrEnum):  # how trainer.tune_threshold picks it on validation (ablation.metrics)
    youden = "youden"
    midpoint = "midpoint"
    prior = "prior"  # undoes class balancing: needs class_weighting oversample or balanced


class AugmentOn(StrEnum):
    data = "data"  # in the tf.data pipeline, on the CPU (TensorFlow; other backends have no such pipeline)
    model = "model"  # as the model's first layer, where the model runs


class Stem(StrEnum):  # the ResNets' first layers (ablation.models); the cnn has only imagenet, its own
    imagenet = "imagenet"
    small = "small"


class InputNorm(StrEnum):  # how a network normalises its input pixels (ablation.models)
    fixed = "fixed"
    per_image = "per_image"


class Backend(StrEnum):  # Keras 3's backend (ablation.backend); chosen before Keras starts
    tensorflow = "tensorflow"
    jax = "jax"


MONITORS = {Monitor.val_auc: "max", Monitor.val_loss: "min"}  # checkpoint criterion -> direction


def lower_is_better(metric: str) -> bool:
    """How "the best" run is chosen on a logged metric: lowest for a loss, highest for everything else."""
    return metric.endswith("loss")


@dataclass
class ModelConf:
    name: str = MISSING
    stem: Stem = Stem.imagenet
    input_norm: InputNorm = InputNorm.fixed
    width: float = 1.0  # the ResNets' filters times this
    crop: list[float] = field(default_factory=list)  # [top, bottom, left, right] fractions cut off; [] none


@dataclass
class AugmentationConf:
    name: str = MISSING
    flip: bool = False
    rotation_deg: float = 0.0
    shift: float = 0.0
    zoom: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    aspect: float = 0.0
    mixup: float = 0.0  # Beta's alpha for mixup in the feed (ablation.pipeline.mix); 0 off
    erasing: float = 0.0  # chance that random erasing blanks one rectangle of an image (ablation.pipeline); 0 off


@dataclass
class ClassWeightingConf:
    name: str = MISSING


@dataclass
class OptimizerConf:
    name: OptimizerName = OptimizerName.adam
    lr: float = 1e-3
    momentum: float | None = None  # SGD's; null for Adam, whose moments are its own
    schedule: Schedule = Schedule.constant
    weight_decay: float = 0.0
    ema: float = 0.0


@dataclass
class TrainerConf:
    monitor: Monitor = Monitor.val_auc
    patience: int | None = None
    threshold: float = 0.5
    tune_threshold: bool = False
    threshold_rule: ThresholdRule = ThresholdRule.youden
    tta_widths: list[float] = field(default_factory=list)  # test-time stretches (ablation.models.with_tta); [] off
    label_smoothing: float = 0.0
    precision: Precision = Precision.float32
    augment_on: AugmentOn = AugmentOn.data
    jit_compile: bool = False
    steps_per_execution: int = 1
    deterministic: bool = True
    backend: Backend = Backend.tensorflow
    verbose: int = 2


@dataclass
class DataConf:
    root: str = MISSING
    image_size: int = 224
    val_fraction: float = 0.1
    max_train_per_class: int | None = None
    cache_dir: str = MISSING


@dataclass
class TrackingConf:
    uri: str = MISSING
    experiment: str = "pneumonia-ablation"
    artifact_location: str | None = None
    skip_finished: bool = True
    resume_across_commits: bool = True
    heartbeat_timeout_min: float = 30.0
    report: bool = True
    register: str | None = None
    system_metrics_s: float = 10.0


@dataclass
class PathsConf:
    root: str = MISSING
    runs: str = MISSING
    cache: str = MISSING


@dataclass
class Config:
    model: ModelConf = field(default_factory=ModelConf)
    augmentation: AugmentationConf = field(default_factory=AugmentationConf)
    class_weighting: ClassWeightingConf = field(default_factory=ClassWeightingConf)
    optimizer: OptimizerConf = field(default_factory=OptimizerConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    data: DataConf = field(default_factory=DataConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    paths: PathsConf = field(default_factory=PathsConf)
    dropout: float = 0.5
    batchnorm: bool = True
    epochs: int = 20
    seed: int = 0
    batch_size: int = 32


def register() -> None:
    ConfigStore.instance().store(name="schema", node=Config)


def flatten(cfg: DictConfig) -> dict[str, str]:
    """Every leaf of the resolved config under its dotted name, as text (Enums by name)."""
    flat: dict[str, str] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = str(node)

    walk(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "")
    return flat


def is_configuration_key(key: str) -> bool:
    """Whether a dotted key (a config leaf, an MLflow param) is part of what defines a configuration."""
    return not any(key == part or key.startswith(f"{part}.") for part in NOT_CONFIGURATION)


def config_hash(cfg: DictConfig) -> str:
    """Identity of a training configuration: what resume matches a FINISHED run on."""
    identity = {
        key: value for key, value in flatten(cfg).items() if is_configuration_key(key) and ADDED_KEYS.get(key) != value
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class ConfigError(ValueError):
    """A config value outside its allowed range."""


def _check(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


TTA_WIDTH_RANGE = (0.5, 2.0)
MAX_MIXUP = 10.0  # alpha: at 10 the weights already sit near 0.5 (an even blend); mixup's papers use 0.1 to 1
MAX_CROP = 0.25  # of each side: the lungs reach to within about an eighth of the image's sides
SEED_RANGE = (0, 2**32 - 1)  # what numpy's and TensorFlow's seeding accept


def unknown_keys(cfg: DictConfig) -> dict[str, list[str]]:
    """Keys the schema does not know (a misspelt `+dropuot=0.2`), each with the closest known keys."""
    known = list(flatten(OmegaConf.structured(Config)))
    given = [key for key in flatten(cfg) if key != "hydra" and not key.startswith("hydra.")]
    return {key: difflib.get_close_matches(key, known, n=3) for key in given if key not in known}


def validate(cfg: DictConfig) -> None:
    """Refuse an unknown key or an out-of-range value, naming the key, the value and what is allowed."""
    from ablation.models import cropped_shape, min_image_size  # keras import: only once the types passed

    for key, closest in unknown_keys(cfg).items():
        hint = f"; did you mean {' or '.join(closest)}?" if closest else ""
        raise ConfigError(f"unknown key {key!r}: the config has no such key{hint} (README: config keys)")
    _check(
        SEED_RANGE[0] <= cfg.seed <= SEED_RANGE[1], "seed", cfg.seed, f"an int in [{SEED_RANGE[0]}, {SEED_RANGE[1]}]"
    )

    _check(cfg.model.name in MODELS, "model", cfg.model.name, f"one of {', '.join(MODELS)}")
    _check(0 <= cfg.dropout < 1, "dropout", cfg.dropout, "a float in [0, 1)")
    _check(cfg.epochs >= 1, "epochs", cfg.epochs, "an int >= 1")
    _check(cfg.batch_size >= 1, "batch_size", cfg.batch_size, "an int >= 1")
    _check(cfg.optimizer.lr > 0, "optimizer.lr", cfg.optimizer.lr, "a float > 0")
    _check(cfg.optimizer.weight_decay >= 0, "optimizer.weight_decay", cfg.optimizer.weight_decay, "a float >= 0")
    _check(0 <= cfg.optimizer.ema < 1, "optimizer.ema", cfg.optimizer.ema, "a momentum in [0, 1); 0 turns it off")
    momentum = cfg.optimizer.momentum
    if cfg.optimizer.name == OptimizerName.sgd:
        _check(momentum is not None and 0 <= momentum < 1, "optimizer.momentum", momentum, "a float in [0, 1) for sgd")
    else:
        _check(momentum is None, "optimizer.momentum", momentum, "null for adam (momentum is sgd's: optimizer=sgd)")
    weighting = cfg.class_weighting.name
    _check(weighting in CLASS_WEIGHTINGS, "class_weighting", weighting, f"one of {CLASS_WEIGHTINGS}")

    aug = cfg.augmentation
    _check(0 <= aug.rotation_deg <= 180, "augmentation.rotation_deg", aug.rotation_deg, "degrees in [0, 180]")
    for key in ("shift", "zoom", "aspect", "brightness", "contrast"):
        _check(0 <= aug[key] < 1, f"augmentation.{key}", aug[key], "a fraction in [0, 1)")
    _check(0 <= aug.erasing <= 1, "augmentation.erasing", aug.erasing, "a probability in [0, 1]; 0 = off")
    _check(0 <= aug.mixup <= MAX_MIXUP, "augmentation.mixup", aug.mixup, f"Beta's alpha in [0, {MAX_MIXUP}]; 0 = off")

    trainer = cfg.trainer
    _check(
        trainer.patience is None or trainer.patience >= 1,
        "trainer.patience",
        trainer.patience,
        "null (no early stop) or an int >= 1",
    )
    _check(0 < trainer.threshold < 1, "trainer.threshold", trainer.threshold, "a probability in (0, 1)")
    _check(
        0 <= trainer.label_smoothing < 0.5, "trainer.label_smoothing", trainer.label_smoothing, "a float in [0, 0.5)"
    )
    widths = list(trainer.tta_widths)
    _check(
        not widths or (len(widths) >= 2 and all(TTA_WIDTH_RANGE[0] <= w <= TTA_WIDTH_RANGE[1] for w in widths)),
        "trainer.tta_widths",
        widths,
        f"[] (off) or two or more width factors in [{TTA_WIDTH_RANGE[0]}, {TTA_WIDTH_RANGE[1]}], e.g. [0.9,1,1.1]",
    )
    _check(
        not (trainer.tune_threshold and trainer.threshold_rule == ThresholdRule.prior and weighting == "none"),
        "trainer.threshold_rule",
        str(trainer.threshold_rule),
        "youden or midpoint with class_weighting=none (prior undoes class balancing: oversample or balanced)",
    )
    _check(trainer.steps_per_execution >= 1, "trainer.steps_per_execution", trainer.steps_per_execution, "an int >= 1")

    stem = str(cfg.model.stem)
    _check(
        stem == Stem.imagenet or cfg.model.name != "cnn", "model.stem", stem, "imagenet for the cnn (it has no stem)"
    )
    width = cfg.model.width
    _check(0 < width <= 4, "model.width", width, "a factor in (0, 4] on the ResNets' filters")
    _check(width == 1 or cfg.model.name != "cnn", "model.width", width, "1 for the cnn (its widths are the notebook's)")
    crop = list(cfg.model.crop)
    _check(
        not crop or (len(crop) == 4 and all(0 <= fraction <= MAX_CROP for fraction in crop)),
        "model.crop",
        crop,
        f"[] (none) or four fractions [top, bottom, left, right] each in [0, {MAX_CROP}], e.g. [0.05,0.15,0.08,0.08]",
    )
    data = cfg.data
    minimum = min_image_size(cfg.model.name, stem)
    _check(
        min(cropped_shape((data.image_size, data.image_size), crop)) >= minimum,
        "data.image_size",
        data.image_size,
        f"an int >= {minimum} for model {cfg.model.name} with model.stem={stem} (its downsampling), after model.crop",
    )
    _check(0 < data.val_fraction < 1, "data.val_fraction", data.val_fraction, "a fraction in (0, 1)")
    cap = data.max_train_per_class
    _check(cap is None or cap >= 1, "data.max_train_per_class", cap, "null (all images) or an int >= 1")
    root = Path(data.root)
    _check(
        root.is_dir(),
        "data.root",
        data.root,
        "an existing folder holding train/ and test/ (and optionally val/), each with NORMAL/ and PNEUMONIA/",
    )
