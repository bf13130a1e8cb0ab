"""Typed schema of the Hydra config (`conf/train.yaml`): one dataclass per config group, an Enum per string choice.

OmegaConf enforces the types and the string choices at composition time (`dropout=abc` and
`trainer.precision=float16` fail there); `ablation.validate` enforces the ranges before any training, and
`ablation.resume` says what one configuration is. No Keras here: Hydra loads this module on every start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ablation.contract import DEFAULT_THRESHOLD, MARGINS


class ModelName(StrEnum):  # the config group model/ (ablation.models)
    cnn = "cnn"
    resnet18 = "resnet18"
    resnet50 = "resnet50"


class ClassWeighting(StrEnum):  # the config group class_weighting/ (ablation.data.ChestXray.class_weights)
    none = "none"
    balanced = "balanced"  # the loss weighs each class by its inverse frequency
    oversample = "oversample"  # class-balanced batches


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


class ThresholdRule(StrEnum):  # trainer.threshold given as a rule: picked on validation (ablation.metrics)
    youden = "youden"
    midpoint = "midpoint"
    prior = "prior"  # undoes class balancing: needs class_weighting oversample or balanced


class AugmentOn(StrEnum):
    auto = "auto"  # where the backend augments: data under TensorFlow, model under JAX
    data = "data"  # in the tf.data pipeline, on the CPU (TensorFlow only: JAX has no such pipeline)
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
    name: ModelName = MISSING
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
    name: ClassWeighting = MISSING


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
    threshold: Any = DEFAULT_THRESHOLD  # a probability in (0, 1), or a ThresholdRule's name: chosen on validation
    tta_widths: list[float] = field(default_factory=list)  # test-time stretches (ablation.models.with_tta); [] off
    label_smoothing: float = 0.0
    precision: Precision = Precision.float32
    augment_on: AugmentOn = AugmentOn.auto
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
    outage_wait_s: float = 120.0


@dataclass
class VerdictConf:  # how the end-of-sweep report judges comparisons (analysis.compare); not part of a configuration
    margins: dict[str, float] = field(default_factory=lambda: dict(MARGINS))  # per test metric: "equivalent" within it


@dataclass
class PackConf:  # seeds of one configuration trained in one job (ablation.job, ablation.workers); not a configuration
    seeds: list[int] = field(default_factory=list)  # set by the study sweeper's pack_seeds; [] trains `seed` alone
    workers: Any = "auto"  # processes that train them side by side: auto (one per CPU core) | N (1: in turn, in the
    # job's own process, the same ops as lone runs)


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
    verdict: VerdictConf = field(default_factory=VerdictConf)
    pack: PackConf = field(default_factory=PackConf)
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
