"""One job of `python -m ablation`: pin a GPU, validate, skip if done, train, record in MLflow, end the run.

A job's run ends FINISHED, FAILED (the message in the `error` tag) or KILLED (Ctrl-C, SIGTERM);
never RUNNING through anything Python can see (`run_lifecycle`). In a sweep, a failed job does not
stop the others. Nothing here imports Keras or TensorFlow: only the training step does, after the
job has been pinned to its GPU.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ablation import contract, devices, interrupts, sweep, tracking
from ablation.contract import redact
from ablation.resume import Identity, already_finished
from ablation.validate import ConfigError, validate

log = logging.getLogger(__name__)


class RunNotEndedError(RuntimeError):
    """Training finished but the tracking store did not record it: the job must not count as done."""


@dataclass
class Outcome:
    """How a run ended, and the fields its line in the sweep's jobs file gets."""

    status: str = "RUNNING"
    error: str | None = None
    fields: dict = field(default_factory=dict)


def _interrupt_behind(error: BaseException) -> BaseException | None:
    """The Ctrl-C, SIGTERM or scheduler exit that `error` was raised while handling, if any.

    The signal's exception lands wherever Python is; inside TensorFlow's device scope, the scope's exit then
    raises `RuntimeError: Exiting device scope without proper scope nesting` in its place.
    """
    context = error.__context__
    while context is not None:
        if isinstance(context, KeyboardInterrupt | SystemExit):
            return context
        context = context.__context__
    return None


def _killed_message(interrupt: BaseException) -> str:
    if isinstance(interrupt, SystemExit):
        # submitit's handler of SLURM's preemption or time-limit signal: it requeued the job, and the
        # sweep (and its parent run) goes on.
        return f"interrupted (exit {interrupt.code}: preempted or timed out, requeued by the scheduler)"
    return f"interrupted ({str(interrupt) or 'Ctrl-C'})"  # Ctrl-C's KeyboardInterrupt has no text


@contextmanager
def run_lifecycle(
    client,
    run_id: str,
    parent: str | None = None,
    raise_failures: bool = True,
    on_end: Callable[[Outcome], None] = lambda outcome: None,
    name: str = "",
    files: Path | None = None,
) -> Iterator[Outcome]:
    """End the run FINISHED, FAILED (error tag, exception logged) or KILLED (Ctrl-C, SIGTERM, a scheduler's exit,
    or such an interrupt that a library's clean-up turned into another error), calling `on_end` first.

    An interrupt always propagates (Ctrl-C also ends the sweep's parent run); a failure propagates only with
    `raise_failures` (a sweep's job returns instead, so the other jobs go on). `name` is what the log calls the job.
    A run the store would not end FINISHED (it went away) does not count as finished: the job fails, naming
    `files`, the folder that keeps what the run wrote.
    """
    outcome = Outcome()

    def killed(interrupt: BaseException) -> None:
        outcome.status, outcome.error = "KILLED", _killed_message(interrupt)
        tracking.end_run(client, run_id, "KILLED", outcome.error)
        if parent and isinstance(interrupt, KeyboardInterrupt):
            tracking.end_run(client, parent, "KILLED", outcome.error)
        on_end(outcome)

    try:
        yield outcome
    except (KeyboardInterrupt, SystemExit) as interrupt:
        interrupts.take()
        killed(interrupt)
        raise
    except Exception as error:
        held = interrupts.take()  # a signal came during a store call that then failed
        interrupt = _interrupt_behind(error) or held
        if interrupt is not None:
            killed(interrupt)
            raise interrupt from error
        outcome.status, outcome.error = "FAILED", redact(f"{type(error).__name__}: {error}")
        log.exception("job failed: %s", name or run_id)
        tracking.end_run(client, run_id, "FAILED", outcome.error)
        on_end(outcome)
        if raise_failures:
            raise
    else:
        ended = tracking.end_run(client, run_id, "FINISHED")
        if ended is not True:
            kept = f"; its files stay in {files}" if files else ""
            outcome.status = "FAILED"
            outcome.error = redact(f"trained, but the store would not end run {run_id} FINISHED ({ended}){kept}")
            log.error("job failed: %s: %s", name or run_id, outcome.error)
            on_end(outcome)
            if raise_failures:
                raise RunNotEndedError(outcome.error)
            return
        outcome.status = "FINISHED"
        on_end(outcome)


@dataclass
class Job:
    """Where a job stands in its sweep, from Hydra's runtime config."""

    num: int
    in_sweep: bool
    sweep_dir: Path
    out_dir: Path
    task: list[str]  # its overrides, passwords redacted (`tracking.uri=http://u:PASS@...`)

    @classmethod
    def current(cls) -> Job:
        hydra = HydraConfig.get()
        in_sweep = hydra.mode == RunMode.MULTIRUN
        return cls(
            num=hydra.job.num if in_sweep else 0,
            in_sweep=in_sweep,
            sweep_dir=Path(hydra.sweep.dir),
            out_dir=Path(hydra.runtime.output_dir),
            task=[redact(override) for override in hydra.overrides.task],
        )

    @property
    def overrides(self) -> str:
        return " ".join(self.task)


