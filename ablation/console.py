"""What the console shows: a job's start and end lines, Keras' epoch line, and the warnings and errors that concern
the user; not the frameworks' chatter (TensorFlow's C++ log, with its CUDA probe on a machine without a GPU,
MLflow's system-metrics lines and its artifact download bars). `hydra.verbose=true` shows it all again.

Nothing here hides an error: a failed job's traceback and the `error` tag are Python's, not these logs'.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

from ablation.contract import quiet_environment

SYSTEM_METRICS_LOGGER = "mlflow.system_metrics"  # two INFO lines a run: monitoring started, stopped


VERBOSE = "ABLATION_VERBOSE"  # set by `verbose`: the workers a job starts show everything too


def quiet() -> None:
    if os.environ.get(VERBOSE):
        return
    quiet_environment()
    logging.getLogger(SYSTEM_METRICS_LOGGER).setLevel(logging.WARNING)


def verbose() -> None:
    """Everything again (`hydra.verbose`), for this process and the workers it starts."""
    os.environ[VERBOSE] = "1"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "true"
    logging.getLogger(SYSTEM_METRICS_LOGGER).setLevel(logging.NOTSET)


# What TensorFlow's C++ side prints as it loads, before its logging starts and so whatever TF_CPP_MIN_LOG_LEVEL says:
# info lines ("oneDNN custom operations are on", "Could not find cuda drivers") and absl's preamble.
START_UP_NOTE = re.compile(r"^(I\d{4} \S+ +\d+ \S+:\d+\] |WARNING: All log messages before absl::InitializeLog)")


@contextlib.contextmanager
def framework_start() -> Iterator[None]:
    """Around a framework's import: what it writes to stderr is held, then written out less its start-up notes
    (`START_UP_NOTE`); a warning or an error it prints still shows."""
    if os.environ.get(VERBOSE):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:  # a file, not a pipe: a long message cannot block the import
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not START_UP_NOTE.match(line)))
            sys.stderr.flush()
