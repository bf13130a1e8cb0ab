"""Opening a tracking store, checked first: what is wrong with it named in one line, before MLflow touches it.

MLflow meets a broken store with a long SQLAlchemy traceback that never names the file, silently initialises an
empty file as a new store, and retries a server that is down for minutes without a word. `check(uri)` runs before
any of that: a zero-byte, truncated, corrupt or foreign SQLite file, a folder or file training cannot write, a
server that does not answer or refuses the credentials, each raised as a `StoreError` of one line that names the
file or the server, what is wrong and what to do. No MLflow here (it is slow to import): `sqlite3` and `requests`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import sqlite3
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from ablation.contract import SQLITE, first_line, hide_credentials, redact, sqlite_path


class StoreError(RuntimeError):
    """The tracking store cannot be used; the message names it, says what is wrong and what to do."""


SQLITE_HEADER = b"SQLite format 3\x00"
MLFLOW_TABLES = ("alembic_version", "experiments")  # what every MLflow SQL store has, whatever its schema version
# A server that does not answer: training gives up after TRAINING_WAIT_S (it has not started anything yet); the
# report and predict wait READING_WAIT_S, saying so, as a restarting server comes back within seconds.
TRAINING_WAIT_S = 5.0
READING_WAIT_S = 30.0
PROBE_TIMEOUT_S = 3.0  # to connect, and again to answer, per probe
RETRY_EVERY_S = 1.0


def check(uri: str, *, create: bool = False, wait_s: float | None = None, deep: bool = True) -> None:
    """Raise `StoreError` when the store at `uri` cannot be used. `create`: a missing SQLite file is fine (training
    creates it) but its folder must be writable; else (report, predict) a missing file is an error. An http(s)
    server is probed for `wait_s` seconds (default: `TRAINING_WAIT_S` with `create`, else `READING_WAIT_S`,
    printing that it waits). `deep`: SQLite's check of every page too (a full read of the file; a job leaves it to its
    command's check before start). Also keeps credentials in `uri` off stdout (`contract.hide_credentials`)."""
    hide_credentials(uri)
    if uri.startswith(("http://", "https://")):
        _check_server(uri, (TRAINING_WAIT_S if create else READING_WAIT_S) if wait_s is None else wait_s, not create)
    elif uri.startswith(SQLITE):
        _check_sqlite(sqlite_path(uri), uri, create, deep)
    elif create and (folder := _file_store(uri)) is not None:
        _check_writable_folder(folder, uri)


def _file_store(uri: str) -> Path | None:
    if uri.startswith("file:"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path))
    return None if "://" in uri or not uri else Path(uri)  # a plain path is MLflow's file store


# ---------------------------------------------------------------- SQLite


def _check_sqlite(path: Path, uri: str, create: bool, deep: bool) -> None:
    shown = f"(tracking URI {redact(uri)})"
    if not path.exists():
        if not create:
            raise StoreError(f"no MLflow store at {path} {shown}: train first, or pass the right --tracking-uri")
        _check_writable_folder(path.parent, uri, path)
        return
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not an MLflow store {shown}: point the tracking URI at its mlflow.db")
    size = path.stat().st_size
    if size == 0:
        raise StoreError(
            f"the MLflow store {path} is an empty file (0 bytes), not a store {shown}: delete it to start a new "
            "store there, or point the tracking URI at the right file"
        )
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError as error:
        reason = error.strerror
        raise StoreError(f"cannot read the MLflow store {path} ({reason}) {shown}: check its permissions") from None
    if not header.startswith(SQLITE_HEADER):
        raise StoreError(
            f"{path} is not an MLflow store: it is not an SQLite database (no SQLite header) {shown}; point the "
            "tracking URI at the right file, or move this one aside to start a new store"
        )
    # A transaction a killed writer left (its -journal or -wal): SQLite finishes or undoes it when next opened to
    # write, so the file as it stands says nothing yet.
    if not _pending_transaction(path):
        expected = _size_in_header(header)
        truncated = f"is truncated: {size} bytes of the {expected} its header gives" if size < (expected or 0) else ""
        _check_contents(path, shown, deep, truncated)
    if create:
        _check_writable_folder(path.parent, uri, path)
        try:
            with open(path, "r+b"):
                pass
        except OSError as error:
            raise StoreError(
                f"cannot write the MLflow store {path} ({error.strerror}) {shown}: training records its runs there; "
                "make it writable, or point paths.runs (or tracking.uri) elsewhere"
            ) from None


