"""One job of `python -m ablation`: validate, skip if done, train, record in MLflow, end the run.

A job's run ends FINISHED, FAILED (the message in the `error` tag) or KILLED (Ctrl-C, SIGTERM);
never RUNNING through anything Python can see. In a sweep, a failed job does not stop the others.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ablation import tracking
from ablation.config import ConfigError, validate

log = logging.getLogger(__name__)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


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


def pin_gpu(job_num: int) -> None:
    """Give a parallel job one GPU, round-robin by job number (k jobs per card when n_jobs = k x cards).

    Only before TensorFlow starts in this process, and never over a scheduler's own choice
    (SLURM and Ray set CUDA_VISIBLE_DEVICES themselves).
    """
    if "tensorflow" in sys.modules or "CUDA_VISIBLE_DEVICES" in os.environ or not shutil.which("nvidia-smi"):
        return
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    gpus = [line for line in listing.splitlines() if line.startswith("GPU ")]
    if len(gpus) > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(job_num % len(gpus))
        log.info("job %d pinned to GPU %s", job_num, os.environ["CUDA_VISIBLE_DEVICES"])


def run_job(cfg: DictConfig) -> dict:
    """Run one configuration; returns the job's entry in the sweep table."""
    hydra = HydraConfig.get()
    in_sweep = hydra.mode == RunMode.MULTIRUN
    sweep_dir = Path(hydra.sweep.dir)
    out_dir = Path(hydra.runtime.output_dir)
    task = [tracking.redact(override) for override in hydra.overrides.task]  # `tracking.uri=http://u:PASS@...`
    overrides = " ".join(task)
    entry: dict = {"job": hydra.job.num if in_sweep else 0, "overrides": overrides}

    def finish(status: str, **fields) -> dict:
        entry.update(status=status, **fields)
        if in_sweep:
            tracking.append_job(sweep_dir, entry)
        return entry

    pin_gpu(entry["job"])  # before validate: it imports Keras, which starts TensorFlow
    try:
        validate(cfg)
    except ConfigError as error:
        log.error("refused %s: %s", overrides or "the run", error)
        finish("REFUSED", error=str(error))
        if in_sweep:
            return entry
        raise

    # Serialises the first touch of a fresh store (schema migration) across parallel jobs: MlflowClient
    # opens its store, and so migrates a fresh SQLite file, as it is built.
    Path(cfg.paths.runs).mkdir(parents=True, exist_ok=True)
    with tracking.FileLock(str(Path(cfg.paths.runs) / "mlflow-init.lock")):
        client = tracking.client(cfg.tracking.uri)
        experiment_id = tracking.ensure_experiment(client, cfg.tracking.experiment, cfg.tracking.artifact_location)
        tracking.reap_stale_runs(client, experiment_id)
    digest = tracking.config_hash(cfg)
    if cfg.tracking.skip_finished:
        done = tracking.finished_run(client, experiment_id, digest)
        if done:
            log.info(
                "skipped (already FINISHED as run %s): %s; tracking.skip_finished=false re-runs it", done, overrides
            )
            return finish("SKIPPED", run_id=done)

    tags = {
        tracking.ROLE: "job",
        tracking.CONFIG_HASH: digest,
        "hydra.overrides": overrides,
        "git_commit": tracking.git_commit(cfg.paths.root),
        **tracking.process_tags(),
    }
    parent = None
    if in_sweep:
        parent = tracking.sweep_parent(client, experiment_id, sweep_dir, cfg.tracking.uri)
        tags[tracking.PARENT] = parent
    run_name = (", ".join(task) or cfg.model.name)[:250]  # a longer name fails on PostgreSQL (VARCHAR(250))
    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    entry["run_id"] = run_id
    log.info("MLflow run %s (%s) in experiment %r", run_id, overrides or "defaults", cfg.tracking.experiment)

    def killed(interrupt: BaseException) -> None:
        message = f"interrupted ({str(interrupt) or 'Ctrl-C'})"  # Ctrl-C's KeyboardInterrupt has no text
        if isinstance(interrupt, SystemExit):
            # submitit's handler of SLURM's preemption or time-limit signal: it requeued the job, and the
            # sweep (and its parent run) goes on.
            message = f"interrupted (exit {interrupt.code}: preempted or timed out, requeued by the scheduler)"
        tracking.end_run(client, run_id, "KILLED", message)
        if parent and isinstance(interrupt, KeyboardInterrupt):
            tracking.end_run(client, parent, "KILLED", message)
        finish("KILLED", error=message)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)  # scancel and kill end the run KILLED, like Ctrl-C
    try:
        from ablation.train import train  # TensorFlow loads only for a job that trains

        tracking.log_params(client, run_id, tracking.run_params(cfg))
        result = train(cfg, callbacks=[tracking.EpochLogger(client, run_id)])
        tracking.log_result(client, run_id, cfg, result, out_dir)
    except (KeyboardInterrupt, SystemExit) as interrupt:
        killed(interrupt)
        raise
    except Exception as error:
        interrupt = _interrupt_behind(error)
        if interrupt is not None:  # a library's clean-up turned the interrupt into another error
            killed(interrupt)
            raise interrupt from error
        message = tracking.redact(f"{type(error).__name__}: {error}")
        log.exception("job failed: %s", overrides)
        tracking.end_run(client, run_id, "FAILED", message)
        finish("FAILED", error=message)
        if in_sweep:
            return entry
        raise
    tracking.end_run(client, run_id, "FINISHED")
    auc = result.test_metrics["auc"]
    log.info("finished run %s: test AUC %.4f, accuracy %.4f", run_id, auc, result.test_metrics["accuracy"])
    return finish("FINISHED", test_auc=round(float(auc), 4))
