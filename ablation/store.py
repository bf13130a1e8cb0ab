"""Where the MLflow store is: the default tracking URI, a check that a SQLite store exists, and a URI's
secrets taken out of any text before it is logged, printed or written into a report.

Shared by training (`ablation.tracking`), `python -m ablation.predict`, `python -m ablation.stretch` and
`python -m analysis`; MLflow itself is not imported here.
"""

from __future__ import annotations

import os
import re
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


# `scheme://userinfo@`: everything up to the last @ of the token is userinfo (a password may hold / or @).
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)(\S*)@")
_SECRET_PARAMETER = re.compile(
    r"([?&;](?:password|passwd|pwd|secret|token|access_token|api_key|apikey)=)[^&;#\s'\"`<>)\]]*", re.IGNORECASE
)


def _userinfo(match: re.Match) -> str:
    scheme, info = match.groups()
    if "/" in info.split(":", 1)[0]:  # no userinfo: an @ further along the path (`http://h/a@b`)
        return match.group(0)
    user = info.split(":", 1)[0]
    return f"{scheme}{user}:***@" if ":" in info else f"{scheme}***@"  # `https://TOKEN@host`: all of it


def redact(text: str) -> str:
    """`text` with the password or token of every URI in it masked (`scheme://user:***@`, `scheme://***@`,
    `?password=***`): no secret reaches a param, a tag, a log line, an error message or a report."""
    return _SECRET_PARAMETER.sub(r"\1***", _USERINFO.sub(_userinfo, text))
