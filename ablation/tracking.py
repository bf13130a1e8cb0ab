"""MLflow bookkeeping for `python -m ablation`: experiments, sweep and job runs, params, metrics, artifacts.

Runs are written through `MlflowClient` with explicit run ids, so jobs in other processes (joblib,
Ray, SLURM) attach to the same sweep parent: its id is kept in the sweep directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import keras
import mlflow
import pandas as pd
from filelock import FileLock
from hydra.experimental.callback import Callback
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from ablation import explain, figures

log = logging.getLogger(__name__)

ROLE = "ablation.role"  # "sweep" on a parent run, "job" on a child run
CONFIG_HASH = "ablation.config_hash"
HOST, PID = "ablation.host", "ablation.pid"
PARENT = "mlflow.parentRunId"
PARENT_FILE = "mlflow_parent.json"  # in the sweep dir: the parent run every job attaches to
DRIVER_FILE = "sweep_driver.json"  # in the sweep dir: host and pid of the process that launched the sweep
JOBS_FILE = "jobs.jsonl"  # in the sweep dir: one line per finished, failed, refused or skipped job
# Keys that locate things rather than define the training: left out of the resume hash.
NOT_TRAINING = ("tracking", "paths", "data.root", "data.cache_dir", "trainer.verbose")


# A tracking server that went away fails the job after about 30 s of retries (after 0, 2, 4, 8, 16 s; 30 s to
# answer each), which rides out a server restart, rather than MLflow's minutes (7 retries, backoff factor 2,
# 120 s to answer). The environment still wins. See docs/reliability.md.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# `scheme://user:password@`: the password, up to the last @ before the path.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):[^/\s]*@")


def gpus_per_job() -> float:
    """GPUs a Ray task asks for (`conf/hydra/launcher/ray_tasks.yaml`): $ABLATION_GPUS_PER_JOB, else 1 where this
    machine has an NVIDIA GPU, else 0 (a task asking for a GPU that no node has would wait forever)."""
    if os.environ.get("ABLATION_GPUS_PER_JOB"):
        return float(os.environ["ABLATION_GPUS_PER_JOB"])
    if not shutil.which("nvidia-smi"):
        return 0.0
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
    return float(any(line.startswith("GPU ") for line in listing.splitlines()))


# Resolved in the launching process: this module is imported there first, by the SweepSummary callback.
OmegaConf.register_new_resolver("ablation.gpus_per_job", gpus_per_job, replace=True)


def client(uri: str) -> mlflow.MlflowClient:
    if uri.startswith(("http://", "https://")):
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
    return mlflow.MlflowClient(tracking_uri=uri)


def redact(value: str) -> str:
    """Text without the password of any `scheme://user:pass@host` in it: secrets never reach a param or tag."""
    return _USERINFO.sub(r"\1:***@", value)


def flatten(cfg: DictConfig) -> dict[str, str]:
    """Every leaf of the resolved config under its dotted name."""
    flat: dict[str, str] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = redact(str(node))

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def run_params(cfg: DictConfig) -> dict[str, str]:
    params = flatten(cfg)
    params.update(
        model=cfg.model.name,
        augmentation=cfg.augmentation.name,
        class_weighting=cfg.class_weighting.name,
    )
    return params


def config_hash(cfg: DictConfig) -> str:
    """Identity of a training configuration: every leaf except where things are stored."""
    params = {k: v for k, v in flatten(cfg).items() if not k.startswith(NOT_TRAINING)}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def git_commit(root: str) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def ensure_experiment(mlflow_client: mlflow.MlflowClient, name: str, artifact_location: str | None) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # another job created it first
        return mlflow_client.get_experiment_by_name(name).experiment_id


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_runs(mlflow_client: mlflow.MlflowClient, experiment_id: str) -> list[str]:
    """End as KILLED every RUNNING run of this host whose process is gone (kill -9, OOM killer)."""
    reaped = []
    for run in mlflow_client.search_runs([experiment_id], "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if tags.get(HOST) != socket.gethostname() or _pid_alive(int(tags.get(PID, "0") or 0)):
            continue
        mlflow_client.set_tag(run.info.run_id, "error", f"process {tags.get(PID)} died while the run was RUNNING")
        mlflow_client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        reaped.append(run.info.run_id)
        log.warning("marked stale run %s KILLED: its process %s is gone", run.info.run_id, tags.get(PID))
    return reaped


def finished_run(mlflow_client: mlflow.MlflowClient, experiment_id: str, digest: str) -> str | None:
    """The id of a FINISHED run with this training configuration, if any."""
    runs = mlflow_client.search_runs(
        [experiment_id], f"tags.`{CONFIG_HASH}` = '{digest}' and attributes.status = 'FINISHED'", max_results=1
    )
    return runs[0].info.run_id if runs else None


def process_tags() -> dict[str, str]:
    return {HOST: socket.gethostname(), PID: str(os.getpid())}


def driver_tags(sweep_dir: Path) -> dict[str, str]:
    """Host and pid of the sweep's launching process (written by SweepSummary), else of this process.

    A parent run carries them, so that the reaper ends it only once the launcher is gone: a Ray or
    submitit worker that created it exits long before the sweep ends.
    """
    record = sweep_dir / DRIVER_FILE
    return json.loads(record.read_text()) if record.exists() else process_tags()


def sweep_parent(mlflow_client: mlflow.MlflowClient, experiment_id: str, sweep_dir: Path, uri: str) -> str:
    """The sweep's parent run id: created by the first job that trains, read by every other job."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record = sweep_dir / PARENT_FILE
    with FileLock(str(record) + ".lock"):
        if record.exists():
            return json.loads(record.read_text())["run_id"]
        run = mlflow_client.create_run(
            experiment_id,
            run_name=f"sweep {sweep_dir.parent.name} {sweep_dir.name}",
            tags={ROLE: "sweep", "ablation.sweep_dir": str(sweep_dir), **driver_tags(sweep_dir)},
        )
        record.write_text(json.dumps({"run_id": run.info.run_id, "tracking_uri": uri}))
        return run.info.run_id


