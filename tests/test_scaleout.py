"""Scale-out: sweeps through Ray, submitit (local; SLURM's batch script) and a shared MLflow server on PostgreSQL.

Every process a test starts runs in its own session and is killed with its whole group when the test ends;
every wait has a bound. The helpers here are shared with tests/test_faults.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from conftest import DATA_ROOT, PROJECT

# Tiny but real: 32 px, 32 images a class, 4 steps an epoch, quiet Keras.
TINY = ["model=cnn", "data.image_size=32", "data.max_train_per_class=32", "batch_size=16", "trainer.verbose=0"]
EPOCH_METRICS = ("loss", "val_loss", "accuracy", "val_auc")
SCRIPT = PROJECT / "scripts" / "mlflow_server.sh"


# ---------------------------------------------------------------- processes, all bounded and cleaned up


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ablation(*args: str, runs: Path, cache: Path) -> list[str]:
    """`python -m ablation ARGS` writing under `runs`, with the session's decoded-image cache."""
    data = [] if any(a.startswith("data.root=") for a in args) else [f"data.root={DATA_ROOT}"]
    return [sys.executable, "-m", "ablation", *args, f"paths.runs={runs}", f"data.cache_dir={cache}", *data]


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


def run(request, tmp_path: Path, name: str, *args: str, runs: Path, cache: Path, env=None, timeout=600):
    """Run `python -m ablation ARGS` to its end; (exit status, output). Its helpers (Ray, workers) end with it."""
    log = tmp_path / f"{name}.log"
    proc = spawn(request, ablation(*args, runs=runs, cache=cache), log, env)
    output = finish(proc, log, timeout)
    wait_for(lambda: not group_alive(proc.pid), 60, f"the processes {name} started to exit", log)
    return proc.returncode, output


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
        "(SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'ablation.pid'), "
        "(SELECT value FROM params p WHERE p.run_uuid = r.run_uuid AND p.key = 'epochs'), "
        "(SELECT COUNT(*) FROM metrics m WHERE m.run_uuid = r.run_uuid AND m.key = 'loss') "
        "FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'ablation.role' AND t.value = 'job'",
    )
    return [dict(zip(("run_id", "status", "pid", "epochs", "losses"), row, strict=True)) for row in rows]


def runs_by_role(uri: str, experiment: str) -> tuple[mlflow.MlflowClient, list, list]:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {uri}"
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ablation.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("ablation.role") == "job"]
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
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/model.keras"]


# ---------------------------------------------------------------- an MLflow server, a PostgreSQL server


