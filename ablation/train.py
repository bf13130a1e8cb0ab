"""The training loop: `train(cfg)` alone fits and evaluates (compiled by `compile_model`). Used by `python -m ablation`.

`train` reads the config once, into a `Recipe` of plain values, and hands those down. The kept model is the
epoch with the best `trainer.monitor` on validation (default: validation ROC AUC, which ignores the threshold and
the class balance); the threshold is `trainer.threshold`, a probability or a rule that picks it on validation
(Youden's J, midway between the classes, or the class prior). The test split is evaluated once, at the end; with
`trainer.tta_widths`, validation and test are both scored with test-time stretches.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
from omegaconf import DictConfig

from ablation import backend, interrupts, pipeline
from ablation.config import MONITORS, AugmentOn, ClassWeighting, OptimizerName, Schedule
from ablation.data import ChestXray, load_data
from ablation.metrics import THRESHOLD_RULES, binary_metrics, sigmoid
from ablation.models import build_model, with_tta
from ablation.validate import threshold_rule

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


@dataclass
class TrainResult:
    model: keras.Model  # the kept network (logits)
    scorer: keras.Model  # the network, with its test-time stretches if any: the logged predictions and saved model
    data: ChestXray
    history: dict[str, list[float]]  # Keras History: metric -> one value per epoch
    best_epoch: int  # 1-based
    threshold: float
    test_metrics: dict[str, float]
    test_probabilities: np.ndarray
    val_probabilities: np.ndarray  # of the kept model: what the threshold is chosen on
    class_weights: dict[int, float] | None
    kept_metrics: dict[str, float] = field(default_factory=dict)  # validation metrics of the kept epoch
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """What one run trains, as plain values read once from its config (`Recipe.of(cfg)`)."""

    seed: int
    precision: str  # Keras' mixed-precision policy
    deterministic: bool
    epochs: int
    batch_size: int
    network: dict  # `ablation.models.build_model`'s arguments, less the input shape
    weighting: ClassWeighting
    augmentation: pipeline.Augmentation | None
    mixup: float
    on_device: bool  # augment as the model's first layer (not in the tf.data feed)
    optimizer: OptimizerName
    lr: float
    momentum: float | None
    schedule: Schedule
    weight_decay: float
    ema: float
    label_smoothing: float
    jit_compile: bool
    steps_per_execution: int
    monitor: str
    patience: int | None
    threshold: float | str  # a probability, or the name of the rule that picks it on validation
    tta_widths: tuple[float, ...]
    verbose: int
    data: dict  # `ablation.data.load_data`'s arguments, less the seed

    @classmethod
    def of(cls, cfg: DictConfig) -> Recipe:
        trainer, opt = cfg.trainer, cfg.optimizer
        rule = threshold_rule(trainer.threshold)
        model = cfg.model
        return cls(
            seed=cfg.seed,
            precision=str(trainer.precision),
            deterministic=trainer.deterministic,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            network={
                "name": str(model.name),
                "dropout": cfg.dropout,
                "batchnorm": cfg.batchnorm,
                "stem": str(model.stem),
                "input_norm": str(model.input_norm),
                "width": model.width,
                "crop": list(model.crop),
            },
            weighting=ClassWeighting(cfg.class_weighting.name),
            augmentation=pipeline.build_augmentation(cfg.augmentation),
            mixup=cfg.augmentation.mixup,
            # Only TensorFlow has an input pipeline to augment in (tf.data); elsewhere the model's first layer augments.
            on_device=trainer.augment_on == AugmentOn.model or not backend.TENSORFLOW,
            optimizer=OptimizerName(opt.name),
            lr=opt.lr,
            momentum=opt.momentum,
            schedule=Schedule(opt.schedule),
            weight_decay=opt.weight_decay,
            ema=opt.ema,
            label_smoothing=trainer.label_smoothing,
            jit_compile=trainer.jit_compile,
            steps_per_execution=trainer.steps_per_execution,
            monitor=str(trainer.monitor),
            patience=trainer.patience,
            threshold=str(rule) if rule else float(trainer.threshold),
            tta_widths=tuple(trainer.tta_widths),
            verbose=trainer.verbose,
            data={
                "root": cfg.data.root,
                "image_size": cfg.data.image_size,
                "val_fraction": cfg.data.val_fraction,
                "cache_dir": cfg.data.cache_dir,
                "max_train_per_class": cfg.data.max_train_per_class,
            },
        )


def build_optimizer(recipe: Recipe, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr = recipe.lr
    if recipe.schedule == Schedule.cosine:
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=recipe.epochs * steps_per_epoch)
    # Keras decouples weight decay from the gradient step (AdamW; SGD likewise); None leaves it off.
    common = {
        "learning_rate": lr,
        "weight_decay": recipe.weight_decay or None,
        "use_ema": recipe.ema > 0,
        "ema_momentum": recipe.ema or 0.99,  # Keras' default, unused when the average is off
    }
    if recipe.optimizer == OptimizerName.sgd:
        return keras.optimizers.SGD(momentum=recipe.momentum, nesterov=True, **common)
    return keras.optimizers.Adam(**common)


def training_metrics() -> list[keras.metrics.Metric]:
    # The model outputs logits: thresholds at 0 are probability 0.5.
    return [
        keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0),
        keras.metrics.AUC(name="auc", from_logits=True),
        keras.metrics.Precision(name="precision", thresholds=0.0),
        keras.metrics.Recall(name="recall", thresholds=0.0),
    ]


def compile_model(model: keras.Model, recipe: Recipe, train_images: int) -> None:
    """Compile exactly as every run does (the benchmark compiles through this too)."""
    model.compile(
        optimizer=build_optimizer(recipe, math.ceil(train_images / recipe.batch_size)),
        loss=keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=recipe.label_smoothing),
        metrics=training_metrics(),
        # JAX always compiles the step with XLA: without jit it runs op by op, many times slower.
        jit_compile=recipe.jit_compile or not backend.TENSORFLOW,
        steps_per_execution=recipe.steps_per_execution,
    )


class EpochLogger(keras.callbacks.Callback):
    """Hands each epoch's metrics and learning rate to `record(epoch, metrics)`, epoch 1-based (tracking's job)."""

    def __init__(self, record: Callable[[int, dict[str, float]], None]):
        super().__init__()
        self.record = record

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        lr = self.model.optimizer.learning_rate
        self.record(epoch + 1, {**(logs or {}), "learning_rate": float(keras.ops.convert_to_numpy(lr))})


class RaiseSwallowedInterrupt(keras.callbacks.Callback):
    """At each batch's end, raise a Ctrl-C or SIGTERM whose interrupt a finalizer swallowed (`ablation.interrupts`)."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        interrupts.raise_pending()

    on_test_batch_end = on_predict_batch_end = on_train_batch_end


