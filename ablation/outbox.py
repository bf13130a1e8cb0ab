"""A run's records on their way to the store: written to a local journal first, sent in order by a background thread.

A store outage (a tracking server restarting or gone, a full disk under a SQLite store) neither stalls nor aborts
training, and loses nothing:
- each record (an epoch's metrics, the once-logged metrics, the files, the datasets, the ending) is appended to the
  run's journal, `runs/journal/<run id>.jsonl`, before it is sent;
- a thread sends the records in order, and retries one the store refused for a reason that passes (`unavailable`);
- at the job's end `close` waits for the rest, at most `tracking.outage_wait_s`; what is still unsent then stays in the
  journal, and the next command that opens the store sends it (`replay`), ending the run with its true status.
A journal holds no secret: the store is named by its redacted URI, which is how `replay` matches a journal to a store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path

from filelock import FileLock, Timeout
from mlflow.entities import Metric, RunTag

from ablation import tracking
from ablation.contract import ERROR, LATE, first_line, redact

log = logging.getLogger(__name__)

JOURNAL_DIR = "journal"  # under paths.runs
RETRY_S = (1, 2, 4, 8)  # the thread's waits between tries of a record the store refused for a passing reason

# What a store says when it cannot take a write now (SQLite through SQLAlchemy; an MLflow server through requests),
# and what the journal and the run's end call it. Anything else is a record the store will never take.
UNAVAILABLE = {
    "database or disk is full": "store unwritable: disk full",
    "No space left on device": "store unwritable: disk full",
    "readonly database": "store unwritable: read-only",
    "Read-only file system": "store unwritable: read-only",
    "disk I/O error": "store unwritable: disk I/O error",
    "database is locked": "store locked by another process",
    "unable to open database": "store unreachable: its database file cannot be opened",
    "Max retries exceeded": "tracking server unreachable",
    "Connection refused": "tracking server unreachable",
    "Connection aborted": "tracking server unreachable",
    "Remote end closed": "tracking server unreachable",
    "timed out": "tracking server unreachable",
    "status code 502": "tracking server unreachable",
    "status code 503": "tracking server unreachable",
    "status code 504": "tracking server unreachable",
}


def unavailable(error: BaseException) -> str | None:
    """Why the store could not take a write now (a reason that passes), or None for a refusal that will not."""
    text = f"{type(error).__name__}: {error}"
    return next((why for mark, why in UNAVAILABLE.items() if mark in text), None)


def journal_dir(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / JOURNAL_DIR


class Outbox:
    """The records of run `run_id`, journaled under `runs_dir` and sent to the store at `uri` by a thread."""

    def __init__(self, client, uri: str, run_id: str, runs_dir: str | Path):
        self.client, self.run_id = client, run_id
        self.path = journal_dir(runs_dir) / f"{run_id}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._records: list[dict] = []
        self._sent = 0
        self._since: float | None = None  # when the store first refused the record now at the head
        self._why: str | None = None
        self._end_refused: str | None = None  # the store refused the run's ending for good: the job did not end it
        self._wake = threading.Event()
        self._deadline: float | None = None  # set by close: the thread gives up then
        self._owner = FileLock(_lock_file(self.path))  # held while this job may still add records (`replay`)
        self._owner.acquire()
        self._journal({"store": redact(uri), "run_id": run_id})
        self._thread = threading.Thread(target=self._send_all, name=f"outbox-{run_id[:8]}", daemon=True)
        self._thread.start()

    # ---- records
    def metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._add({"metrics": [[key, float(value), now, step] for key, value in metrics.items()]})

    def artifacts(self, folder: Path) -> None:
        self._add({"artifacts": str(Path(folder).resolve())})

    def datasets(self, root: str, splits: dict) -> None:
        self._add({"datasets": {"root": root, "splits": splits}})

    def end(self, status: str, error: str | None = None) -> None:
        self._add({"end": status, "error": error})

    def _add(self, record: dict) -> None:
        self._journal(record)
        self._records.append(record)
        self._wake.set()

    def _journal(self, record: dict) -> None:
        with open(self.path, "a") as out:
            out.write(json.dumps(record) + "\n")
            out.flush()
            os.fsync(out.fileno())

    # ---- sending
    def _send_all(self) -> None:
        while True:
            self._wake.wait(timeout=1)
            self._wake.clear()
            while self._sent < len(self._records):
                if self._deadline is not None and time.time() > self._deadline:
                    return
                record = self._records[self._sent]
                try:
                    send(self.client, self.run_id, record)
                except Exception as error:
                    why = unavailable(error)
                    if why is None:  # a record the store will never take: said, and passed over
                        log.error("run %s: the store refused %s: %s", self.run_id, list(record)[0], first_line(error))
                        if "end" in record:
                            self._end_refused = first_line(error)
                    else:
                        self._since = self._since or time.time()
                        self._why = why
                        waited = time.time() - self._since
                        time.sleep(RETRY_S[min(int(waited) // 10, len(RETRY_S) - 1)])
                        continue
                self._sent += 1
                self._since = None
                _write_sent(self.path, self._sent)
            if self._records and "end" in self._records[-1] and self._sent == len(self._records):
                if self._end_refused is None:  # else the journal stays, for a later command to try again
                    _remove(self.path)
                return

    def close(self, wait_s: float) -> bool | str:
        """Wait at most `wait_s` for every record to reach the store: True, or why not (they stay in the journal): an
        outage that lasted, or the store refusing the run's ending."""
        if self._thread.is_alive() and self._sent < len(self._records) and self._since is not None:
            log.warning(
                "run %s: %s; retrying for up to %.0f s (its records are kept in %s)",
                self.run_id,
                self._why,
                wait_s,
                self.path,
            )
        self._deadline = time.time() + wait_s
        self._wake.set()
        self._thread.join(timeout=wait_s + 5)
        try:
            if self._sent >= len(self._records):
                return self._end_refused or True
            why = self.reason()
            with contextlib.suppress(OSError):
                self._journal({"late": why})
            return why
        finally:
            self._owner.release()

    def reason(self) -> str:
        outage = f" for {time.time() - self._since:.0f} s" if self._since else ""
        return f"{self._why or 'store unavailable'}{outage}"


