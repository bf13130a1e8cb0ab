"""MLflow bookkeeping for `python -m ablation`: experiments, runs, params, metrics, artifacts, run status.

Only MLflow: no Keras, no TensorFlow, no rendering (the run's files are written by `ablation.artifacts`
and uploaded here once). Runs are written through `MlflowClient` with explicit run ids, so jobs in other
processes (joblib, Ray, SLURM) attach to the same sweep parent (`ablation.sweep`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Param, Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from omegaconf import DictConfig

from ablation import interrupts
from ablation.config import flatten, lower_is_better
from ablation.contract import CONFIG_HASH, DATA_DIGEST, ERROR, HEARTBEAT, HOST, MODEL_ARTIFACT, PID, first_line, redact

log = logging.getLogger(__name__)

# A tracking server that went away fails the job after about 30 s of retries (after 0, 2, 4, 8, 16 s; 30 s to
# answer each), which rides out a server restart, rather than MLflow's minutes (7 retries, backoff factor 2,
# 120 s to answer). The environment still wins. See docs/reliability.md.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class HeldClient:
    """An `MlflowClient` whose calls a signal never interrupts midway: its interrupt waits for the call to return
    (`ablation.interrupts`), so it cannot leave the store locked or a write half done."""

    def __init__(self, inner: mlflow.MlflowClient):
        self._inner = inner

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def held_call(*args, **kwargs):
            with interrupts.held():
                return attr(*args, **kwargs)

        return held_call


def client(uri: str) -> HeldClient:
    if uri.startswith(("http://", "https://")):
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
    return HeldClient(mlflow.MlflowClient(tracking_uri=uri))


# A param (or an override) whose value is an absolute path names a place on the machine that ran the job (data.root,
# paths.*, a SQLite or file URI). A shared server shows every run's params to everyone, so such a value is recorded
# without the user's home layout (`portable`): nothing reads them back (they locate, they do not define a
# configuration: `contract.NOT_CONFIGURATION`), and the images are named by the data's digest tag.
PATH_SCHEMES = ("sqlite:///", "file://", "")  # what may come before an absolute path in such a value


def portable(value: str, root: str | Path) -> str:
    """A path (or a `sqlite:///` or `file://` URI of one) relative to the project folder `root` when inside it, else
    `.../` and its last name; any other value as it is."""
    for scheme in PATH_SCHEMES:
        rest = value[len(scheme) :]
        if value.startswith(scheme) and rest.startswith("/") and not rest.startswith("//"):
            path, base = Path(rest), Path(root).resolve()
            inside = path == base or base in path.parents
            return scheme + (str(path.relative_to(base)) if inside else f".../{path.name}")
    return value


def portable_override(override: str, root: str | Path) -> str:
    """A command-line override (`data.root=/home/me/xray`) with its value `portable`: the run's name and its overrides
    tag are the command line."""
    key, sep, value = override.partition("=")
    return f"{key}={portable(value, root)}" if sep else override


def run_params(cfg: DictConfig) -> dict[str, str]:
    """Every leaf of the resolved config under its dotted name (passwords redacted, the machine's paths `portable`),
    plus the group choices."""
    params = {key: portable(redact(value), cfg.paths.root) for key, value in flatten(cfg).items()}
    params.update(
        model=cfg.model.name,
        augmentation=cfg.augmentation.name,
        class_weighting=cfg.class_weighting.name,
    )
    return params


def git_commit(root: str) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


# MLflow 3's UI opens an experiment of this kind on its runs table ("Model training"), not on the GenAI overview
# (traces, latency, tokens). The values its UI knows: `ExperimentKind` in mlflow/server/js (custom_model_development,
# genai_development, finetuning, ...).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(mlflow_client: mlflow.MlflowClient, name: str, artifact_location: str | None) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_KIND)
    except MlflowException:  # another job created it first
        return mlflow_client.get_experiment_by_name(name).experiment_id


UI = "http://127.0.0.1:5000"  # where the README's `mlflow ui` serves


def ui_link(uri: str, experiment_id: str) -> str:
    """The MLflow UI's runs table of an experiment: on the tracking server itself for an http(s) store (credentials
    left out), else where `mlflow ui --backend-store-uri URI` serves by default."""
    base = UI
    if uri.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(uri)
        base = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path.rstrip('/')}"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale_because(run: Run, timeout_s: float, now: float) -> str | None:
    tags = run.data.tags
    beat = float(tags.get(HEARTBEAT) or run.info.start_time / 1000)  # a run of older code: its start
    if now - beat > timeout_s:
        return (
            f"no heartbeat for {(now - beat) / 60:.0f} min (tracking.heartbeat_timeout_min={timeout_s / 60:g}) "
            f"from process {tags.get(PID)} on {tags.get(HOST)}"
        )
    if tags.get(HOST) == socket.gethostname() and not _pid_alive(int(tags.get(PID, "0") or 0)):
        return f"process {tags.get(PID)} died while the run was RUNNING"
    return None


def _reap(mlflow_client: mlflow.MlflowClient, run: Run, timeout_s: float, now: float) -> bool:
    """End `run` KILLED, saying why, if it is stale (`_stale_because`); whether it was."""
    reason = _stale_because(run, timeout_s, now)
    if reason is None:
        return False
    mlflow_client.set_tag(run.info.run_id, ERROR, reason)
    mlflow_client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
    log.warning("marked stale run %s KILLED: %s", run.info.run_id, reason)
    return True


def reap_stale_runs(mlflow_client: mlflow.MlflowClient, experiment_id: str, timeout_s: float) -> list[str]:
    """End as KILLED every RUNNING run whose heartbeat is older than `timeout_s` (from any host: a restarted
    container, another SLURM node, a reused pid), or of this host whose process is gone (kill -9, OOM killer)."""
    now = time.time()
    running = mlflow_client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
    return [run.info.run_id for run in running if _reap(mlflow_client, run, timeout_s, now)]


def claimed_before(
    client: mlflow.MlflowClient, experiment_id: str, identity: dict[str, str], run_id: str | None, timeout_s: float
) -> Run | None:
    """The first live RUNNING run with these identity tags (config hash and data digest) that claimed its
    configuration before run `run_id` did (any such run, for None): ordered by start time, then run id, which every
    job reads the same. A stale one (`_stale_because`) is reaped, not counted."""
    where = " and ".join(f"tags.`{key}` = '{value}'" for key, value in identity.items())
    runs = client.search_runs([experiment_id], f"{where} and attributes.status = 'RUNNING'", max_results=1000)
    now, order = time.time(), lambda run: (run.info.start_time, run.info.run_id)
    mine = next((run for run in runs if run.info.run_id == run_id), None)
    earlier = [run for run in runs if run.info.run_id != run_id and (mine is None or order(run) < order(mine))]
    return min((run for run in earlier if not _reap(client, run, timeout_s, now)), key=order, default=None)


def ended_or_reaped(mlflow_client: mlflow.MlflowClient, run_id: str, timeout_s: float) -> bool:
    """Whether run `run_id` has ended, or was stale and is now reaped."""
    run = mlflow_client.get_run(run_id)
    return run.info.status != "RUNNING" or _reap(mlflow_client, run, timeout_s, time.time())


@contextlib.contextmanager
def heartbeat(mlflow_client: mlflow.MlflowClient, run_ids: list[str], every_s: float) -> Iterator[None]:
    """Refresh the runs' heartbeat tag every `every_s` from a background thread while the block runs, so that a
    reaper anywhere can tell a live run from one whose process is gone, however long an epoch takes."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            for run_id in run_ids:
                with contextlib.suppress(Exception):  # a store that went away: the job's own calls will say so
                    mlflow_client.set_tag(run_id, HEARTBEAT, str(int(time.time())))

    thread = threading.Thread(target=beat, name="mlflow-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


@contextlib.contextmanager
def system_metrics(uri: str, run_id: str, every_s: float) -> Iterator[None]:
    """MLflow's system metrics (`system/cpu_utilization_percentage`, memory, disk, network; GPU with nvidia-ml-py)
    sampled every `every_s` while the block runs; none for 0. A sample is logged at the end of each interval."""
    if every_s <= 0:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=every_s, tracking_uri=uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def finished_run(mlflow_client: mlflow.MlflowClient, experiment_id: str, config: str, data: str) -> Run | None:
    """A FINISHED run of this training configuration on these images, if any (the newest)."""
    where = f"tags.`{CONFIG_HASH}` = '{config}' and tags.`{DATA_DIGEST}` = '{data}' and attributes.status = 'FINISHED'"
    runs = mlflow_client.search_runs([experiment_id], where, max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def process_tags() -> dict[str, str]:
    return {HOST: socket.gethostname(), PID: str(os.getpid())}


def create_run(mlflow_client: mlflow.MlflowClient, experiment_id: str, name: str, tags: dict[str, str]) -> str:
    # A run name over 250 characters fails on PostgreSQL (VARCHAR(250)).
    tags = {**tags, HEARTBEAT: str(int(time.time()))}
    return mlflow_client.create_run(experiment_id, run_name=name[:250], tags=tags).info.run_id


SPLIT_SOURCES = {"train": "train", "val": "train", "test": "test"}  # validation is carved from train/, by patient
# A store's unique-key error, as PostgreSQL, SQLite and MySQL word it: two writers inserted the same row.
UNIQUE_KEY_ERRORS = ("UniqueViolation", "UNIQUE constraint failed", "Duplicate entry", "duplicate key value")
INSERT_RACE_ATTEMPTS = 4


def log_datasets(
    mlflow_client: mlflow.MlflowClient, run_id: str, root: str, splits: dict[str, tuple[str, dict]]
) -> None:
    """The run's train, validation and test splits as MLflow dataset inputs (the UI's "Datasets used"): named
    `<folder>-<split>`, with the digest of the split's own files (`ablation.data.files_digest`, as resume's
    `data_digest` of the whole folder: a split of another seed is another dataset), the folder they come from
    (`<folder>/train`, relative to the data's parent folder),
    and their images and patients per class as the profile. `splits`: name: (digest, counts per class)."""
    root_path = Path(root).resolve()
    inputs = []
    for split, (digest, classes) in splits.items():
        profile = {"images": sum(c["images"] for c in classes.values()), **{k.lower(): v for k, v in classes.items()}}
        dataset = Dataset(
            name=f"{root_path.name}-{split}",
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": f"{root_path.name}/{SPLIT_SOURCES[split]}"}),  # `portable`: no home layout
            profile=json.dumps(profile),
        )
        inputs.append(DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, split)]))
    for attempt in range(1, INSERT_RACE_ATTEMPTS + 1):
        try:
            mlflow_client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as error:
            # Parallel jobs log the same datasets: the store looks a dataset up, then inserts it, so two jobs can both
            # insert it and one fails on the unique key (PostgreSQL's UniqueViolation). Its transaction rolled back,
            # and the retry finds the other job's row and links to it.
            if attempt == INSERT_RACE_ATTEMPTS or not any(mark in str(error) for mark in UNIQUE_KEY_ERRORS):
                raise
            log.info("lost a race to insert this run's datasets (attempt %d): retrying", attempt)
            time.sleep(0.2 * attempt)