def _size_in_header(header: bytes) -> int | None:
    """The database size SQLite's header gives (page size times page count), when the header vouches for it."""
    if len(header) < 100 or header[24:28] != header[92:96]:  # the count is stale: a writer older than SQLite 3.7
        return None
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    return page_size * int.from_bytes(header[28:32], "big") or None


def _pending_transaction(path: Path) -> bool:
    return any(
        (side := path.with_name(path.name + suffix)).exists() and side.stat().st_size > 0
        for suffix in ("-wal", "-journal")
    )


def _check_contents(path: Path, shown: str, deep: bool, truncated: str) -> None:
    """MLflow's tables in the file, read-only, and with `deep` SQLite's own quick check of every page (a full read:
    once per command, not once per job). `truncated`: what the file's size said, which counts only when the file
    fails a check too (a writer that is extending the file makes the size lag its header for a moment)."""
    ro = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(ro, uri=True, timeout=10)) as db:
            problems = [row[0] for row in db.execute("PRAGMA quick_check(3)").fetchall()] if deep else ["ok"]
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError as error:
        if "locked" in str(error) or "busy" in str(error):
            return  # a writer holds it: a live store, which MLflow's own timeout handles
        problems, tables = [str(error)], set()
    except sqlite3.DatabaseError as error:  # "file is not a database", "database disk image is malformed"
        problems, tables = [str(error)], set()
    if truncated and (problems != ["ok"] or not tables):
        raise StoreError(
            f"the MLflow store {path} {truncated} {shown}; restore it from a backup, or move it aside to start a "
            "new store"
        )
    if problems != ["ok"]:
        raise StoreError(
            f"the MLflow store {path} is corrupt (SQLite: {'; '.join(problems)[:200]}) {shown}: restore it from a "
            f"backup (or try `sqlite3 {path} .recover`), or move it aside to start a new store"
        )
    if missing := [table for table in MLFLOW_TABLES if table not in tables]:
        held = f"its tables: {', '.join(sorted(tables)[:8])}" if tables else "it has no tables"
        raise StoreError(
            f"{path} is an SQLite database but not an MLflow store (no {' or '.join(missing)} table; {held}) {shown}: "
            "point the tracking URI at the right file, or move this one aside to start a new store"
        )


def _write_refused(folder: Path) -> tuple[Path, OSError | None]:
    """The folder (or, missing, the nearest folder above it, where it would be created), and why it takes no new file
    (None: it does). Tried for real, as permissions say nothing to root and nothing of a read-only mount."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".ablation-write-probe-"):
            return existing, None
    except OSError as error:
        return existing, error


def _check_writable_folder(folder: Path, uri: str, store: Path | None = None) -> None:
    """The store's folder takes a new file (`_write_refused`)."""
    existing, refused = _write_refused(folder)
    what = f"its MLflow store {store}" if store else "its MLflow store"
    if not existing.is_dir():
        raise StoreError(f"cannot create {folder}: {existing} is a file, not a folder (tracking URI {redact(uri)})")
    if refused is not None:
        raise StoreError(
            f"{existing} is read-only ({refused.strerror}): training writes {what} there; make it writable, or point "
            "paths.runs (or tracking.uri) at a folder that is"
        )


def check_runs_folder(folder: Path) -> None:
    """`paths.runs`, where a job writes its outputs, journal and locks (whatever the store), takes a new file."""
    existing, refused = _write_refused(folder)
    if refused is not None:
        raise StoreError(
            f"paths.runs={folder}: {existing} cannot be written ({refused.strerror}); every run writes its outputs "
            "there: make it writable, or point paths.runs at a folder that is"
        )


# ---------------------------------------------------------------- a tracking server


