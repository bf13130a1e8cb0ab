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

from ablation.contract import quiet_environment, redact

SYSTEM_METRICS_LOGGER = "mlflow.system_metrics"  # two INFO lines a run: monitoring started, stopped
# A traceback for each store call a full disk or a locked SQLite file refuses, although the caller handles it: the
# outbox retries and then says in one line what happened (`ablation.outbox`).
STORE_ERRORS_LOGGER = "mlflow.store.db.utils"
RETRIES_LOGGER = "urllib3.connectionpool"  # a line for each retry of a request to a tracking server that is away


VERBOSE = "ABLATION_VERBOSE"  # set by `verbose`: the workers a job starts show everything too


def quiet() -> None:
    redact_logs()
    if os.environ.get(VERBOSE):
        return
    quiet_environment()
    logging.getLogger(SYSTEM_METRICS_LOGGER).setLevel(logging.WARNING)
    logging.getLogger(STORE_ERRORS_LOGGER).setLevel(logging.CRITICAL)
    logging.getLogger(RETRIES_LOGGER).setLevel(logging.ERROR)


def redact_logs() -> None:
    """Every log record of this process with the secrets of its URIs masked (`ablation.contract.redact`), its
    traceback too: MLflow's own warnings quote the tracking URI, password and all ("Failed to get mlflow run: API
    request to http://user:PASSWORD@..."). Our own messages are redacted where they are made; these are not ours."""
    make = logging.getLogRecordFactory()
    if getattr(make, "redacts", False):
        return

    def redacted(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        with contextlib.suppress(Exception):  # a message its arguments do not fit: logging itself says so
            record.msg, record.args = redact(record.getMessage()), None
            if record.exc_info and not record.exc_text:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    redacted.redacts = True
    logging.setLogRecordFactory(redacted)


def verbose() -> None:
    """Everything again (`hydra.verbose`), for this process and the workers it starts."""
    os.environ[VERBOSE] = "1"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "true"
    logging.getLogger(SYSTEM_METRICS_LOGGER).setLevel(logging.NOTSET)
    logging.getLogger(STORE_ERRORS_LOGGER).setLevel(logging.NOTSET)
    logging.getLogger(RETRIES_LOGGER).setLevel(logging.NOTSET)


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
