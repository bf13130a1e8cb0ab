"""Which GPUs this machine has, which one a job of `python -m ablation -m ...` may use, and which Keras backend
drives them.

A parallel job is pinned to one card by `CUDA_VISIBLE_DEVICES`, and a backend is chosen by `KERAS_BACKEND` (and
configured by XLA's flags under JAX), all read once, when the framework starts: so `pin_gpu` and `select_backend`
run before anything imports Keras, TensorFlow or JAX in the job's process (the entry point, the job, the sweep
callback and tracking import none of them). No framework is imported here.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

VISIBLE = "CUDA_VISIBLE_DEVICES"
FRAMEWORKS = ("tensorflow", "jax", "torch")  # each reads VISIBLE when it starts
# Set by pin_gpu: a job later in the same worker process keeps the card its framework already started on.
PINNED_BY_US = "ABLATION_PINNED_GPU"


def nvidia_gpus() -> list[str]:
    """The `GPU i: ...` lines of `nvidia-smi -L`; none where there is no NVIDIA driver."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line for line in listing.splitlines() if line.startswith("GPU ")]


def framework_started() -> bool:
    return any(name in sys.modules for name in FRAMEWORKS)


def pin_gpu(job_num: int) -> str | None:
    """Give a parallel job one GPU, round-robin by job number (k jobs per card when n_jobs = k x cards).

    Never over a scheduler's own choice (SLURM and Ray set CUDA_VISIBLE_DEVICES themselves), and never
    once a framework has started in this process (a reused joblib worker keeps its first job's card).
    Returns the devices this job sees (the value of CUDA_VISIBLE_DEVICES), None when it is not set.
    """
    ours = os.environ.get(PINNED_BY_US)
    if VISIBLE in os.environ and os.environ[VISIBLE] != ours:  # a scheduler's choice
        return os.environ[VISIBLE]
    if framework_started():  # a reused worker: its framework already runs on the card its first job got
        if ours is not None:
            log.info("job %d stays on GPU %s, where this process's framework started", job_num, ours)
        return os.environ.get(VISIBLE)
    gpus = nvidia_gpus()
    if len(gpus) > 1:
        os.environ[VISIBLE] = os.environ[PINNED_BY_US] = str(job_num % len(gpus))
        log.info("job %d pinned to GPU %s of %d", job_num, os.environ[VISIBLE], len(gpus))
    return os.environ.get(VISIBLE)


class BackendError(RuntimeError):
    """A job asks for a Keras backend other than the one already running in its process."""


def select_backend(name: str, deterministic: bool, threads: int | None = None) -> None:
    """Make Keras start on backend `name` (`trainer.backend`); under JAX, let several jobs share a card (memory on
    demand, not 75 % of it up front) and, with `deterministic`, use XLA's deterministic GPU kernels. `threads`: the
    CPU threads each op may use (a pack's worker: `ablation.workers`); None leaves the framework's default, one per
    core."""
    if "keras" in sys.modules:
        running = sys.modules["keras"].backend.backend()
        if running != name:
            raise BackendError(
                f"trainer.backend={name}, but this process already runs Keras on {running}: a backend is fixed when"
                " Keras starts, so run each backend in its own command (or a launcher with a process per job)"
            )
        return
    os.environ["KERAS_BACKEND"] = name
    if threads is not None:  # read when the framework starts
        os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(threads)
        if name == "jax":
            flags = os.environ.get("XLA_FLAGS", "")
            os.environ["XLA_FLAGS"] = (
                f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={threads}"
            )
    if name == "jax":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        flags = os.environ.get("XLA_FLAGS", "")
        if deterministic and "xla_gpu_deterministic_ops" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()


def gpus_per_job() -> float:
    """GPUs a Ray task asks for (`conf/hydra/launcher/ray_tasks.yaml`): $ABLATION_GPUS_PER_JOB, else 1 where this
    machine has an NVIDIA GPU, else 0 (a task asking for a GPU that no node has would wait forever)."""
    if os.environ.get("ABLATION_GPUS_PER_JOB"):
        return float(os.environ["ABLATION_GPUS_PER_JOB"])
    return float(bool(nvidia_gpus()))


# Resolved in the launching process: the sweep callback (ablation.sweep) imports this module there first.
OmegaConf.register_new_resolver("ablation.gpus_per_job", gpus_per_job, replace=True)
