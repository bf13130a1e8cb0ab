"""The files a trained run of `python -m ablation` leaves: written here, into the job's output folder, and
uploaded to MLflow once by `tracking.log_outputs` (same names in the folder and in the run).

    config.yaml  data_record.json  model_summary.txt  test_predictions.csv  val_predictions.csv
    learning_curves.png  confusion_matrix.png  roc_curve.png  gradcam_panel.png
    model/  the MLflow model (MLmodel, data/model.keras, signature, input example: `save_model`)
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ablation import backend, explain, figures, models, tracking
from ablation.contract import DATA_RECORD, MODEL_ARTIFACT, image_key, redact
from ablation.train import TrainResult


def once_metrics(result: TrainResult, record: dict) -> dict[str, float]:
    """What a run logs once: test metrics, the kept epoch's validation metrics, sizes, timings, data counts."""
    once = {f"test_{k}": float(v) for k, v in result.test_metrics.items()}
    once.update({f"kept_{k}": v for k, v in result.kept_metrics.items()})
    once.update(
        num_params=result.model.count_params(),
        best_epoch=result.best_epoch,
        threshold=result.threshold,
        **result.timings,
    )
    for name, weight in (result.class_weights or {}).items():
        once[f"class_weight_{name}"] = weight
    for split, classes in record["splits"].items():
        for cls, counts in classes.items():
            for what, count in counts.items():
                once[f"data_{split}_{cls.lower()}_{what}"] = count
    once["data_skipped_files"] = len(record["skipped_files"])
    return once


def _portable(value, cfg: DictConfig):
    """The resolved config with each string as a shared server may show it: secrets redacted, this machine's paths
    `tracking.portable`."""
    if isinstance(value, dict):
        return {key: _portable(item, cfg) for key, item in value.items()}
    if isinstance(value, list):
        return [_portable(item, cfg) for item in value]
    return tracking.portable(redact(value), cfg.paths.root) if isinstance(value, str) else value


def write(cfg: DictConfig, result: TrainResult, folder: Path) -> dict[str, float]:
    """Every file of the run into `folder`; returns the metrics to log once."""
    folder.mkdir(parents=True, exist_ok=True)
    record = result.data.record(cfg.class_weighting.name)
    summary = io.StringIO()
    result.model.summary(print_fn=lambda line, **_: summary.write(line + "\n"))
    (folder / "model_summary.txt").write_text(summary.getvalue())
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(_portable(OmegaConf.to_container(cfg, resolve=True), cfg)))
    # Images by their path under data.root (split/CLASS/name), not this machine's layout.
    record["skipped_files"] = {image_key(str(file)): why for file, why in record["skipped_files"].items()}
    (folder / DATA_RECORD).write_text(json.dumps(record, indent=2))
    for split, probabilities in (("test", result.test_probabilities), ("val", result.val_probabilities)):
        images = getattr(result.data, split)
        files = [image_key(str(file)) for file in images.files]
        pd.DataFrame({"file": files, "label": images.labels, "probability": probabilities}).to_csv(
            folder / f"{split}_predictions.csv", index=False
        )
    figures.learning_curves(result.history, result.best_epoch, folder / "learning_curves.png")
    labels, probs = result.data.test.labels, result.test_probabilities
    figures.confusion_matrix(labels, probs, result.threshold, folder / "confusion_matrix.png")
    figures.roc_curve(labels, probs, folder / "roc_curve.png")
    explain.gradcam_panel(
        result.model, result.data.test.images, labels, probs, result.threshold, folder / "gradcam_panel.png"
    )
    save_model(result.scorer, folder / MODEL_ARTIFACT, result.data.test.images[:1])
    return once_metrics(result, record)


def save_model(network: keras.Model, path: Path, example_images: np.ndarray) -> None:
    """The kept network (with its test-time stretches, if any) as an MLflow model (Keras flavor) that gives the
    pneumonia probability: `mlflow.pyfunc.load_model` (then `.predict(images)`) and predict load it, in Keras' safe
    mode. Its signature and input example (the first test image) say what it takes: raw pixels, (n, size, size,
    channels) float32."""
    import mlflow.keras
    from mlflow.models import infer_signature

    model = models.with_probability(network)
    example = example_images.astype(np.float32)
    example = np.repeat(example, network.input_shape[-1], axis=-1) if example.shape[-1] == 1 else example
    path.mkdir(parents=True)  # MLflow writes the example before it makes the folder
    mlflow.keras.save_model(
        model,
        str(path),
        signature=infer_signature(example, model.predict(example, verbose=0)),
        input_example=example,
        # Given, not inferred: inferring loads the model again in a subprocess, seconds per run.
        pip_requirements=backend.requirements(),
    )
