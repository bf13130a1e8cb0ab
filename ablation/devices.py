"""Which GPUs this machine has, and which one a job of `python -m ablation -m ...` may use.

A parallel job is pinned to one card by `CUDA_VISIBLE_DEVICES`, which a framework reads once, when it
starts: so `pin_gpu` runs before anything imports Keras or TensorFlow in the job's process (the entry
point, the job, the sweep callback and tracking import neither). No framework is imported here.
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


def gpus_per_job() -> float:
    """GPUs a Ray task asks for (`conf/hydra/launcher/ray_tasks.yaml`): $ABLATION_GPUS_PER_JOB, else 1 where this
    machine has an NVIDIA GPU, else 0 (a task asking for a GPU that no node has would wait forever)."""
    if os.environ.get("ABLATION_GPUS_PER_JOB"):
        return float(os.environ["ABLATION_GPUS_PER_JOB"])
    return float(bool(nvidia_gpus()))


# Resolved in the launching process: the sweep callback (ablation.sweep) imports this module there first.
OmegaConf.register_new_resolver("ablation.gpus_per_job", gpus_per_job, replace=True)