def log_params(mlflow_client: mlflow.MlflowClient, run_id: str, params: dict[str, str]) -> None:
    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        mlflow_client.log_batch(run_id, params=items[start : start + 100])


CHAMPION = "champion"  # the alias a sweep gives the version it registers


def register_best(mlflow_client: mlflow.MlflowClient, name: str, runs: dict[str, float], metric: str) -> str:
    """Register the run of `runs` (run id: its `metric`, a validation figure) with the best value as a new
    version of model `name`, aliased `champion`; its version number. Higher is better, lower for a loss."""
    best = (min if lower_is_better(metric) else max)(runs, key=runs.get)
    try:
        mlflow_client.create_registered_model(name, description="pneumonia probability from a chest X-ray")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{mlflow_client.get_run(best).info.artifact_uri}/{MODEL_ARTIFACT}"
    version = mlflow_client.create_model_version(name, source, run_id=best, tags={metric: str(runs[best])})
    mlflow_client.set_registered_model_alias(name, CHAMPION, version.version)
    return version.version


def end_run(mlflow_client: mlflow.MlflowClient, run_id: str, status: str, error: str | None = None) -> bool | str:
    """Terminate a run: True, or why it could not. Never raises, so the error that ended it is the one the user
    sees."""
    with contextlib.suppress(Exception):
        if error:
            mlflow_client.set_tag(run_id, ERROR, error[:5000])
    try:
        mlflow_client.set_terminated(run_id, status)
    except Exception as failure:
        return first_line(failure)
    return True
