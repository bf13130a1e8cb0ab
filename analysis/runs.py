"""Read one ablation study out of MLflow for `python -m analysis report`.

A study is a sweep parent run (tag `ablation.role=sweep`) and its job runs, or every job run of an
experiment (`--all-runs`). Everything goes through `mlflow.MlflowClient` (a `tracking.HeldClient`: a Ctrl-C waits
for the store call it lands in); the result is a flat DataFrame with one row per job run (status, error tag, params
as strings, once-only metrics). Of the FINISHED runs of one configuration, data and seed (tags `ablation.config_hash`,
which includes the seed, and `ablation.data_digest`) only the newest is kept: the others are `Study.duplicates`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Experiment, Run
from mlflow.exceptions import MlflowException
from requests.exceptions import RequestException
from sqlalchemy.exc import SQLAlchemyError

from ablation import store, tracking
from ablation.contract import (
    CONFIG_HASH,
    CURVE_METRICS,
    DATA_DIGEST,
    DATA_RECORD,
    DESIGN_ARTIFACT,
    DESIGN_FILE,
    ERROR,
    JOB,
    KEPT_METRICS,
    ONCE_METRICS,
    PARENT,
    ROLE,
    RUNS_DIR,
    SWEEP,
    TEST_METRICS,
    as_current,
    default_tracking_uri,
    first_line,
    redact,
)
from ablation.outbox import replay


class AnalysisError(RuntimeError):
    """The requested store, experiment or sweep cannot be analysed; the message says which and why."""


class NotLogged(AnalysisError):
    """The report's files were written, but the store would not take them (a read-only store)."""


DUPLICATE_COLUMNS = ["run_id", "run_name", "start_time", "end_time", "config_hash", "data_digest", "kept_run_id"]


@dataclass
class Study:
    client: MlflowClient  # a `tracking.HeldClient` from `load_study`
    tracking_uri: str
    experiment: str
    parent_id: str | None  # None with --all-runs
    runs: pd.DataFrame  # run id, name, status, error, start time; metrics; params (all job runs, any status)
    params: list[str]
    design: dict | None = None  # the sweep's design record (ablation.sweep.record_design), if its sweeper wrote one
    # FINISHED job runs set aside: the same configuration, data and seed as a newer FINISHED run (`kept_run_id`)
    duplicates: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DUPLICATE_COLUMNS))

    @property
    def finished(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "FINISHED"]

    @property
    def failed(self) -> pd.DataFrame:
        return self.runs[self.runs["status"].isin(["FAILED", "KILLED"])]

    def histories(self, run_ids, keys=CURVE_METRICS) -> pd.DataFrame:
        """Long frame run_id, key, step, value (step = 1-based epoch)."""
        rows = [
            (run_id, key, m.step, m.value)
            for run_id in run_ids
            for key in keys
            for m in self.client.get_metric_history(run_id, key)
        ]
        return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])

    def artifact(self, run_id: str, path: str, dst: Path) -> Path | None:
        """Local copy of a run artifact, or None when the run never logged it."""
        try:
            return Path(self.client.download_artifacts(run_id, path, str(dst)))
        except (MlflowException, OSError):
            return None

    def data_record(self, run_id: str, dst: Path) -> dict | None:
        path = self.artifact(run_id, DATA_RECORD, dst)
        return json.loads(path.read_text()) if path else None


def tracking_uri(given: str | None) -> str:
    return given or default_tracking_uri()


def _check_store(uri: str) -> None:
    """`ablation.store.check`: a missing, empty, corrupt or foreign store, or a server that does not answer, named."""
    try:
        store.check(uri)
    except store.StoreError as error:
        raise AnalysisError(str(error)) from None


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str, **kw) -> list[Run]:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, page_token=token, **kw)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _latest_sweep(client: MlflowClient, experiment_ids: list[str]) -> Run | None:
    found = client.search_runs(
        experiment_ids,
        f"tags.`{ROLE}` = '{SWEEP}'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return found[0] if found else None


def _select(
    client: MlflowClient, uri: str, experiment: str | None, sweep: str | None, all_runs: bool
) -> tuple[Experiment, Run | None]:
    """The experiment and the sweep parent run (None with --all-runs) that the arguments name."""
    if sweep:
        try:
            parent = client.get_run(sweep)
        except MlflowException:
            raise AnalysisError(f"sweep run {sweep!r} not found in {uri}") from None
        if parent.data.tags.get(ROLE) != SWEEP:
            raise AnalysisError(f"run {sweep} is not a sweep parent (tag {ROLE}={parent.data.tags.get(ROLE)!r})")
        exp = client.get_experiment(parent.info.experiment_id)
        if experiment and exp.name != experiment:
            raise AnalysisError(f"sweep {sweep} belongs to experiment {exp.name!r}, not {experiment!r}")
        return exp, parent
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise AnalysisError(
                f"experiment {experiment!r} not found in {uri}; available: {', '.join(names) or 'none'}"
            )
        if all_runs:
            return exp, None
        parent = _latest_sweep(client, [exp.experiment_id])
        if parent is None:
            raise AnalysisError(f"experiment {experiment!r} has no sweep parent run; pass --all-runs")
        return exp, parent
    ids = [e.experiment_id for e in client.search_experiments()]
    latest = _latest_sweep(client, ids) if ids else None
    if latest is None:
        raise AnalysisError(f"no sweep parent run (tag {ROLE}={SWEEP}) in any experiment of {uri}; pass --experiment")
    return client.get_experiment(latest.info.experiment_id), None if all_runs else latest


def _runs_frame(runs: list[Run], params: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "run_id": r.info.run_id,
                "run_name": r.info.run_name,
                "status": r.info.status,
                "error": r.data.tags.get(ERROR, ""),
                "start_time": r.info.start_time,
                "end_time": r.info.end_time,
                "config_hash": r.data.tags.get(CONFIG_HASH, ""),
                "data_digest": r.data.tags.get(DATA_DIGEST, ""),
                **{m: r.data.metrics.get(m, float("nan")) for m in TEST_METRICS + ONCE_METRICS + KEPT_METRICS},
                **{p: as_current(r.data.params).get(p) for p in params},
            }
            for r in runs
        ]
    )


