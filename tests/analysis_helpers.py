"""A hand-made MLflow store shaped like a real ablation sweep, for tests of `python -m analysis report`.

Main sweep: model {cnn, resnet18} x dropout {0.0, 0.5} x seeds {1, 2, 3}; (resnet18, 0.5, seed 3) FAILED.
An older sweep holds a single run (cnn, 0.0, seed 7). Every number logged is returned to the caller so
that tests can recompute expectations independently.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from processes import run_module

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "pneumonia-ablation-test"
TEST_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc", "pr_auc")
EPOCHS = 6
T0 = 1_700_000_000_000  # ms
ERROR = "ResourceExhaustedError: OOM when allocating tensor"


def _metrics(model: str, dropout: str, seed: int) -> dict[str, float]:
    rng = np.random.default_rng([seed, len(model), int(float(dropout) * 10)])
    shift = (0.05 if model == "resnet18" else 0.0) + (0.02 if dropout == "0.5" else 0.0) + 0.01 * seed
    return {f"test_{m}": round(0.70 + shift + 0.02 * rng.random(), 6) for m in TEST_METRICS}


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
    labels = np.array([0] * 16 + [1] * 24)
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
        tags = {"ablation.role": "job", "mlflow.parentRunId": parent}
        if status == "FAILED":
            tags["error"] = ERROR
        run_id = client.create_run(exp_id, start_time=T0 + 1000 * run, tags=tags).info.run_id
        params = [Param(k, v) for k, v in _params(model, dropout, seed, run).items()]
        metrics = []
        if status == "FINISHED":
            once = {**_metrics(model, dropout, seed), "num_params": 1e5, "best_epoch": 5, "threshold": 0.5}
            metrics = [Metric(k, v, T0, 0) for k, v in once.items()]
            metrics += [
                Metric(k, float(v), T0 + step, step)
                for k, values in _history(seed, dropout).items()
                for step, v in enumerate(values, start=1)
            ]
            folder = files / str(run)
            folder.mkdir()
            # Validation separates the classes better than test, and test NORMALs sit higher: a shift.
            for split, normal_p, spread in (("val", 0.2, 0.1), ("test", 0.3, 0.25)):
                noise = np.random.default_rng(run).normal(0, spread, len(labels))
                probs = np.round(np.clip(normal_p + 0.5 * labels + noise, 0.01, 0.99), 3)
                (folder / f"{split}_predictions.csv").write_text(
                    "file,label,probability\n"
                    + "".join(f"img{i}.jpeg,{y},{p}\n" for i, (y, p) in enumerate(zip(labels, probs, strict=True)))
                )
                client.log_artifact(run_id, str(folder / f"{split}_predictions.csv"))
            client.log_artifact(run_id, str(files / "data_record.json"))
        client.log_batch(run_id, metrics=metrics, params=params)
        client.set_terminated(run_id, status)
        return run_id

    old = client.create_run(exp_id, start_time=T0, tags={"ablation.role": "sweep"}).info.run_id
    old_child = child(old, "cnn", "0.0", 7, run=1)
    client.set_terminated(old, "FINISHED")

    parent = client.create_run(exp_id, start_time=T0 + 100_000, tags={"ablation.role": "sweep"}).info.run_id
    values, failed = {}, None
    run = 100
    for model in ("cnn", "resnet18"):
        for dropout in ("0.0", "0.5"):
            for seed in (1, 2, 3):
                run += 1
                if (model, dropout, seed) == ("resnet18", "0.5", 3):
                    failed = child(parent, model, dropout, seed, run, status="FAILED")
                    continue
                child(parent, model, dropout, seed, run)
                values[(model, dropout, seed)] = _metrics(model, dropout, seed)
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
