"""The training loop: `train(cfg)` alone compiles, fits and evaluates. Used by `python -m ablation`.

The kept model is the epoch with the best `trainer.monitor` on validation (default: validation ROC
AUC, which ignores the threshold and the class balance); the threshold is `trainer.threshold` or,
with `trainer.tune_threshold`, Youden's J on validation. The test split is evaluated once, at the end.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig
from sklearn import metrics
from tensorflow.python.framework import config as tf_config  # disable_op_determinism has no public alias

from ablation import pipeline
from ablation.config import MONITORS
from ablation.data import ChestXray, load_data
from ablation.models import build_model

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


@dataclass
class TrainResult:
    model: keras.Model
    data: ChestXray
    history: dict[str, list[float]]  # Keras History: metric -> one value per epoch
    best_epoch: int  # 1-based
    threshold: float
    test_metrics: dict[str, float]
    test_probabilities: np.ndarray
    class_weights: dict[int, float] | None
    timings: dict[str, float] = field(default_factory=dict)


def configure_devices() -> None:
    """Let jobs share a GPU: allocate its memory as needed, not all of it up front."""
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised by an earlier job in this process
            pass


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """Test metrics of a probabilistic classifier at `threshold`; recall is the sensitivity."""
    predicted = (probabilities >= threshold).astype(int)
    tn, fp, fn, tp = metrics.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    return {
        "accuracy": metrics.accuracy_score(labels, predicted),
        "precision": metrics.precision_score(labels, predicted, zero_division=0),
        "recall": metrics.recall_score(labels, predicted, zero_division=0),
        "specificity": tn / (tn + fp) if tn + fp else 0.0,
        "f1": metrics.f1_score(labels, predicted, zero_division=0),
        "auc": metrics.roc_auc_score(labels, probabilities),
        "pr_auc": metrics.average_precision_score(labels, probabilities),
    }


def youden_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 on the given (validation) data."""
    fpr, tpr, thresholds = metrics.roc_curve(labels, probabilities)
    best = int(np.argmax(tpr - fpr))
    return float(np.clip(thresholds[best], 1e-6, 1 - 1e-6))  # roc_curve's first threshold is inf


def _optimizer(cfg: DictConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr = cfg.optimizer.lr
    if cfg.optimizer.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=cfg.epochs * steps_per_epoch)
    return keras.optimizers.Adam(learning_rate=lr)


def _metrics() -> list[keras.metrics.Metric]:
    # The model outputs logits: thresholds at 0 are probability 0.5.
    return [
        keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0),
        keras.metrics.AUC(name="auc", from_logits=True),
        keras.metrics.Precision(name="precision", thresholds=0.0),
        keras.metrics.Recall(name="recall", thresholds=0.0),
    ]


def _predict(model: keras.Model, ds: tf.data.Dataset) -> np.ndarray:
    logits = model.predict(ds, verbose=0).astype(np.float64).ravel()
    return 1.0 / (1.0 + np.exp(-logits))


def train(
    cfg: DictConfig, callbacks: Sequence[keras.callbacks.Callback] = (), data: ChestXray | None = None
) -> TrainResult:
    """Train one configuration on the real data and evaluate it once on the test split."""
    configure_devices()
    keras.backend.clear_session()  # a sweep runs jobs in one process: start each from a clean state
    keras.utils.set_random_seed(cfg.seed)
    # Deterministic ops also turn XLA off (Keras refuses jit_compile under op determinism).
    if cfg.trainer.deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        tf_config.disable_op_determinism()
    keras.mixed_precision.set_global_policy(cfg.trainer.precision)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    if data is None:
        data = load_data(
            cfg.data.root,
            cfg.data.image_size,
            cfg.data.val_fraction,
            cfg.seed,
            cfg.data.cache_dir,
            cfg.data.max_train_per_class,
        )
    timings["data_seconds"] = time.perf_counter() - start
    weighting = cfg.class_weighting.name
    class_weights = data.class_weights(weighting)

    augmentation = pipeline.build_augmentation(cfg.augmentation, cfg.seed)
    on_device = cfg.trainer.augment_on == "model"
    train_ds = pipeline.train_dataset(
        data.train.images,
        data.train.labels,
        cfg.batch_size,
        cfg.seed,
        augmentation=None if on_device else augmentation,
        oversample=weighting == "oversample",
    )
    val_ds = pipeline.eval_dataset(data.val.images, data.val.labels, cfg.batch_size)
    test_ds = pipeline.eval_dataset(data.test.images, data.test.labels, cfg.batch_size)

    model = build_model(cfg.model.name, data.train.images.shape[1:], cfg.dropout, cfg.batchnorm)
    trained = model
    if on_device and augmentation is not None:
        # Augmentation as the first layers: it runs where the model runs (the GPU) and only in training.
        # The kept model is the bare network, so inference and saved models never carry it.
        inputs = keras.Input(model.input_shape[1:])
        trained = keras.Model(inputs, model(augmentation(inputs)), name=f"{model.name}_augmented")
    trained.compile(
        optimizer=_optimizer(cfg, math.ceil(len(data.train.labels) / cfg.batch_size)),
        loss=keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=cfg.trainer.label_smoothing),
        metrics=_metrics(),
        jit_compile=cfg.trainer.jit_compile,
        steps_per_execution=cfg.trainer.steps_per_execution,
    )
    best = keras.callbacks.EarlyStopping(
        monitor=cfg.trainer.monitor,
        mode=MONITORS[cfg.trainer.monitor],
        patience=cfg.trainer.patience or cfg.epochs,
        restore_best_weights=True,  # also at the end of a full run: the kept model is the best epoch
    )

    start = time.perf_counter()
    fit = trained.fit(
        train_ds,
        validation_data=val_ds,
        epochs=cfg.epochs,
        class_weight=class_weights,
        shuffle=False,  # the tf.data pipeline shuffles
        callbacks=[keras.callbacks.TerminateOnNaN(), best, *callbacks],
        verbose=cfg.trainer.verbose,
    )
    timings["fit_seconds"] = time.perf_counter() - start
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    losses = history.get("loss", [])
    if not losses or not all(math.isfinite(v) for v in losses):
        raise NonFiniteLossError(
            f"non-finite training loss at epoch {len(losses)} (optimizer.lr={cfg.optimizer.lr}); training stopped"
        )

    start = time.perf_counter()
    threshold = cfg.trainer.threshold
    if cfg.trainer.tune_threshold:
        threshold = youden_threshold(data.val.labels, _predict(model, val_ds))
    probabilities = _predict(model, test_ds)
    test_metrics = binary_metrics(data.test.labels, probabilities, threshold)
    timings["eval_seconds"] = time.perf_counter() - start
    keras.mixed_precision.set_global_policy("float32")  # the next job in this process starts clean

    return TrainResult(
        model=model,
        data=data,
        history=history,
        best_epoch=best.best_epoch + 1,
        threshold=float(threshold),
        test_metrics=test_metrics,
        test_probabilities=probabilities,
        class_weights=class_weights,
        timings=timings,
    )
