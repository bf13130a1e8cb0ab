"""A hand-made MLflow store shaped like a real ablation sweep, for tests of `python -m analysis report`.

Main sweep: model {cnn, resnet18} x dropout {0.0, 0.5} x seeds {1, 2, 3}; (resnet18, 0.5, seed 3) FAILED.
An older sweep holds a single run (cnn, 0.0, seed 7). Each run's test metrics are computed from the test
predictions it logs (as a real run's are): resnet18 separates the classes much better, dropout 0.5 a little.
Every number logged is returned to the caller so that tests can recompute expectations independently.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from processes import run_module
from sklearn.metrics import roc_auc_score

from ablation.contract import JOB, PARENT, ROLE
from ablation.metrics import binary_metrics

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "pneumonia-ablation-test"
EPOCHS = 6
LABELS = np.array([0] * 80 + [1] * 120)  # the shared test (and validation) images
T0 = 1_700_000_000_000  # ms
ERROR = "ResourceExhaustedError: OOM when allocating tensor"


def _probabilities(model: str, dropout: str, seed: int, split: str) -> np.ndarray:
    """Validation separates the classes better than test, and test NORMALs sit higher: a shift."""
    rng = np.random.default_rng([seed, len(model), int(float(dropout) * 10), len(split)])
    if split == "val":
        return np.round(np.clip(0.2 + 0.5 * LABELS + rng.normal(0, 0.1, len(LABELS)), 0.01, 0.99), 3)
    separation = 0.2 + (0.25 if model == "resnet18" else 0.0) + (0.05 if dropout == "0.5" else 0.0) + 0.01 * seed
    return np.round(np.clip(0.3 + separation * LABELS + rng.normal(0, 0.25, len(LABELS)), 0.01, 0.99), 3)


def _metrics(probabilities: np.ndarray) -> dict[str, float]:
    return {f"test_{k}": float(v) for k, v in binary_metrics(LABELS, probabilities, 0.5).items()}


def _history(seed: int, dropout: str) -> dict[str, list[float]]:
    e = np.arange(1, EPOCHS + 1)
    wiggle = np.where(e % 2 == 0, 1.0, -1.0) * (0.01 * seed + (0.02 if dropout == "0.0" else 0.0))
    return {
        "loss": list(0.7 / e),
        "accuracy": list(0.6 + 0.05 * e),
        "val_loss": list(0.8 / e + wiggle),
        "val_accuracy": list(0.55 + 0.05 * e + wiggle),
        "val_auc": list(0.6 + 0.04 * e - 0.03 * (e == EPOCHS) * seed),
    }


def _params(model: str, dropout: str, seed: int, run: int) -> dict[str, str]:
    return {
        "model": model,
        "model.name": {"cnn": "SimpleCNN", "resnet18": "ResNet18"}[model],
        "dropout": dropout,
        "model.dropout": dropout,
        "batchnorm": "True",
        "augmentation": "none",
        "class_weighting": "none",
        "epochs": str(EPOCHS),
        "seed": str(seed),
        "trainer.seed": str(seed),
        "batch_size": "32",
        "data.image_size": "64",
        "data.root": "/data/chest_xray",
        "optimizer.lr": "0.001",
        "tracking.experiment": EXPERIMENT,
        "paths.run_dir": f"runs/outputs/job{run}",
    }


def build_store(tmp: Path) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=(tmp / "artifacts").as_uri())
    files = tmp / "files"
    files.mkdir()
    record = {
        "image_size": 64,
        "splits": {
            split: {
                "NORMAL": {"images": n0, "patients": n0 - 10},
                "PNEUMONIA": {"images": n1, "patients": n1 // 2},
            }
            for split, n0, n1 in (("train", 1199, 3460), ("val", 150, 420), ("test", 234, 390))
        },
        "class_weights": {"0": 1.95, "1": 0.67},
        "skipped_files": {"train/NORMAL/broken.jpeg": "cannot identify image file"},
    }
    (files / "data_record.json").write_text(json.dumps(record))

    def child(parent: str, model: str, dropout: str, seed: int, run: int, status: str = "FINISHED") -> str:
        tags = {ROLE: JOB, PARENT: parent}
        if status == "FAILED":
            tags["error"] = ERROR
        run_id = client.create_run(exp_id, start_time=T0 + 1000 * run, tags=tags).info.run_id
        params = [Param(k, v) for k, v in _params(model, dropout, seed, run).items()]
        metrics = []
        if status == "FINISHED":
            predicted = {split: _probabilities(model, dropout, seed, split) for split in ("val", "test")}
            kept = {"kept_val_auc": float(roc_auc_score(LABELS, predicted["val"]))}  # what "the best" is chosen on
            values[(model, dropout, seed)] = _metrics(predicted["test"]) | kept
            once = {**values[(model, dropout, seed)], "num_params": 1e5, "best_epoch": 5, "threshold": 0.5}
            metrics = [Metric(k, v, T0, 0) for k, v in once.items()]
            metrics += [
                Metric(k, float(v), T0 + step, step)
                for k, values in _history(seed, dropout).items()
                for step, v in enumerate(values, start=1)
            ]
            folder = files / str(run)
            folder.mkdir()
            for split, probs in predicted.items():
                (folder / f"{split}_predictions.csv").write_text(
                    "file,label,probability\n"
                    + "".join(f"img{i}.jpeg,{y},{p}\n" for i, (y, p) in enumerate(zip(LABELS, probs, strict=True)))
                )
                client.log_artifact(run_id, str(folder / f"{split}_predictions.csv"))
            client.log_artifact(run_id, str(files / "data_record.json"))
        client.log_batch(run_id, metrics=metrics, params=params)
        client.set_terminated(run_id, status)
        return run_id

    values: dict[tuple, dict[str, float]] = {}
    old = client.create_run(exp_id, start_time=T0, tags={"ablation.role": "sweep"}).info.run_id
    old_child = child(old, "cnn", "0.0", 7, run=1)
    client.set_terminated(old, "FINISHED")
    del values[("cnn", "0.0", 7)]  # the older sweep's

    parent = client.create_run(exp_id, start_time=T0 + 100_000, tags={"ablation.role": "sweep"}).info.run_id
    failed = None
    run = 100
    for model in ("cnn", "resnet18"):
        for dropout in ("0.0", "0.5"):
            for seed in (1, 2, 3):
                run += 1
                if (model, dropout, seed) == ("resnet18", "0.5", 3):
                    failed = child(parent, model, dropout, seed, run, status="FAILED")
                    continue
                child(parent, model, dropout, seed, run)
    client.set_terminated(parent, "FINISHED")
    return {
        "uri": uri,
        "client": client,
        "experiment": EXPERIMENT,
        "parent": parent,
        "old_parent": old,
        "old_child": old_child,
        "failed": failed,
        "values": values,
        "history": _history,
        "epochs": EPOCHS,
        "labels": LABELS,
        "probabilities": _probabilities,
    }


_shared: dict[str, object] = {}


def shared_store(tmp_path_factory) -> dict:
    """One store per pytest session for both analysis test modules: building one costs seconds."""
    if "store" not in _shared:
        _shared["store"] = build_store(tmp_path_factory.mktemp("store"))
    return _shared["store"]


def shared_cli_report(tmp_path_factory) -> Path:
    """The output folder of one real `python -m analysis report` run on the shared store."""
    if "report" not in _shared:
        out = tmp_path_factory.mktemp("cli") / "report"
        uri = shared_store(tmp_path_factory)["uri"]
        result = run_module("analysis", "report", "--tracking-uri", uri, "--out", out, timeout=180)
        assert result.returncode == 0, result.stderr
        _shared["report"] = out
    return _shared["report"]
