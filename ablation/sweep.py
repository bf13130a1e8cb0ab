"""What a sweep of `python -m ablation -m ...` shares between its jobs: the parent MLflow run, the jobs file,
and the table printed when it ends (the `SweepSummary` Hydra callback, `conf/hydra/default.yaml`).

Jobs may run in other processes or on other hosts (joblib, Ray, SLURM): they meet in the sweep
directory, where the first job that trains records the parent run's id and every job appends its line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from filelock import FileLock
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ablation import devices, tracking  # noqa: F401  (devices: registers the Ray launcher's GPU resolver here)

PARENT_FILE = "mlflow_parent.json"  # the parent run every job attaches to
DRIVER_FILE = "sweep_driver.json"  # host and pid of the process that launched the sweep
JOBS_FILE = "jobs.jsonl"  # one line per finished, failed, refused, killed or skipped job
NOT_DONE = ("FAILED", "REFUSED", "KILLED")


def driver_tags(sweep_dir: Path) -> dict[str, str]:
    """Host and pid of the sweep's launching process (written by SweepSummary), else of this process.

    A parent run carries them, so that the reaper ends it only once the launcher is gone: a Ray or
    submitit worker that created it exits long before the sweep ends.
    """
    record = sweep_dir / DRIVER_FILE
    return json.loads(record.read_text()) if record.exists() else tracking.process_tags()


def parent_run(client, experiment_id: str, sweep_dir: Path, uri: str) -> str:
    """The sweep's parent run id: created by the first job that trains, read by every other job."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record = sweep_dir / PARENT_FILE
    with FileLock(str(record) + ".lock"):
        if record.exists():
            return json.loads(record.read_text())["run_id"]
        run_id = tracking.create_run(
            client,
            experiment_id,
            f"sweep {sweep_dir.parent.name} {sweep_dir.name}",
            {tracking.ROLE: "sweep", "ablation.sweep_dir": str(sweep_dir), **driver_tags(sweep_dir)},
        )
        record.write_text(json.dumps({"run_id": run_id, "tracking_uri": uri}))
        return run_id


def append_job(sweep_dir: Path, entry: dict) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(sweep_dir / JOBS_FILE) + ".lock"), open(sweep_dir / JOBS_FILE, "a") as f:
        f.write(json.dumps(entry) + "\n")


def read_jobs(sweep_dir: Path) -> pd.DataFrame:
    """One row per job, its last line: a job requeued by its scheduler (SLURM preemption) has one per attempt."""
    jobs_file = sweep_dir / JOBS_FILE
    jobs = [json.loads(line) for line in jobs_file.read_text().splitlines()] if jobs_file.exists() else []
    if not jobs:
        return pd.DataFrame()
    return pd.DataFrame(jobs).drop_duplicates("job", keep="last").sort_values("job")


class SweepSummary(Callback):
    """At the end of a sweep: a table of its jobs, the parent run ended, exit status 1 if any job failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / DRIVER_FILE).write_text(json.dumps(tracking.process_tags()))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = read_jobs(sweep_dir)
        if table.empty:
            return
        columns = [c for c in ("job", "status", "test_auc", "run_id", "overrides") if c in table]
        print(f"\nSweep {sweep_dir}:\n" + table[columns].to_string(index=False, na_rep="-"))
        failed = table[table.status.isin(NOT_DONE)]
        parent_file = sweep_dir / PARENT_FILE
        if parent_file.exists():
            parent = json.loads(parent_file.read_text())
            tracking.end_run(
                tracking.client(parent["tracking_uri"]),
                parent["run_id"],
                "FAILED" if len(failed) else "FINISHED",
                f"{len(failed)} of {len(table)} jobs failed" if len(failed) else None,
            )
        if len(failed):
            for _, job in failed.iterrows():
                print(f"job {job.job} {job.status}: {job.overrides}: {job.get('error', '')}")
            raise SystemExit(1)