class EpochLogger(keras.callbacks.Callback):
    """Logs every Keras epoch metric to MLflow with step = epoch number (1-based)."""

    def __init__(self, mlflow_client: mlflow.MlflowClient, run_id: str):
        super().__init__()
        self.mlflow_client, self.run_id = mlflow_client, run_id

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        now = int(time.time() * 1000)
        lr = self.model.optimizer.learning_rate
        entries = {**(logs or {}), "learning_rate": float(keras.ops.convert_to_numpy(lr))}
        metrics = [Metric(k, float(v), now, epoch + 1) for k, v in entries.items()]
        self.mlflow_client.log_batch(self.run_id, metrics=metrics)


def log_params(mlflow_client: mlflow.MlflowClient, run_id: str, params: dict[str, str]) -> None:
    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        mlflow_client.log_batch(run_id, params=items[start : start + 100])


def log_result(mlflow_client: mlflow.MlflowClient, run_id: str, cfg: DictConfig, result, out_dir: Path) -> None:
    """Test metrics, the data record and every artifact of a trained run (written to `out_dir` first)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    now = int(time.time() * 1000)
    once = {f"test_{k}": float(v) for k, v in result.test_metrics.items()}
    once.update(
        num_params=result.model.count_params(),
        best_epoch=result.best_epoch,
        threshold=result.threshold,
        **result.timings,
    )
    for name, weight in (result.class_weights or {}).items():
        once[f"class_weight_{name}"] = weight
    record = result.data.record(cfg.class_weighting.name)
    for split, classes in record["splits"].items():
        for cls, counts in classes.items():
            for what, count in counts.items():
                once[f"data_{split}_{cls.lower()}_{what}"] = count
    once["data_skipped_files"] = len(record["skipped_files"])
    mlflow_client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in once.items()])

    summary = io.StringIO()
    result.model.summary(print_fn=lambda line, **_: summary.write(line + "\n"))
    (out_dir / "model_summary.txt").write_text(summary.getvalue())
    (out_dir / "config.yaml").write_text(redact(OmegaConf.to_yaml(cfg, resolve=True)))
    (out_dir / "data_record.json").write_text(json.dumps(record, indent=2))
    for split, probabilities in (("test", result.test_probabilities), ("val", result.val_probabilities)):
        images = getattr(result.data, split)
        pd.DataFrame({"file": images.files, "label": images.labels, "probability": probabilities}).to_csv(
            out_dir / f"{split}_predictions.csv", index=False
        )
    figures.learning_curves(result.history, result.best_epoch, out_dir / "learning_curves.png")
    labels, probs = result.data.test.labels, result.test_probabilities
    figures.confusion_matrix(labels, probs, result.threshold, out_dir / "confusion_matrix.png")
    figures.roc_curve(labels, probs, out_dir / "roc_curve.png")
    explain.gradcam_panel(
        result.model, result.data.test.images, labels, probs, result.threshold, out_dir / "gradcam_panel.png"
    )
    for name in (
        "model_summary.txt",
        "config.yaml",
        "data_record.json",
        "test_predictions.csv",
        "val_predictions.csv",
        "learning_curves.png",
        "confusion_matrix.png",
        "roc_curve.png",
        "gradcam_panel.png",
    ):
        mlflow_client.log_artifact(run_id, str(out_dir / name))
    model_dir = out_dir / "model"
    model_dir.mkdir(exist_ok=True)
    result.model.save(model_dir / "model.keras")
    mlflow_client.log_artifact(run_id, str(model_dir / "model.keras"), artifact_path="model")


def end_run(mlflow_client: mlflow.MlflowClient, run_id: str, status: str, error: str | None = None) -> None:
    """Terminate a run; never raises, so the error that ended it is the one the user sees."""
    with contextlib.suppress(Exception):
        if error:
            mlflow_client.set_tag(run_id, "error", error[:5000])
        mlflow_client.set_terminated(run_id, status)


def append_job(sweep_dir: Path, entry: dict) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(sweep_dir / JOBS_FILE) + ".lock"), open(sweep_dir / JOBS_FILE, "a") as f:
        f.write(json.dumps(entry) + "\n")


class SweepSummary(Callback):
    """At the end of a sweep: a table of its jobs, the parent run ended, exit status 1 if any job failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / DRIVER_FILE).write_text(json.dumps(process_tags()))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs_file = sweep_dir / JOBS_FILE
        jobs = [json.loads(line) for line in jobs_file.read_text().splitlines()] if jobs_file.exists() else []
        if not jobs:
            return
        # A job requeued by its scheduler (SLURM preemption) has one line per attempt: the last one counts.
        table = pd.DataFrame(jobs).drop_duplicates("job", keep="last").sort_values("job")
        columns = [c for c in ("job", "status", "test_auc", "run_id", "overrides") if c in table]
        print(f"\nSweep {sweep_dir}:\n" + table[columns].to_string(index=False, na_rep="-"))
        failed = table[table.status.isin(["FAILED", "REFUSED", "KILLED"])]
        parent_file = sweep_dir / PARENT_FILE
        if parent_file.exists():
            parent = json.loads(parent_file.read_text())
            status = "FAILED" if len(failed) else "FINISHED"
            end_run(
                client(parent["tracking_uri"]),
                parent["run_id"],
                status,
                f"{len(failed)} of {len(table)} jobs failed" if len(failed) else None,
            )
        if len(failed):
            for _, job in failed.iterrows():
                print(f"job {job.job} {job.status}: {job.overrides}: {job.get('error', '')}")
            raise SystemExit(1)
