"""Scale-out: sweeps through Ray, submitit (local; SLURM's batch script) and a shared MLflow server on PostgreSQL.

Every process a test starts runs in its own session and is killed with its whole group when the test ends
(tests/processes.py); every wait has a bound.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import DATA_ROOT
from processes import (
    TINY,
    ablation,
    assert_complete,
    end_pids,
    finish,
    group_alive,
    job_runs,
    listening_hosts,
    mlflow_server,
    run,
    runs_by_role,
    spawn,
    sweep_folder,
    wait_for,
)

from ablation import tracking

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
    sweep_dir = sweep_folder(parent, runs)
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


@pytest.mark.slow
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
    assert "s3cret-pw" not in output  # MLflow's "View run at http://alice:...@" line is held back
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

    # Jobs that start together log the same datasets at the same moment: none may fail on the store's unique key.
    race = tracking.ensure_experiment(client, f"{experiment}-race", None)
    run_ids = [tracking.create_run(client, race, f"race-{i}", {}) for i in range(8)]
    splits = {"train": (f"{time.time_ns():016x}"[-16:], {"NORMAL": {"images": 1}, "PNEUMONIA": {"images": 1}})}
    start = threading.Barrier(len(run_ids))

    def log_at_once(run_id: str) -> None:
        start.wait(timeout=60)
        tracking.log_datasets(tracking.client(url), run_id, str(DATA_ROOT), splits)

    with ThreadPoolExecutor(len(run_ids)) as pool:
        list(pool.map(log_at_once, run_ids))  # re-raises a job's failure
    assert [len(client.get_run(r).inputs.dataset_inputs) for r in run_ids] == [1] * len(run_ids)
    for run_id in run_ids:
        client.set_terminated(run_id)