def mlflow_server(request, tmp_path: Path, backend: str, env: dict | None = None) -> tuple[str, subprocess.Popen]:
    """scripts/mlflow_server.sh on a free loopback port, up and answering; its URL and process."""
    port = free_port()
    log = tmp_path / "mlflow-server.log"
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


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))  # Debian's postgresql package
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture
def postgres(request, tmp_path) -> dict[str, str]:
    """A PostgreSQL database for MLflow: $ABLATION_POSTGRES_URI, else a throwaway cluster on a free loopback port.

    Without PostgreSQL the test is skipped, unless ABLATION_REQUIRE_POSTGRES (or CI) is set: then it fails.
    """
    if os.environ.get("ABLATION_POSTGRES_URI"):
        return {"uri": os.environ["ABLATION_POSTGRES_URI"], "env": {}, "psql": ""}
    bindir = _postgres_bin()
    if bindir is None:
        message = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("ABLATION_REQUIRE_POSTGRES") or os.environ.get("CI"):
            pytest.fail(f"{message}, and ABLATION_REQUIRE_POSTGRES/CI says this test must run")
        pytest.skip(f"{message}; set ABLATION_REQUIRE_POSTGRES=1 to make this a failure")

    user = "postgres" if os.geteuid() == 0 else None  # the server refuses to run as root
    base = Path(tempfile.mkdtemp(prefix="ablation-pg-"))  # not under tmp_path: the postgres user must reach it
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    password = "pg-" + os.urandom(8).hex()
    (base / "pwfile").write_text(password + "\n")
    if user:
        for path in (base, base / "pwfile"):
            shutil.chown(path, user)
    subprocess.run(
        [bindir / "initdb", "-D", base / "data", "-U", "mlflow", f"--pwfile={base / 'pwfile'}"]
        + ["--auth=scram-sha-256", "--encoding=UTF8", "--no-sync"],
        user=user,
        check=True,
        capture_output=True,
        timeout=180,
    )
    port = free_port()
    log = tmp_path / "postgres.log"
    command = [bindir / "postgres", "-D", base / "data", "-h", "127.0.0.1", "-p", str(port), "-k", str(base)]
    proc = spawn(request, [str(c) for c in command] + ["-c", "fsync=off"], log, user=user)
    request.addfinalizer(lambda: kill_group(proc, signal.SIGINT))  # fast shutdown first, SIGKILL after (spawn)
    env = {"PGPASSWORD": password}

    def ready() -> bool:
        probe = [bindir / "pg_isready", "-h", "127.0.0.1", "-p", str(port), "-q"]
        return subprocess.run(probe, timeout=30).returncode == 0

    wait_for(ready, 60, "PostgreSQL accepting connections", log, proc)
    subprocess.run(
        [bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        timeout=60,
    )
    # No password in the URI (ps shows it): libpq reads PGPASSWORD, as it would ~/.pgpass.
    psql = [str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "-d", "mlflow", "-tAc"]
    return {"uri": f"postgresql://mlflow@127.0.0.1:{port}/mlflow", "env": env, "psql": json.dumps(psql)}


# ---------------------------------------------------------------- Ray


@pytest.mark.slow
def test_ray_launcher_runs_each_job_as_a_ray_task_in_its_own_process(request, tmp_path, cache_dir):
    runs = tmp_path / "runs"
    status, output = run(
        request,
        tmp_path,
        "ray",
        "-m",
        "hydra/launcher=ray_tasks",
        "hydra.launcher.ray.init.address=local",  # a Ray of its own, never one already running here
        "hydra.launcher.ray.init.num_cpus=2",
        "dropout=0,0.5",
        "epochs=1",
        "tracking.experiment=ray",
        *TINY,
        runs=runs,
        cache=cache_dir,
    )
    assert status == 0, output[-5000:]
    assert "Ray Launcher is launching 2 jobs" in output and "Started a local Ray instance" in output
    assert "database is locked" not in output

    client, parents, children = runs_by_role(f"sqlite:///{runs}/mlflow.db", "ray")
    pids = {r.data.tags["ablation.pid"] for r in children}
    request.addfinalizer(lambda: end_pids(pids, 60))
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED" and "error" not in parent.data.tags
    sweep_dir = Path(parent.data.tags["ablation.sweep_dir"])
    driver = json.loads((sweep_dir / "sweep_driver.json").read_text())["ablation.pid"]
    assert parent.data.tags["ablation.pid"] == driver  # the launcher's pid, not a worker's
    assert sorted(r.data.params["dropout"] for r in children) == ["0.0", "0.5"]
    assert len(pids) == 2 and driver not in pids  # Ray workers, one each (max_calls=1)
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert_complete(client, child, epochs=1)


# ---------------------------------------------------------------- submitit: local processes, SLURM's script


@pytest.mark.slow
def test_submitit_local_runs_each_job_in_its_own_process_and_requeues_a_preempted_one(request, tmp_path, cache_dir):
    """Two jobs, a process each; one gets USR2 mid-training, as SLURM sends it at preemption: submitit requeues
    it, its first run ends KILLED, and the requeued job trains the configuration to the end."""
    runs, db = tmp_path / "runs", tmp_path / "runs" / "mlflow.db"
    log = tmp_path / "submitit.log"
    # Six epochs: the preempted job must still be training when its signal comes, however loaded the machine.
    sweep = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=15", "dropout=0,0.5", "epochs=6"]
    proc = spawn(request, ablation(*sweep, "tracking.experiment=submitit", *TINY, runs=runs, cache=cache_dir), log)
    training = wait_for(lambda: [r for r in job_runs(db) if r["losses"] >= 1], 400, "an epoch", log, proc)
    preempted = training[0]
    os.kill(int(preempted["pid"]), signal.SIGUSR2)
    output = finish(proc, log, 600)
    wait_for(lambda: not group_alive(proc.pid), 60, "the job processes to exit", log)
    assert proc.returncode == 0, output[-5000:]

    client, parents, children = runs_by_role(f"sqlite:///{runs}/mlflow.db", "submitit")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and "error" not in parents[0].data.tags
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert sorted(r.data.params["dropout"] for r in finished) == ["0.0", "0.5"] and len(children) == 3
    killed = client.get_run(preempted["run_id"])
    assert killed.info.status == "KILLED"
    assert killed.data.tags["error"].startswith("interrupted (exit 144: preempted or timed out, requeued")
    [again] = [r for r in finished if r.data.tags["ablation.config_hash"] == killed.data.tags["ablation.config_hash"]]
    assert again.data.tags["ablation.pid"] != preempted["pid"]  # a new process for the requeued job
    assert len({r.data.tags["ablation.pid"] for r in finished}) == 2
    for child in finished:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert_complete(client, child, epochs=6)
    assert "Requeued job" in "".join(p.read_text() for p in runs.rglob(".submitit/*/*_log.*"))


def test_slurm_preset_asks_for_a_gpu_a_time_limit_and_requeue(request, tmp_path):
    """`hydra/launcher=slurm` writes the sbatch script SLURM gets; a stand-in `sbatch` keeps it and refuses."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = tmp_path / "submitted.sh"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncat "$1" > {script}\necho "sbatch: stand-in" >&2\nexit 1\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks that there is one
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / "slurm.log"
    runs = tmp_path / "runs"
    command = ablation("-m", "hydra/launcher=slurm", "dropout=0,0.5", "epochs=1", runs=runs, cache=tmp_path)
    proc = spawn(request, command, log, env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    output = finish(proc, log, 180)
    assert proc.returncode != 0 and script.exists(), output[-3000:]
    sbatch = script.read_text()
    for line in (
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --time=240",
        "#SBATCH --requeue",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --array=0-1%2",
    ):
        assert line in sbatch, (line, sbatch)
    assert "export TF_CPP_MIN_LOG_LEVEL=2" in sbatch and "submitit.core._submit" in sbatch
    assert not (runs / "mlflow.db").exists()  # nothing ran, nothing recorded


# ---------------------------------------------------------------- a shared server: PostgreSQL + served artifacts


@pytest.mark.slow
def test_sweep_against_a_postgres_backed_server_reads_back_and_hides_passwords(request, tmp_path, cache_dir, postgres):
    url, _ = mlflow_server(request, tmp_path, postgres["uri"], postgres["env"])
    assert listening_hosts(int(url.rsplit(":", 1)[1])) == {"127.0.0.1"}  # loopback only, by default
    user_url = url.replace("http://", "http://alice:s3cret-pw@")  # basic-auth credentials in the URI
    experiment = f"shared-{time.time_ns()}"  # a database given by $ABLATION_POSTGRES_URI may hold older ones
    status, output = run(
        request,
        tmp_path,
        "server-sweep",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "tracking=server",
        "dropout=0,0.5",
        "epochs=2",
        f"tracking.experiment={experiment}",
        *TINY,
        runs=tmp_path / "runs",
        cache=cache_dir,
        env={"MLFLOW_TRACKING_URI": user_url},
    )
    assert status == 0, output[-5000:]
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # everything went to the server

    client, parents, children = runs_by_role(url, experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 2
    assert sorted(r.data.params["dropout"] for r in children) == ["0.0", "0.5"]
    for child in children:
        assert child.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server, not a client path
        assert_complete(client, child, epochs=2)
        assert child.data.params["tracking.uri"] == url.replace("http://", "http://alice:***@")
        recorded = json.dumps([child.data.params, child.data.tags, child.info.run_name])
        config = Path(client.download_artifacts(child.info.run_id, "config.yaml", str(tmp_path))).read_text()
        assert "s3cret-pw" not in recorded + config and "alice:***@" in config
    # The artifacts are on the server's disk.
    assert len(list((tmp_path / "artifacts").rglob("model.keras"))) == 2
    # And the runs really are in PostgreSQL (our own cluster here): the server only fronts it.
    if postgres["psql"]:
        psql = [*json.loads(postgres["psql"]), "SELECT COUNT(*) FROM runs"]
        out = subprocess.run(psql, env={**os.environ, **postgres["env"]}, capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "3", out.stderr