def predict_probabilities(model: keras.Model, ds) -> np.ndarray:
    return sigmoid(model.predict(ds, verbose=0).ravel())


def _with_device_augmentation(model: keras.Model, augment: pipeline.Augmentation, seed: int) -> keras.Model:
    """Augmentation as the first layer: it runs where the model runs (the GPU) and only in training.

    The kept model is the bare network, so inference and saved models never carry it.
    """
    inputs = keras.Input(model.input_shape[1:])
    augmented = pipeline.DeviceAugmentation(augment, seed, name="augmentation")(inputs)
    return keras.Model(inputs, model(augmented), name=f"{model.name}_augmented")


def _fit(
    recipe: Recipe, trained: keras.Model, data: ChestXray, datasets, callbacks
) -> tuple[dict[str, list[float]], keras.callbacks.EarlyStopping]:
    train_ds, val_ds = datasets
    best = keras.callbacks.EarlyStopping(
        monitor=recipe.monitor,
        mode=MONITORS[recipe.monitor],
        patience=recipe.patience or recipe.epochs,
        restore_best_weights=True,  # also at the end of a full run: the kept model is the best epoch
    )
    # With a weight average, validation and the kept-epoch snapshot both see the averaged weights:
    # the swap comes before EarlyStopping in the list, so its snapshot at each epoch's end is the average.
    average = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if recipe.ema else []
    try:
        fit = trained.fit(
            train_ds,
            validation_data=val_ds,
            epochs=recipe.epochs,
            class_weight=data.class_weights(recipe.weighting),
            shuffle=False,  # the feed shuffles
            callbacks=[keras.callbacks.TerminateOnNaN(), RaiseSwallowedInterrupt(), *average, best, *callbacks],
            verbose=recipe.verbose,
        )
    except Exception as error:
        raise (backend.clearer_error(error) or error) from error
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    losses = history.get("loss", [])
    if not losses or not all(math.isfinite(v) for v in losses):
        raise NonFiniteLossError(
            f"non-finite training loss at epoch {len(losses)} (optimizer.lr={recipe.lr}); training stopped"
        )
    return history, best


