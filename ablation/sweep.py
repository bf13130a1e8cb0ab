"""What a sweep of `python -m ablation -m ...` shares between its jobs: the parent MLflow run, the jobs file,
the design record, and what happens when it ends (the `SweepSummary` Hydra callback, `conf/hydra/default.yaml`):
the table of its jobs, the registered model, the parent run ended, and the exit status. The report of its runs is
the analysis' own callback (`analysis.callback.SweepReport`), listed beside it.

Jobs may run in other processes or on other hosts (joblib, Ray, SLURM): they meet in the sweep
directory, where the first job that trains records the parent run's id and every job appends its line.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
from filelock import FileLock
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ablation import contract, devices, store, tracking  # noqa: F401  (devices: registers the Ray launcher's GPU resolver)
from ablation.contract import DESIGN_ARTIFACT, DESIGN_FILE, DRIVER_FILE, JOBS_FILE, PARENT_FILE, redact

log = logging.getLogger(__name__)

NOT_DONE = ("FAILED", "REFUSED", "KILLED")


def driver_tags(sweep_dir: Path) -> dict[str, str]:
    """Host and pid of the sweep's launching process (written by SweepSummary), else of this process.

    A parent run carries them, so that the reaper ends it only once the launcher is gone: a Ray or
    submitit worker that created it exits long before the sweep ends.
    """
    record = sweep_dir / DRIVER_FILE
    return json.loads(record.read_text()) if record.exists() else tracking.process_tags()


def parent_run(client, experiment_id: str, sweep_dir: Path, uri: str, root: str) -> str:
    """The sweep's parent run id: created by the first job that trains, read by every other job. Its tag names the
    sweep folder relative to the project folder `root` (`tracking.portable`)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record = sweep_dir / PARENT_FILE
    with FileLock(str(record) + ".lock"):
        if record.exists():
            return json.loads(record.read_text())["run_id"]
        run_id = tracking.create_run(
            client,
            experiment_id,
            f"sweep {sweep_dir.parent.name} {sweep_dir.name}",
            {
                contract.ROLE: contract.SWEEP,
                contract.SWEEP_DIR: tracking.portable(str(sweep_dir), root),
                **driver_tags(sweep_dir),
            },
        )
        record.write_text(json.dumps({"run_id": run_id, "tracking_uri": uri}))
        return run_id


def parent_of(sweep_dir: Path) -> dict | None:
    """The parent run's id and tracking URI, once a job has created it."""
    record = sweep_dir / PARENT_FILE
    return json.loads(record.read_text()) if record.exists() else None


def record_design(sweep_dir: Path, record: dict) -> None:
    """Write the design record into the sweep folder and, once there is one, onto the parent run."""
    path = sweep_dir / DESIGN_FILE
    path.write_text(json.dumps(record, indent=1, default=str))
    if parent := parent_of(sweep_dir):
        try:
            tracking.client(parent["tracking_uri"]).log_artifact(parent["run_id"], str(path), DESIGN_ARTIFACT)
        except Exception as error:  # the sweep goes on; the record stays in the sweep folder
            log.warning(
                "design record not logged to run %s: %s (kept in %s)", parent["run_id"], redact(str(error)), path
            )


def progress(sweep_dir: Path, num: int, status: str | None = None, seconds: float | None = None) -> str:
    """`[k/N]` for job `num` (N: the jobs the study sweeper has planned so far); for a job that ended, its status,
    its time and the sweep's estimated time left (the mean time per job done so far, times the jobs left)."""
    try:
        design = json.loads((sweep_dir / DESIGN_FILE).read_text())
    except (OSError, ValueError):  # another sweeper (Optuna) writes none; progress is never worth a failure
        design = {}
    planned = [job for cell in design.get("cells", []) for job in cell["jobs"]]  # one per seed
    jobs = len({job["job"] for job in planned}) or None
    head = f"[{num + 1}/{jobs or '?'}]"
    if status is None or seconds is None:
        return head
    total, done = len(planned), len(read_jobs(sweep_dir))
    left = ""
    if total and design.get("started") and done:
        rest = (time.time() - design["started"]) / done * max(total - done, 0)
        left = f"; about {_duration(rest)} left for the sweep ({done} of {total} runs done)" if total > done else ""
    return f"{head} {status} in {_duration(seconds)}{left}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def append_job(sweep_dir: Path, entry: dict) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(sweep_dir / JOBS_FILE) + ".lock"), open(sweep_dir / JOBS_FILE, "a") as f:
        f.write(json.dumps(entry) + "\n")


