"""Read one ablation study out of MLflow for `python -m analysis report`.

A study is a sweep parent run (tag `ablation.role=sweep`) and its job runs, or every job run of an
experiment (`--all-runs`). Everything goes through `mlflow.MlflowClient`; the result is a flat
DataFrame with one row per job run (status, error tag, params as strings, once-only metrics).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Experiment, Run
from mlflow.exceptions import MlflowException

from ablation.contract import (
    CURVE_METRICS,
    DATA_RECORD,
    DESIGN_ARTIFACT,
    DESIGN_FILE,
    ERROR,
    JOB,
    KEPT_METRICS,
    ONCE_METRICS,
    PARENT,
    ROLE,
    SWEEP,
    TEST_METRICS,
    as_current,
    default_tracking_uri,
    missing_sqlite_store,
)


class AnalysisError(RuntimeError):
    """The requested store, experiment or sweep cannot be analysed; the message says which and why."""


@dataclass
class Study:
    client: MlflowClient
    tracking_uri: str
    experiment: str
    parent_id: str | None  # None with --all-runs
    runs: pd.DataFrame  # run id, name, status, error, start time; metrics; params (all job runs, any status)
    params: list[str]
    design: dict | None = None  # the sweep's design record (ablation.sweep.record_design), if its sweeper wrote one

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
    if (path := missing_sqlite_store(uri)) is not None:
        raise AnalysisError(f"no MLflow store at {path} (tracking URI {uri}); run a sweep first or pass --tracking-uri")


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


def load_study(uri: str, experiment: str | None = None, sweep: str | None = None, all_runs: bool = False) -> Study:
    _check_store(uri)
    client = MlflowClient(tracking_uri=uri)
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
    return Study(client, uri, exp.name, parent_id, _runs_frame(runs, params), params, design)
