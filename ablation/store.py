"""Where the MLflow store is: the default tracking URI and a check that a SQLite store exists.

Shared by `python -m ablation.predict`, `python -m ablation.stretch` and `python -m analysis`; MLflow
itself is not imported here.
"""

from __future__ import annotations

import os
from pathlib import Path

SQLITE = "sqlite:///"


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the SQLite store `python -m ablation` writes: runs/mlflow.db under the cwd."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE}{Path.cwd() / 'runs' / 'mlflow.db'}"


def missing_sqlite_store(uri: str) -> Path | None:
    """The SQLite file `uri` names when that file does not exist, else None (other URIs: None).

    MLflow silently creates an empty database for a missing SQLite file, and would then report every
    experiment and run as missing instead of naming the real problem.
    """
    if not uri.startswith(SQLITE):
        return None
    path = Path(uri.removeprefix(SQLITE).split("?")[0])  # four slashes = absolute, as in SQLAlchemy
    return None if path.is_file() else path
