"""The training loop: `train(cfg)` alone fits and evaluates (compiled by `compile_model`). Used by `python -m ablation`.

The kept model is the epoch with the best `trainer.monitor` on validation (default: validation ROC
AUC, which ignores the threshold and the class balance); the threshold is `trainer.threshold` or,
with `trainer.tune_threshold`, chosen on validation by `trainer.threshold_rule` (Youden's J, or midway between
the classes). The test split is evaluated once, at the end; with `trainer.tta_widths`, validation and test are
both scored with test-time stretches.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
from omegaconf import DictConfig

from ablation import backend, interrupts, pipeline
from ablation.config import MONITORS, AugmentOn, OptimizerName, Schedule
from ablation.data import ChestXray, load_data
from ablation.metrics import THRESHOLD_RULES, binary_metrics, sigmoid
from ablation.models import build_model, with_tta

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


def build_optimizer(cfg: DictConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr = cfg.optimizer.lr
    if cfg.optimizer.schedule == Schedule.cosine:
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=cfg.epochs * steps_per_epoch)
    # Keras decouples weight decay from the gradient step (AdamW; SGD likewise); None leaves it off.
    ema = cfg.optimizer.ema
    common = {
        "learning_rate": lr,
        "weight_decay": cfg.optimizer.weight_decay or None,
        "use_ema": ema > 0,
        "ema_momentum": ema or 0.99,  # Keras' default, unused when the average is off
    }
    if cfg.optimizer.name == OptimizerName.sgd:
        return keras.optimizers.SGD(momentum=cfg.optimizer.momentum, nesterov=True, **common)
    return keras.optimizers.Adam(**common)


def training_metrics() -> list[keras.metrics.Metric]:
    # The model outputs logits: thresholds at 0 are probability 0.5.
    return [
        keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0),
        keras.metrics.AUC(name="auc", from_logits=True),
        keras.metrics.Precision(name="precision", thresholds=0.0),
        keras.metrics.Recall(name="recall", thresholds=0.0),
    ]


def compile_model(model: keras.Model, cfg: DictConfig, train_images: int) -> None:
    """Compile exactly as every run does (the benchmark compiles through this too)."""
    model.compile(
        optimizer=build_optimizer(cfg, math.ceil(train_images / cfg.batch_size)),
        loss=keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=cfg.trainer.label_smoothing),
        metrics=training_metrics(),
        # JAX always compiles the step with XLA: without jit it runs op by op, many times slower.
        jit_compile=cfg.trainer.jit_compile or not backend.TENSORFLOW,
        steps_per_execution=cfg.trainer.steps_per_execution,
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
    cfg: DictConfig, trained: keras.Model, data: ChestXray, datasets, callbacks
) -> tuple[dict[str, list[float]], keras.callbacks.EarlyStopping]:
    train_ds, val_ds = datasets
    best = keras.callbacks.EarlyStopping(
        monitor=str(cfg.trainer.monitor),
        mode=MONITORS[cfg.trainer.monitor],
        patience=cfg.trainer.patience or cfg.epochs,
        restore_best_weights=True,  # also at the end of a full run: the kept model is the best epoch
    )
    # With a weight average, validation and the kept-epoch snapshot both see the averaged weights:
    # the swap comes before EarlyStopping in the list, so its snapshot at each epoch's end is the average.
    average = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if cfg.optimizer.ema else []
    try:
        fit = trained.fit(
            train_ds,
            validation_data=val_ds,
            epochs=cfg.epochs,
            class_weight=data.class_weights(cfg.class_weighting.name),
            shuffle=False,  # the feed shuffles
            callbacks=[keras.callbacks.TerminateOnNaN(), RaiseSwallowedInterrupt(), *average, best, *callbacks],
            verbose=cfg.trainer.verbose,
        )
    except Exception as error:
        raise (backend.clearer_error(error) or error) from error
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    losses = history.get("loss", [])
    if not losses or not all(math.isfinite(v) for v in losses):
        raise NonFiniteLossError(
            f"non-finite training loss at epoch {len(losses)} (optimizer.lr={cfg.optimizer.lr}); training stopped"
        )
    return history, best


def load(cfg: DictConfig) -> ChestXray:
    return load_data(
        cfg.data.root,
        cfg.data.image_size,
        cfg.data.val_fraction,
        cfg.seed,
        cfg.data.cache_dir,
        cfg.data.max_train_per_class,
    )


def _train_batches(cfg: DictConfig, data: ChestXray, augment: pipeline.Augmentation | None):
    return pipeline.train_batches(
        data.train.images,
        data.train.labels,
        cfg.batch_size,
        cfg.seed,
        augment=augment,
        oversample=cfg.class_weighting.name == "oversample",
        mixup=cfg.augmentation.mixup,
    )


def train(
    cfg: DictConfig, callbacks: Sequence[keras.callbacks.Callback] = (), data: ChestXray | None = None
) -> TrainResult:
    """Train one configuration on the real data and evaluate it once on the test split."""
    backend.set_up(cfg)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    data = data or load(cfg)
    timings["data_seconds"] = time.perf_counter() - start

    augment = pipeline.build_augmentation(cfg.augmentation)
    # Only TensorFlow has an input pipeline to augment in (tf.data); elsewhere the model's first layer augments.
    on_device = cfg.trainer.augment_on == AugmentOn.model or not backend.TENSORFLOW
    train_ds = _train_batches(cfg, data, None if on_device else augment)
    val_ds = pipeline.eval_batches(data.val.images, data.val.labels, cfg.batch_size)
    test_ds = pipeline.eval_batches(data.test.images, data.test.labels, cfg.batch_size)
    model = build_model(
        cfg.model.name,
        data.train.images.shape[1:],
        cfg.dropout,
        cfg.batchnorm,
        stem=str(cfg.model.stem),
        input_norm=str(cfg.model.input_norm),
        width=cfg.model.width,
        crop=list(cfg.model.crop),
    )
    trained = _with_device_augmentation(model, augment, cfg.seed) if on_device and augment else model
    compile_model(trained, cfg, len(data.train.labels))

    start = time.perf_counter()
    history, best = _fit(cfg, trained, data, (train_ds, val_ds), callbacks)
    timings["fit_seconds"] = time.perf_counter() - start
    kept = best.best_epoch  # 0-based

    start = time.perf_counter()
    # The threshold is chosen on the same scores the test split gets: with test-time stretches, those too.
    scorer = with_tta(model, list(cfg.trainer.tta_widths)) if cfg.trainer.tta_widths else model
    threshold = cfg.trainer.threshold
    val_probabilities = predict_probabilities(scorer, val_ds)
    if cfg.trainer.tune_threshold:
        threshold = THRESHOLD_RULES[cfg.trainer.threshold_rule](data.val.labels, val_probabilities)
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
        class_weights=data.class_weights(cfg.class_weighting.name),
        kept_metrics={k: v[kept] for k, v in history.items() if k.startswith("val_")},
        timings=timings,
    )
