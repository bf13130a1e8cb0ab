"""`ablation.store.check` on real files and sockets: an empty, foreign, truncated or corrupt `mlflow.db`, a read-only
folder, a server nobody answers for; each refused in one line that names it. And through the real command: training
against a corrupt store says so in one line, with no traceback."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
from processes import TINY, free_port, run_ablation

from ablation import contract, store
from ablation.store import StoreError, check


@pytest.fixture(scope="module")
def real_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store as MLflow makes it (all its migrations), with an experiment and a run."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    experiment = client.create_experiment("e", artifact_location=(db.parent / "artifacts").as_uri())
    client.set_terminated(client.create_run(experiment).info.run_id)
    return db


def uri(path: Path) -> str:
    return f"sqlite:///{path}"


def refused(path: Path, *, create: bool) -> str:
    with pytest.raises(StoreError) as raised:
        check(uri(path), create=create)
    message = str(raised.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_real_store_passes_and_a_missing_one_only_when_training_creates_it(real_db, tmp_path):
    check(uri(real_db))
    check(uri(real_db), create=True)
    missing = tmp_path / "runs" / "mlflow.db"
    check(uri(missing), create=True)  # training creates it (and runs/)
    assert not missing.parent.exists()  # the check itself creates nothing
    assert "no MLflow store at" in refused(missing, create=False)


@pytest.mark.parametrize("create", [True, False])
def test_a_zero_byte_file_is_refused_not_initialised(tmp_path, create):
    db = tmp_path / "mlflow.db"
    db.touch()
    message = refused(db, create=create)
    assert "empty file (0 bytes)" in message and "delete it" in message
    assert db.stat().st_size == 0


def test_garbage_is_not_an_mlflow_store(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(os.urandom(8192))
    message = refused(db, create=True)
    assert "is not an MLflow store" in message and "not an SQLite database" in message


def test_a_truncated_copy_of_a_real_store_is_named_truncated(real_db, tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(real_db.read_bytes()[: real_db.stat().st_size // 2])
    message = refused(db, create=False)
    assert "is truncated" in message and "restore it from a backup" in message


def test_a_store_with_garbage_inside_is_named_corrupt(real_db, tmp_path):
    db = tmp_path / "mlflow.db"
    shutil.copy(real_db, db)
    page = 4096
    with open(db, "r+b") as f:  # every page after the first two: the header still vouches for the size
        f.seek(2 * page)
        f.write(b"\xa5" * (db.stat().st_size - 2 * page))
    message = refused(db, create=True)
    assert "is corrupt (SQLite:" in message and ".recover" in message


def test_an_sqlite_database_without_mlflow_tables_is_a_foreign_store(tmp_path):
    db = tmp_path / "mlflow.db"
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("CREATE TABLE notes (text)")
        con.commit()
    message = refused(db, create=True)
    assert "not an MLflow store" in message and "its tables: notes" in message


@pytest.fixture
def read_only_folder(tmp_path) -> Path:
    """A folder nobody may write in: chmod for a user; for root, whom permissions do not stop, a read-only mount."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"running as root, and no read-only mount here to stop a write: {mounted.stderr.decode()[:200]}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_folder_is_one_line_naming_it(read_only_folder):
    for db in (read_only_folder / "mlflow.db", read_only_folder / "runs" / "mlflow.db"):  # runs/ not made yet
        message = refused(db, create=True)
        assert message.startswith(f"{read_only_folder} is read-only") and "paths.runs" in message
    assert "no MLflow store at" in refused(read_only_folder / "mlflow.db", create=False)  # reading: missing


def test_a_server_nobody_answers_for_is_one_line_within_seconds(capsys, monkeypatch):
    monkeypatch.setenv(contract.QUIET_URL, "false")
    url = f"http://alice:hunter2-secret@127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(StoreError) as raised:
        check(url, create=True)
    took = time.monotonic() - start
    message = str(raised.value)
    assert took < store.TRAINING_WAIT_S + 3, took
    assert "\n" not in message and "hunter2" not in message
    assert message.startswith(f"the MLflow tracking server at {url.replace('alice:hunter2-secret@', '')} does not")
    assert "connection refused" in message and "scripts/mlflow_server.sh" in message
    assert capsys.readouterr().err == ""  # training does not wait: it says so at once
    assert os.environ.get(contract.QUIET_URL) == "true"  # MLflow's "View run at URL" line keeps the password in


def test_the_report_and_predict_say_they_are_waiting(capsys, monkeypatch):
    monkeypatch.setenv(contract.QUIET_URL, "false")
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StoreError, match="does not answer"):
        check(url, wait_s=1.5)
    assert capsys.readouterr().err.splitlines() == [
        f"waiting for the tracking server at {url} (connection refused: nothing listens there), up to 2 s ..."
    ]
    assert os.environ[contract.QUIET_URL] == "false"  # no credentials: MLflow's line stays


@pytest.mark.slow
def test_training_against_a_corrupt_store_prints_one_line_naming_it(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "mlflow.db").write_bytes(b"this is not a database\n" * 100)
    done = run_ablation(*TINY, runs=runs, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert f"{runs / 'mlflow.db'} is not an MLflow store" in output, output[-3000:]


@pytest.mark.slow
def test_training_and_a_sweep_into_a_read_only_runs_folder_print_one_line_naming_it(read_only_folder):
    for sweep in ([], ["-m", "seed=0,1"]):
        done = run_ablation(*sweep, *TINY, runs=read_only_folder, timeout=300)
        output = done.stdout + done.stderr
        assert done.returncode == 2 and "Traceback" not in output, output[-3000:]
        assert f"not started: paths.runs={read_only_folder}: {read_only_folder} cannot be written" in output