def server_url(uri: str) -> str:
    """`uri` less its credentials and query: what a message may show (an IPv6 host keeps its brackets)."""
    parts = urllib.parse.urlsplit(uri)
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        raise StoreError(f"the tracking URI {redact(uri)} has no valid port: expected http(s)://HOST[:PORT]") from None
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path.rstrip('/')}"


def _auth_header(uri: str) -> dict[str, str]:
    """The credentials MLflow would send: the URI's `user:password@`, else MLFLOW_TRACKING_USERNAME and _PASSWORD,
    else MLFLOW_TRACKING_TOKEN."""
    parts = urllib.parse.urlsplit(uri)
    user, password = parts.username, parts.password
    if user is None and os.environ.get("MLFLOW_TRACKING_USERNAME"):
        user, password = os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    if user is not None:
        pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password or '')}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {token}"}
    return {}


def _verify() -> bool | str:
    """TLS verification as MLflow's client does it."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return False
    return os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True


def _probe(base: str, headers: dict[str, str]) -> str | None:
    """None when the server answers; else why not, in a few words. A TLS failure raises: waiting will not help."""
    import requests

    try:
        response = requests.get(f"{base}/health", timeout=(PROBE_TIMEOUT_S, PROBE_TIMEOUT_S), verify=_verify())
    except requests.exceptions.SSLError as error:
        raise StoreError(
            f"the MLflow tracking server at {base} failed the TLS handshake ({first_line(error, 200)}): set "
            "MLFLOW_TRACKING_SERVER_CERT_PATH to its CA bundle, or check the URI's scheme (http or https)"
        ) from None
    except requests.exceptions.ConnectionError as error:
        text = str(error)
        if any(words in text for words in ("Name or service not known", "nodename nor servname", "failure in name")):
            return "its host name does not resolve"
        if "refused" in text.lower():
            return "connection refused: nothing listens there"
        if isinstance(error, requests.exceptions.ConnectTimeout) or "timed out" in text:
            return f"no connection within {PROBE_TIMEOUT_S:g} s"
        return first_line(error, 200)
    except requests.exceptions.Timeout:
        return f"no answer within {PROBE_TIMEOUT_S:g} s"
    except requests.exceptions.RequestException as error:
        return first_line(error, 200)
    if response.status_code >= 500:
        return f"HTTP {response.status_code} on /health"  # a proxy in front of a server that is down
    # A server with users refuses a call without credentials, or with wrong ones, on its API, not on /health.
    try:
        answer = requests.get(
            f"{base}/api/2.0/mlflow/experiments/search",
            params={"max_results": 1},
            headers=headers,
            timeout=(PROBE_TIMEOUT_S, PROBE_TIMEOUT_S * 2),
            verify=_verify(),
        )
    except requests.exceptions.RequestException:
        return None  # it answered /health: MLflow's own calls and retries take it from here
    if answer.status_code == 401:
        what = "refused the credentials" if headers else "asks for a user and password"
        raise StoreError(
            f"the MLflow tracking server at {base} {what} (HTTP 401): give them in the tracking URI "
            "(http://USER:PASSWORD@HOST:PORT) or in MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    return None


def _check_server(uri: str, wait_s: float, say_waiting: bool) -> None:
    base, headers = server_url(uri), _auth_header(uri)
    start = time.monotonic()
    waiting = False
    while True:
        why = _probe(base, headers)
        if why is None:
            if waiting:
                print(f"the tracking server at {base} answers after {time.monotonic() - start:.0f} s", file=sys.stderr)
            return
        left = wait_s - (time.monotonic() - start)
        if left <= 0:
            break
        if say_waiting and not waiting:
            print(f"waiting for the tracking server at {base} ({why}), up to {wait_s:.0f} s ...", file=sys.stderr)
            sys.stderr.flush()
            waiting = True
        time.sleep(min(RETRY_EVERY_S, left))
    raise StoreError(
        f"the MLflow tracking server at {base} does not answer ({why}; tried for {time.monotonic() - start:.0f} s): "
        "start it (scripts/mlflow_server.sh), or check the host, the port and the network, and the tracking URI "
        "(tracking.uri, $MLFLOW_TRACKING_URI)"
    )