def _design(client: MlflowClient, parent_id: str) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(parent_id, f"{DESIGN_ARTIFACT}/{DESIGN_FILE}", tmp)
        except (MlflowException, OSError):
            return None
        return json.loads(Path(path).read_text())


def _sweep_runs(client: MlflowClient, experiment_id: str, parent_id: str, design: dict | None) -> list[Run]:
    """The sweep's job runs: its children, and the earlier runs its resumed jobs skipped to (from the design)."""
    where = f"tags.`{ROLE}` = '{JOB}'"
    runs = _search(client, [experiment_id], f"{where} and tags.`{PARENT}` = '{parent_id}'")
    skipped_to = {
        job["run_id"] for cell in (design or {}).get("cells", []) for job in cell["jobs"] if job.get("run_id")
    }
    skipped_to -= {r.info.run_id for r in runs}
    if skipped_to:
        listed = ", ".join(f"'{run_id}'" for run_id in sorted(skipped_to))
        runs += _search(client, [experiment_id], f"{where} and attributes.run_id IN ({listed})")
    return sorted(runs, key=lambda r: r.info.start_time)


def set_aside_duplicates(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the runs less the duplicates, the duplicates): of the FINISHED runs with the same config hash (the seed is
    part of it) and data digest, all but the newest (by start time, then end time). Runs without both tags (logged
    before them) are never merged; FAILED and KILLED runs are never duplicates."""
    tagged = (runs["status"] == "FINISHED") & (runs["config_hash"] != "") & (runs["data_digest"] != "")
    ranked = runs[tagged].sort_values(["start_time", "end_time"], kind="stable", na_position="first")
    newest = ranked.groupby(["config_hash", "data_digest"], sort=False)["run_id"].transform("last")
    aside = ranked[ranked["run_id"] != newest].assign(kept_run_id=newest[ranked["run_id"] != newest])
    return runs.drop(index=aside.index), aside.reindex(columns=DUPLICATE_COLUMNS).reset_index(drop=True)


# How a store that cannot be read fails its first calls: MLflow's own error (a schema from another MLflow, a server's
# answer), SQLAlchemy's (a file SQLite cannot read), the file system's or the network's.
STORE_FAILURES = (MlflowException, SQLAlchemyError, OSError, RequestException)


def _store_error(uri: str, error: Exception) -> AnalysisError:
    return AnalysisError(f"cannot read the MLflow store {redact(uri)}: {first_line(error)}")


def load_study(
    uri: str,
    experiment: str | None = None,
    sweep: str | None = None,
    all_runs: bool = False,
    runs_dir: Path | None = None,
    send_journals: bool = True,
) -> Study:
    """The study the arguments name (see `_select`); a store that cannot be read raises `AnalysisError` naming it.
    First, with `send_journals`, what jobs of this machine could not send to the store (their journals under
    `runs_dir`, default `runs/` of the working directory: `ablation.outbox.replay`) is sent, so that their runs count
    with their true ending; without it (`--no-log`) nothing is written to the store."""
    _check_store(uri)
    try:
        client = tracking.client(uri)
        if send_journals:
            replay(client, uri, runs_dir or Path.cwd() / RUNS_DIR)
        return _load(client, uri, experiment, sweep, all_runs)
    except STORE_FAILURES as error:  # a broken store that `ablation.store.check` let through: named, no traceback
        raise _store_error(uri, error) from error


def _load(client, uri: str, experiment: str | None, sweep: str | None, all_runs: bool) -> Study:
    exp, parent = _select(client, uri, experiment, sweep, all_runs)
    design = _design(client, parent.info.run_id) if parent is not None else None
    if parent is not None:
        runs = _sweep_runs(client, exp.experiment_id, parent.info.run_id, design)
    else:
        runs = _search(client, [exp.experiment_id], f"tags.`{ROLE}` = '{JOB}'", order_by=["attributes.start_time ASC"])
    what = f"sweep {parent.info.run_id} of experiment {exp.name!r}" if parent else f"experiment {exp.name!r}"
    if not any(r.info.status == "FINISHED" for r in runs):
        raise AnalysisError(f"{what} has no finished job runs ({len(runs)} job runs in total)")
    params = sorted({k for r in runs for k in as_current(r.data.params)})
    parent_id = parent.info.run_id if parent else None
    kept, duplicates = set_aside_duplicates(_runs_frame(runs, params))
    return Study(client, uri, exp.name, parent_id, kept.reset_index(drop=True), params, design, duplicates)
