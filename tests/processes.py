"""Launching and killing `python -m ablation` and its servers in tests, and reading a store while jobs write it.

Every process a test starts runs in its own session and is killed with its whole group when the test ends
(or, for `run_ablation`, when it times out); every wait has a bound.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from conftest import DATA_ROOT, PROJECT

from ablation.contract import JOB, PID, ROLE, SWEEP, SWEEP_DIR

# The tiny preset (conf/experiment/tiny.yaml): 32 px, 32 images a class, 2 epochs, batch 16, quiet Keras.
TINY = ["experiment=tiny"]
EPOCH_METRICS = ("loss", "val_loss", "accuracy", "val_auc")
SCRIPT = PROJECT / "scripts" / "mlflow_server.sh"
MLFLOW_MODEL = {"model/MLmodel", "model/data", "model/input_example.json", "model/requirements.txt"}


# ---------------------------------------------------------------- processes, all bounded and cleaned up


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ablation(*args: str, runs: Path, cache: Path | None = None, report: bool = False) -> list[str]:
    """`python -m ablation ARGS` writing under `runs` (with the session's decoded-image cache, if given); a sweep
    builds its end-of-sweep report only when the test asks (`report`): it costs seconds the other tests skip."""
    data = [] if any(a.startswith("data.root=") for a in args) else [f"data.root={DATA_ROOT}"]
    cached = [f"data.cache_dir={cache}"] if cache else []
    reported = [] if report else ["tracking.report=false"]
    return [sys.executable, "-m", "ablation", *args, f"paths.runs={runs}", *cached, *data, *reported]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the process and everything it started (its session's group); SIGKILL also reaps it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    if sig == signal.SIGKILL:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)


def spawn(request, command: list[str], log: Path, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """Start `command` in a new session, output to `log`; the test's end kills its whole group."""
    full_env = {**os.environ, "ABLATION_ROOT": str(PROJECT), "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, cwd=PROJECT, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )
    request.addfinalizer(lambda: kill_group(proc))
    return proc


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    """Wait for `proc` at most `timeout` s (else kill its group and fail); its output."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(f"{proc.args[:4]} still running after {timeout} s:\n{tail(log)}")
    return log.read_text(errors="replace")


def run(request, tmp_path: Path, name: str, *args: str, runs: Path, cache: Path, env=None, timeout=600, report=False):
    """Run `python -m ablation ARGS` to its end; (exit status, output). Its helpers (Ray, workers) end with it."""
    log = tmp_path / f"{name}.log"
    proc = spawn(request, ablation(*args, runs=runs, cache=cache, report=report), log, env)
    output = finish(proc, log, timeout)
    wait_for(lambda: not group_alive(proc.pid), 60, f"the processes {name} started to exit", log)
    return proc.returncode, output


def run_command(command: list, timeout: float, cwd: Path = PROJECT, env: dict | None = None):
    """Run `command` to its end in a session of its own; on a timeout its whole group is killed. Output captured."""
    full_env = {**os.environ, "ABLATION_ROOT": str(PROJECT), **(env or {})}
    with subprocess.Popen(
        [str(c) for c in command],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_module(module: str, *args, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` (analysis, ablation.predict, ...) to its end."""
    return run_command([sys.executable, "-m", module, *args], timeout, **kwargs)


def run_ablation(
    *args: str, runs: Path, timeout: int = 900, cache: Path | None = None, report: bool = False
) -> subprocess.CompletedProcess:
    """`python -m ablation ARGS` as a user types it, writing under `runs`, to its end."""
    return run_command(ablation(*args, runs=runs, cache=cache, report=report), timeout)


def end_pids(pids, timeout: float) -> None:
    """Give processes started outside our group (Ray's workers start sessions of their own) `timeout` s to exit,
    then SIGKILL the ones still there, checked by pid and command line, so nothing outlives the test."""
    deadline = time.monotonic() + timeout
    left = {int(pid) for pid in pids}
    while left and time.monotonic() < deadline:
        left = {pid for pid in left if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"}
        time.sleep(0.5)
    for pid in left:
        with contextlib.suppress(OSError):
            if "ray::" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                os.kill(pid, signal.SIGKILL)


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return "X"


def tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no output)"


def wait_for(predicate, timeout: float, what: str, log: Path | None = None, proc=None, interval: float = 0.25):
    """Poll `predicate` until it returns something truthy; fail after `timeout` s or when `proc` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"exited ({proc.returncode}) before {what}:\n{tail(log) if log else ''}")
        time.sleep(interval)
    pytest.fail(f"no {what} within {timeout} s:\n{tail(log) if log else ''}")


def listening_hosts(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port` (from /proc/net/tcp)."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    if len(address) == 8:
                        hosts.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                    else:
                        hosts.add("::" if set(address) == {"0"} else address)
    return hosts


# ---------------------------------------------------------------- reading a store while jobs write it


def sqlite_rows(db: Path, query: str, *params) -> list[tuple]:
    """Rows of an MLflow SQLite store, read-only (never migrates a store that a job is creating)."""
    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
            return con.execute(query, params).fetchall()
    except sqlite3.OperationalError:  # tables not created yet, or a writer holds the lock
        return []


def job_runs(db: Path) -> list[dict]:
    """Every job run of the store: id, status, pid, its `epochs` param and how many epochs of loss it logged."""
    rows = sqlite_rows(
        db,
        "SELECT r.run_uuid, r.status, "
        f"(SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = '{PID}'), "
        "(SELECT value FROM params p WHERE p.run_uuid = r.run_uuid AND p.key = 'epochs'), "
        "(SELECT COUNT(*) FROM metrics m WHERE m.run_uuid = r.run_uuid AND m.key = 'loss') "
        f"FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = '{ROLE}' AND t.value = '{JOB}'",
    )
    return [dict(zip(("run_id", "status", "pid", "epochs", "losses"), row, strict=True)) for row in rows]


def sweep_folder(parent, runs: Path) -> Path:
    """The sweep folder a parent run's tag names: relative to the project, or, outside it (the tests' `runs`), by its
    last name under `runs` (`ablation.tracking.portable`)."""
    tag = parent.data.tags[SWEEP_DIR]
    if not tag.startswith(".../"):
        return PROJECT / tag
    [found] = [path for path in Path(runs).rglob(tag.removeprefix(".../")) if (path / "jobs.jsonl").exists()]
    return found


def runs_by_role(uri: str, experiment: str) -> tuple[mlflow.MlflowClient, list, list]:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {uri}"
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get(ROLE) == SWEEP]
    children = [r for r in runs if r.data.tags.get(ROLE) == JOB]
    assert len(parents) + len(children) == len(runs)
    return client, parents, children


def assert_complete(client: mlflow.MlflowClient, run, epochs: int) -> None:
    """A FINISHED job run with its params, one value per epoch of each epoch metric, test metrics, artifacts."""
    assert run.info.status == "FINISHED", run.data.tags.get("error")
    assert run.data.params["model"] == "cnn" and run.data.params["epochs"] == str(epochs)
    for key in EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(1, epochs + 1)), key
    assert {"test_auc", "test_accuracy", "num_params"} <= set(run.data.metrics)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "learning_curves.png", "test_predictions.csv"} <= names
    assert_mlflow_model(client, run.info.run_id)


def assert_mlflow_model(client: mlflow.MlflowClient, run_id: str) -> None:
    """The run's `model/` is an MLflow model (Keras flavor) with its signature's input example."""
    assert MLFLOW_MODEL <= {a.path for a in client.list_artifacts(run_id, "model")}
    assert "model/data/model.keras" in {a.path for a in client.list_artifacts(run_id, "model/data")}


# ---------------------------------------------------------------- an MLflow server, a PostgreSQL server


def mlflow_server(
    request, tmp_path: Path, backend: str, env: dict | None = None, port: int | None = None
) -> tuple[str, subprocess.Popen]:
    """scripts/mlflow_server.sh on `port` (a free loopback port by default), up and answering; its URL and process.
    Its artifacts are under `tmp_path`, so a server started again there on the same port serves the same store."""
    port = port or free_port()
    log = tmp_path / f"mlflow-server-{time.monotonic_ns()}.log"
    server_env = {"MLFLOW_BIN": str(Path(sys.executable).with_name("mlflow")), "MLFLOW_WORKERS": "1", **(env or {})}
    proc = spawn(request, ["bash", str(SCRIPT), backend, str(tmp_path / "artifacts"), str(port)], log, server_env)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                return response.status == 200
        return False

    wait_for(healthy, 180, "MLflow server answering /health", log, proc, interval=0.5)
    return url, proc