def _compiled(recipe: Recipe, data: ChestXray, warm: dict | None) -> tuple[keras.Model, keras.Model]:
    """The network and the model that trains it (the network, or the network behind its augmentation layer),
    compiled, with this seed's initial variables.

    With `warm` (a dict a caller keeps between runs in one process), a run whose recipe differs from an earlier
    one's only by its seed trains the earlier run's compiled model: its variables, and its optimizer's, are set to
    a freshly built model's, so it starts exactly where a lone run would, and the traced training step (seconds of
    Python per run) is kept.
    """
    model = build_model(input_shape=data.train.images.shape[1:], **recipe.network)
    augment = recipe.augmentation
    trained = _with_device_augmentation(model, augment, recipe.seed) if recipe.on_device and augment else model
    compile_model(trained, recipe, len(data.train.labels))
    if warm is None:
        return model, trained
    key = repr((dataclasses.replace(recipe, seed=0, verbose=0), data.train.images.shape))
    if key not in warm:
        warm[key] = model, trained
        return model, trained
    kept_model, kept_trained = warm[key]
    trained.optimizer.build(trained.trainable_variables)
    for target, source in (
        (kept_trained.variables, trained.variables),
        (kept_trained.optimizer.variables, trained.optimizer.variables),
    ):
        for kept, fresh in zip(target, source, strict=True):
            kept.assign(fresh)
    return kept_model, kept_trained


def train(
    cfg: DictConfig,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    data: ChestXray | None = None,
    warm: dict | None = None,
) -> TrainResult:
    """Train one configuration on the real data and evaluate it once on the test split. `warm`: see `_compiled`."""
    recipe = Recipe.of(cfg)
    backend.set_up(recipe.seed, recipe.precision, recipe.deterministic)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    data = data or load_data(seed=recipe.seed, **recipe.data)
    timings["data_seconds"] = time.perf_counter() - start

    augment = recipe.augmentation
    train_ds = pipeline.train_batches(
        data.train.images,
        data.train.labels,
        recipe.batch_size,
        recipe.seed,
        augment=None if recipe.on_device else augment,
        oversample=recipe.weighting == ClassWeighting.oversample,
        mixup=recipe.mixup,
    )
    val_ds = pipeline.eval_batches(data.val.images, data.val.labels, recipe.batch_size)
    test_ds = pipeline.eval_batches(data.test.images, data.test.labels, recipe.batch_size)
    model, trained = _compiled(recipe, data, warm)

    start = time.perf_counter()
    history, best = _fit(recipe, trained, data, (train_ds, val_ds), callbacks)
    timings["fit_seconds"] = time.perf_counter() - start
    kept = best.best_epoch  # 0-based

    start = time.perf_counter()
    # The threshold is chosen on the same scores the test split gets: with test-time stretches, those too.
    scorer = with_tta(model, list(recipe.tta_widths)) if recipe.tta_widths else model
    val_probabilities = predict_probabilities(scorer, val_ds)
    threshold = recipe.threshold
    if isinstance(threshold, str):
        threshold = THRESHOLD_RULES[threshold](data.val.labels, val_probabilities)
    probabilities = predict_probabilities(scorer, test_ds)
    timings["eval_seconds"] = time.perf_counter() - start
    keras.mixed_precision.set_global_policy("float32")  # the next job in this process starts clean

    return TrainResult(
        model=model,
        scorer=scorer,
        data=data,
        history=history,
        best_epoch=kept + 1,
        threshold=float(threshold),
        test_metrics=binary_metrics(data.test.labels, probabilities, threshold),
        test_probabilities=probabilities,
        val_probabilities=val_probabilities,
        class_weights=data.class_weights(recipe.weighting),
        kept_metrics={k: v[kept] for k, v in history.items() if k.startswith("val_")},
        timings=timings,
    )