def open_store(cfg: DictConfig):
    """The MLflow client and experiment id, with this experiment's dead runs reaped.

    The lock serialises the first touch of a fresh store (schema migration) across parallel jobs:
    MlflowClient opens its store, and so migrates a fresh SQLite file, as it is built.
    """
    Path(cfg.paths.runs).mkdir(parents=True, exist_ok=True)
    with FileLock(str(Path(cfg.paths.runs) / "mlflow-init.lock")):
        client = tracking.client(cfg.tracking.uri)
        experiment_id = tracking.ensure_experiment(client, cfg.tracking.experiment, cfg.tracking.artifact_location)
        tracking.reap_stale_runs(client, experiment_id, cfg.tracking.heartbeat_timeout_min * 60)
    return client, experiment_id


def _train_and_log(cfg: DictConfig, client, run_id: str, out_dir: Path) -> dict:
    """Train, write the run's files, upload them; the fields of the job's line."""
    from ablation import artifacts  # Keras and TensorFlow load here, after the GPU is pinned
    from ablation.data import files_digest
    from ablation.train import EpochLogger, train

    tracking.log_params(client, run_id, tracking.run_params(cfg))
    result = train(cfg, callbacks=[EpochLogger(lambda epoch, m: tracking.log_epoch(client, run_id, epoch, m))])
    tracking.log_outputs(client, run_id, artifacts.write(cfg, result, out_dir / "artifacts"), out_dir / "artifacts")
    counts = result.data.record(cfg.class_weighting.name)["splits"]
    digests = {name: files_digest(getattr(result.data, name).files, cfg.data.root) for name in counts}
    tracking.log_datasets(client, run_id, cfg.data.root, {name: (digests[name], counts[name]) for name in counts})
    monitor = f"kept_{cfg.trainer.monitor}"
    auc, accuracy = result.test_metrics["auc"], result.test_metrics["accuracy"]
    log.info("finished run %s: test AUC %.4f, accuracy %.4f", run_id, auc, accuracy)
    return {"test_auc": round(float(auc), 4), monitor: result.kept_metrics[str(cfg.trainer.monitor)]}


def run_job(cfg: DictConfig) -> dict:
    """Run one configuration; returns the job's entry in the sweep table."""
    job = Job.current()
    entry: dict = {"job": job.num, "overrides": job.overrides}

    started = time.time()
    if job.in_sweep:
        log.info("%s %s", sweep.progress(job.sweep_dir, job.num), job.overrides or "defaults")

    def finish(status: str, error: str | None = None, **fields) -> dict:
        entry.update(status=status, **fields, **({"error": error} if error else {}))
        if job.in_sweep:
            sweep.append_job(job.sweep_dir, entry)
            log.info("%s", sweep.progress(job.sweep_dir, job.num, status, time.time() - started))
        return entry

    visible = devices.pin_gpu(job.num)  # first: a framework reads CUDA_VISIBLE_DEVICES once, when it starts
    interrupts.install()  # scancel, kill and a closed terminal end the run KILLED, like Ctrl-C
    try:
        validate(cfg)
        devices.select_backend(str(cfg.trainer.backend), cfg.trainer.deterministic)
    except (ConfigError, devices.BackendError) as error:
        log.error("refused %s: %s", job.overrides or "the run", error)
        finish("REFUSED", error=str(error))
        if job.in_sweep:
            return entry
        raise

    client, experiment_id = open_store(cfg)
    identity, commit = Identity.of(cfg), tracking.git_commit(cfg.paths.root)
    monitor = f"kept_{cfg.trainer.monitor}"
    if done := already_finished(client, experiment_id, cfg, identity, commit):
        done_id = done.info.run_id
        log.info(
            "skipped (already FINISHED as run %s): %s; tracking.skip_finished=false re-runs it", done_id, job.overrides
        )
        return finish("SKIPPED", run_id=done_id, **{monitor: done.data.metrics.get(monitor)})

    tags = {
        contract.ROLE: contract.JOB,
        **identity.tags,
        contract.OVERRIDES: job.overrides,
        contract.GIT_COMMIT: commit,
        **tracking.process_tags(),
        **({contract.DEVICES: visible} if visible is not None else {}),
    }
    parent = None
    if job.in_sweep:
        parent = sweep.parent_run(client, experiment_id, job.sweep_dir, cfg.tracking.uri)
        tags[contract.PARENT] = parent
    run_id = tracking.create_run(client, experiment_id, ", ".join(job.task) or cfg.model.name, tags)
    entry["run_id"] = run_id
    log.info("MLflow run %s (%s) in experiment %r", run_id, job.overrides or "defaults", cfg.tracking.experiment)

    end = lambda outcome: finish(outcome.status, outcome.error, **outcome.fields)  # noqa: E731
    beat_every = cfg.tracking.heartbeat_timeout_min * 60 / 10
    with (
        tracking.heartbeat(client, [run_id, *([parent] if parent else [])], beat_every),
        run_lifecycle(client, run_id, parent, not job.in_sweep, end, job.overrides, job.out_dir) as outcome,
        tracking.system_metrics(cfg.tracking.uri, run_id, cfg.tracking.system_metrics_s),
    ):
        outcome.fields = _train_and_log(cfg, client, run_id, job.out_dir)
    return entry


def objective(entry: dict, cfg: DictConfig) -> float:
    """The kept epoch's validation metric (`trainer.monitor`) for an optimising sweeper; NaN if it did not train."""
    value = entry.get(f"kept_{cfg.trainer.monitor}")
    return math.nan if value is None else float(value)
