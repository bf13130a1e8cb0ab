"""Worker processes side by side, each running its share of a job: the seeds of a pack (`ablation.job`).

Why processes, and one thread each on a CPU: docs/performance.md, "Packed seeds". Each worker is a fresh (spawned)
interpreter that starts its Keras backend with `threads` threads, so Keras and TensorFlow state is never shared.

Signals: Ctrl-C in a terminal reaches the whole process group, workers included, and each worker ends its run KILLED
(`ablation.interrupts`, `ablation.job.run_lifecycle`). SIGTERM or SIGHUP sent to the job's process alone (scancel,
kill) is passed on to the workers. A worker still alive after `GRACE_S` is terminated, and one whose job process dies
is sent SIGTERM by the kernel (Linux), so no worker outlives its job.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable

from ablation import console, devices, interrupts

log = logging.getLogger(__name__)

GRACE_S = 60.0  # after an interrupt: how long workers get to end their runs before they are terminated
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's, as the job's own lines


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def plan(workers: int | str, seeds: int) -> tuple[int, int]:
    """How many workers train `seeds` seeds (`pack.workers`: `auto` is one per core, never more than the seeds),
    and the threads each one gets (the cores shared between them, at least one)."""
    wanted = cores() if str(workers) == "auto" else int(workers)
    count = max(1, min(wanted, seeds))
    return count, max(1, cores() // count)


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _work(target: Callable, args: tuple, threads: int, backend: str, deterministic: bool) -> None:
    _die_with_parent()
    console.quiet()
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    devices.select_backend(backend, deterministic, threads)
    interrupts.install()
    target(*args)


def side_by_side(
    target: Callable, work: list[tuple], threads: int, backend: str, deterministic: bool
) -> list[int | None]:
    """`target(*args)` for each `args` of `work`, each in its own worker process, all at once; their exit codes.

    An interrupt of this process is raised once the workers have ended (or were terminated after `GRACE_S`).
    """
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no framework state forked mid-use
    processes = [
        context.Process(target=_work, args=(target, args, threads, backend, deterministic), name=f"worker-{i}")
        for i, args in enumerate(work)
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except (KeyboardInterrupt, SystemExit) as interrupt:
        if str(interrupt).startswith("signal"):  # SIGTERM or SIGHUP sent to this process alone: pass it on
            for process in processes:
                if process.is_alive():
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                log.warning("worker %s did not end within %.0f s of the interrupt: terminated", process.pid, GRACE_S)
                process.kill()
                process.join(10)
        raise
    return [process.exitcode for process in processes]