def send(client, run_id: str, record: dict) -> None:
    """One journal record to the store."""
    if "metrics" in record:
        client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in record["metrics"]])
    elif "artifacts" in record:
        client.log_artifacts(run_id, record["artifacts"])
    elif "datasets" in record:
        splits = {name: tuple(value) for name, value in record["datasets"]["splits"].items()}
        tracking.log_datasets(client, run_id, record["datasets"]["root"], splits)
    elif "late" in record:
        client.log_batch(run_id, tags=[RunTag(LATE, record["late"])])
    elif "end" in record:
        if record.get("error"):
            client.set_tag(run_id, ERROR, record["error"][:5000])
        client.set_terminated(run_id, record["end"])


def _sent_file(path: Path) -> Path:
    return path.with_suffix(".sent")


def _lock_file(path: Path) -> str:
    return str(path.with_suffix(".lock"))


def _write_sent(path: Path, count: int) -> None:
    with contextlib.suppress(OSError):  # a full disk: the replay may send a record twice, which the store merges
        tmp = _sent_file(path).with_suffix(".sent.tmp")
        tmp.write_text(str(count))
        os.replace(tmp, _sent_file(path))


def _remove(path: Path) -> None:
    for file in (path, _sent_file(path), Path(_lock_file(path))):
        file.unlink(missing_ok=True)


def ended_unsent(runs_dir: str | Path, run_id: str) -> bool:
    """Whether run `run_id`'s job ended it, but the store has not taken that ending yet (it waits in the journal)."""
    path = journal_dir(runs_dir) / f"{run_id}.jsonl"
    return path.exists() and any("end" in record for record in _read(path)[1:])


def replay(client, uri: str, runs_dir: str | Path) -> list[str]:
    """Send what the journals of this store's runs still hold, in order, and remove each journal sent in full; the runs
    whose records were sent. A journal whose job is still running is left to it (its lock). A job that died without its
    end: its records are sent, and the reaper ends its run, saying so. A store that still cannot take a record leaves
    the rest for the next command."""
    folder, store, done = journal_dir(runs_dir), redact(uri), []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        try:
            header = next(iter(_read(path)), {})
            if header.get("store") != store:
                continue
            with FileLock(_lock_file(path), timeout=0):
                if _replay_one(client, header["run_id"], path):
                    _remove(path)
                    done.append(header["run_id"])
        except Timeout:
            continue  # its job is still running
        except OSError as error:  # a journal this user cannot read or remove: said, and left for its owner
            log.warning("journal %s not sent: %s", path, first_line(error))
    return done


def _read(path: Path) -> list[dict]:
    """A journal's records, header first; a line cut short (its job killed while writing it) is left out."""
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


def _replay_one(client, run_id: str, path: Path) -> bool:
    """Send journal `path`'s unsent records: whether all went (a record the store will never take is said and passed
    over), and the run then carries `LATE`: the outage its job saw, and when the records were sent."""
    records = _read(path)[1:]
    sent = int(_sent_file(path).read_text()) if _sent_file(path).exists() else 0
    late = next((f"{record['late']} when its job ended" for record in records if "late" in record), None)
    late = late or (
        "the store unavailable when its job ended" if records and "end" in records[-1] else "its job died first"
    )
    unsent = [record for record in records[sent:] if "late" not in record]
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    for record in [*unsent, *([{"late": f"{late}; sent at {when}"}] if unsent else [])]:
        try:
            send(client, run_id, record)
        except Exception as error:
            if why := unavailable(error):
                log.warning("run %s: its journal %s is not sent yet: %s", run_id, path, why)
                return False
            log.error("run %s: the store refused %s: %s", run_id, list(record)[0], redact(str(error)))
    log.warning("run %s: sent the records its job could not (%s)", run_id, path)
    return True