def read_jobs(sweep_dir: Path) -> pd.DataFrame:
    """One row per job and seed (a pack's job has one per seed), its last line: a job requeued by its scheduler (SLURM
    preemption) has one per attempt."""
    jobs_file = sweep_dir / JOBS_FILE
    jobs = [json.loads(line) for line in jobs_file.read_text().splitlines()] if jobs_file.exists() else []
    if not jobs:
        return pd.DataFrame()
    table = pd.DataFrame(jobs)
    keys = ["job", "seed"] if "seed" in table else ["job"]  # lines written before they had a seed: one per job
    return table.drop_duplicates(keys, keep="last").sort_values(keys)


def dry_run(config: DictConfig) -> bool:
    return bool(OmegaConf.select(config, "hydra.sweeper.dry_run", default=False))


def register(config: DictConfig, parent: dict, table: pd.DataFrame) -> None:
    """Register the sweep's best run on the kept epoch's validation metric (`trainer.monitor`) as a new version
    of model `tracking.register`, alias champion; a failure is printed, never raised (the runs are kept)."""
    metric, name = f"kept_{config.trainer.monitor}", config.tracking.register
    done = table[table.status.isin(["FINISHED", "SKIPPED"])] if metric in table else table.iloc[:0]
    runs = {row.run_id: float(row[metric]) for _, row in done.iterrows() if pd.notna(row[metric])}
    if not runs:
        print(f"\nNothing registered as {name!r}: no run of this sweep finished with {metric}")
        return
    try:
        version = tracking.register_best(tracking.client(parent["tracking_uri"]), name, runs, metric)
    except Exception as error:
        log.exception("not registered")
        print(f"\nNot registered as {name!r}: {redact(f'{type(error).__name__}: {error}')}")
        return
    print(f"\nRegistered the best run by {metric} as {name!r} version {version}: models:/{name}@{tracking.CHAMPION}")


def ui_hint(parent: dict) -> str:
    """Where to see the sweep's runs: the MLflow UI's runs table of its experiment (and, for a local store, the
    command that serves it). Never raises: a store that went away only loses the hint."""
    uri = parent["tracking_uri"]
    try:
        experiment_id = tracking.client(uri).get_run(parent["run_id"]).info.experiment_id
    except Exception as error:
        return f"\nMLflow UI: the experiment's id is unknown ({redact(str(error))[:200]})"
    link = tracking.ui_link(uri, experiment_id)
    if uri.startswith(("http://", "https://")):
        return f"\nMLflow UI, the sweep's runs: {link}"
    return f"\nMLflow UI: mlflow ui --backend-store-uri {redact(uri)}, then open the sweep's runs: {link}"


def check_before_start(config: DictConfig) -> None:
    """`paths.runs` and the store checked once, before any job starts or Hydra writes its first folder
    (`ablation.store`): a store or a folder that cannot be used ends the command in one line, rather than each job in
    turn with a traceback. Nothing is checked when a sweep varies where they are (each job checks its own)."""
    where = ("tracking", "tracking.uri", "paths", "paths.runs", "paths.root")
    overrides = OmegaConf.select(config, "hydra.overrides.task", default=[]) or []
    if any(o.split("=", 1)[0].lstrip("+~") in where and ("," in o or "(" in o) for o in overrides):
        return
    try:
        store.check_runs_folder(Path(config.paths.runs))
        store.check(str(config.tracking.uri), create=True)
    except store.StoreError as error:
        log.error("not started: %s", error)
        raise SystemExit(2) from None


class SweepSummary(Callback):
    """At the end of a sweep: a table of its jobs, the best run registered, the parent run ended, exit 1 if any job
    failed. Hydra calls the end of a sweep's callbacks in reverse order: listed first, this one runs last, after the
    report, so that its exit status is the sweep's."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        check_before_start(config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if dry_run(config):
            return  # a dry run writes nothing
        check_before_start(config)
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / DRIVER_FILE).write_text(json.dumps(tracking.process_tags()))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = read_jobs(sweep_dir)
        if table.empty or dry_run(config):
            return
        columns = [c for c in ("job", "status", "test_auc", "run_id", "overrides") if c in table]
        print(f"\nSweep {sweep_dir}:\n" + table[columns].to_string(index=False, na_rep="-"))
        failed = table[table.status.isin(NOT_DONE)]
        parent = parent_of(sweep_dir)
        if parent:
            contract.hide_credentials(parent["tracking_uri"])  # ending the parent run prints MLflow's URL line
            print(ui_hint(parent))
        if parent and config.tracking.register:
            register(config, parent, table)
        if parent:
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
