"""A store that cannot be written, or two sweeps at once: no configuration trained twice, no record lost, no run left
RUNNING (`ablation.outbox`, the claim in `ablation.job`). Real processes, a real `mlflow server`, a real full disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from conftest import DATA_ROOT
from processes import (
    TINY,
    ablation,
    assert_complete,
    finish,
    free_port,
    job_runs,
    kill_group,
    listening_hosts,
    mlflow_server,
    spawn,
    sqlite_rows,
    wait_for,
)

from ablation.contract import CONFIG_HASH, ERROR, LATE
from ablation.outbox import replay

EPOCHS = 4


def _with_loss(client: mlflow.MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return [r for r in runs if client.get_metric_history(r.info.run_id, "loss")]


@pytest.mark.slow
def test_a_server_outage_loses_nothing_and_a_server_gone_for_good_leaves_no_run_running(request, tmp_path, cache_dir):
    """Two runs train through one server, which is killed once both have logged an epoch. One rides out a 40 s outage
    and ends complete; the other gives up 3 s after training and says where its records wait, and the next command,
    once a server is back, sends them: that run ends FINISHED too, complete, tagged with the outage."""
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    url, server = mlflow_server(request, tmp_path, backend)
    port = int(url.rsplit(":", 1)[1])
    assert listening_hosts(port) == {"127.0.0.1"}
    secret_url = url.replace("http://", "http://bob:hunter2-pw@")
    common = ["tracking=server", f"tracking.uri={secret_url}", "tracking.experiment=away", *TINY, f"epochs={EPOCHS}"]
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}  # a store call gives up in seconds: the outbox retries it
    ridden = spawn(request, ablation(*common, "seed=1", runs=tmp_path / "ridden", cache=cache_dir), tmp_path / "r.log")
    gone_args = [*common, "seed=2", "tracking.outage_wait_s=3"]
    gone = spawn(request, ablation(*gone_args, runs=tmp_path / "gone", cache=cache_dir), tmp_path / "g.log", env)
    client = mlflow.MlflowClient(url)
    wait_for(lambda: len(_with_loss(client, "away")) == 2, 300, "both runs logging epochs", tmp_path / "r.log", ridden)
    kill_group(server)  # SIGKILL: connections refused from now on
    killed_at = time.monotonic()

    # Gone for good: it trains to the end, waits 3 s, and says in one line what happened and where everything is.
    output = finish(gone, tmp_path / "g.log", 300)
    assert gone.returncode == 1, output[-3000:]
    assert "tracking server unreachable for" in output and "journal" in output, output[-3000:]
    assert "Traceback" not in output and "hunter2-pw" not in output, output[-3000:]
    [journal] = (tmp_path / "gone" / "journal").glob("*.jsonl")
    assert "hunter2-pw" not in journal.read_text()

    # Back after 40 s, on the same port and store: the other run sends what it kept and ends complete.
    time.sleep(max(0.0, 40 - (time.monotonic() - killed_at)))
    mlflow_server(request, tmp_path, backend, port=port)
    output = finish(ridden, tmp_path / "r.log", 300)
    assert ridden.returncode == 0, output[-3000:]
    [ridden_run] = [r for r in _with_loss(client, "away") if r.data.params["seed"] == "1"]
    assert_complete(client, ridden_run, EPOCHS)
    assert not list((tmp_path / "ridden" / "journal").glob("*.jsonl"))

    # The run whose job gave up: RUNNING in the store until the next command on that machine sends its journal.
    [gone_run] = [r for r in _with_loss(client, "away") if r.data.params["seed"] == "2"]
    assert gone_run.info.status == "RUNNING"
    log = tmp_path / "next.log"
    next_command = spawn(request, ablation(*gone_args, runs=tmp_path / "gone", cache=cache_dir), log)
    output = finish(next_command, log, 300)
    assert next_command.returncode == 0 and "skipped (already FINISHED as run" in output, output[-3000:]
    gone_run = client.get_run(gone_run.info.run_id)
    assert_complete(client, gone_run, EPOCHS)
    assert gone_run.data.tags[LATE].startswith("tracking server unreachable for"), gone_run.data.tags
    assert not journal.exists()
    assert "hunter2-pw" not in json.dumps([gone_run.data.params, gone_run.data.tags])


@pytest.fixture
def small_disk(request, tmp_path) -> Path:
    """A 6 MiB tmpfs: room for a fresh MLflow store and its first runs, filled at will (needs root, as CI has)."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], check=True)
    request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(mount)], check=False))
    return mount


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_a_full_disk_under_the_store_loses_nothing_and_leaves_no_run_running(request, tmp_path, cache_dir, small_disk):
    db = small_disk / "mlflow.db"
    args = [*TINY, f"epochs={EPOCHS}", f"tracking.uri=sqlite:///{db}", "tracking.outage_wait_s=3"]
    runs = tmp_path / "runs"  # the run's files and its journal: on another disk than the store
    log = tmp_path / "full.log"
    proc = spawn(request, ablation(*args, runs=runs, cache=cache_dir), log)
    losses = "SELECT COUNT(*) FROM metrics WHERE key = 'loss'"
    wait_for(lambda: (sqlite_rows(db, losses) or [(0,)])[0][0] >= 1, 300, "an epoch in the store", log, proc, 0.1)
    filler = _fill(small_disk)
    output = finish(proc, log, 300)
    assert proc.returncode == 1, output[-3000:]
    assert "store unwritable: disk full" in output and "journal" in output and "Traceback" not in output, output[-3000:]
    [run] = job_runs(db)
    assert run["status"] == "RUNNING" and run["losses"] < EPOCHS, run  # what the store could not take is journaled

    filler.unlink()  # room again: the next command sends the journal, then skips the configuration it finished
    log = tmp_path / "next.log"
    proc = spawn(request, ablation(*args, runs=runs, cache=cache_dir), log)
    output = finish(proc, log, 300)
    assert proc.returncode == 0 and "skipped (already FINISHED as run" in output, output[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    finished = client.get_run(run["run_id"])
    assert_complete(client, finished, EPOCHS)
    assert finished.data.tags[LATE].startswith("store unwritable: disk full"), finished.data.tags
    assert not list((runs / "journal").glob("*.jsonl"))


@pytest.mark.slow
def test_two_identical_sweeps_at_once_train_each_configuration_once(request, tmp_path, cache_dir):
    runs = tmp_path / "runs"
    sweep = ["-m", *TINY, "seed=0,1", "tracking.experiment=twice"]
    procs = [
        spawn(request, ablation(*sweep, f"hydra.sweep.dir={tmp_path / f'sweep{i}'}", runs=runs, cache=cache_dir), log)
        for i, log in enumerate([tmp_path / "a.log", tmp_path / "b.log"])
    ]
    outputs = [finish(proc, tmp_path / log, 600) for proc, log in zip(procs, ["a.log", "b.log"], strict=True)]
    assert [proc.returncode for proc in procs] == [0, 0], [o[-3000:] for o in outputs]
    client = mlflow.MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    jobs = [
        r
        for r in client.search_runs([client.get_experiment_by_name("twice").experiment_id])
        if CONFIG_HASH in r.data.tags
    ]
    # One run per configuration, each FINISHED; a run a claim race made was deleted, never trained.
    assert sorted(r.data.params["seed"] for r in jobs) == ["0", "1"], [(r.info.run_id, r.info.status) for r in jobs]
    assert {r.info.status for r in jobs} == {"FINISHED"} and not any(ERROR in r.data.tags for r in jobs)
    lines = [
        json.loads(line) for i in (0, 1) for line in (tmp_path / f"sweep{i}" / "jobs.jsonl").read_text().splitlines()
    ]
    assert sorted(line["status"] for line in lines) == ["FINISHED", "FINISHED", "SKIPPED", "SKIPPED"], lines
    assert {line["run_id"] for line in lines} == {r.info.run_id for r in jobs}
    # What a shared server would show everyone: the records name no folder of this machine (here /tmp and /work).
    for run in jobs:
        sources = [json.loads(i.dataset.source)["uri"] for i in client.get_run(run.info.run_id).inputs.dataset_inputs]
        assert sorted(sources) == ["chest_xray/test", "chest_xray/train", "chest_xray/train"], sources
        recorded = json.dumps([run.data.params, run.data.tags, run.info.run_name])
        assert str(tmp_path) not in recorded and str(DATA_ROOT.parent) not in recorded, run.data.params
        assert run.data.params["data.root"] == ".../chest_xray" and run.data.params["paths.runs"] == ".../runs"


def test_a_journal_whose_job_died_is_sent_by_the_next_command_torn_last_line_and_all(tmp_path):
    """A job killed while its store was away leaves a journal without its end, its last line cut short. The next
    command sends what it holds (not a record twice, nothing of the torn line), says why it was late, and leaves the
    run to the reaper; a journal whose job is alive is left alone."""
    away = f"http://127.0.0.1:{free_port()}"  # the store the job saw: nothing answers there
    runs = tmp_path / "runs"
    store = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")  # the store, back (here: another client of it)
    run_id = store.create_run(store.create_experiment("late")).info.run_id
    job = f"""
import os, time
from ablation.outbox import Outbox
from ablation.tracking import client
box = Outbox(client({away!r}), {away!r}, {run_id!r}, {str(runs)!r})
box.metrics({{"loss": 0.5}}, step=1)
box.metrics({{"loss": 0.25}}, step=2)
open(box.path, "a").write('{{"metrics": [["loss", 0.1')  # killed while writing a line
print("ready", flush=True)
time.sleep(30)
os._exit(9)
"""
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    alive = subprocess.Popen([sys.executable, "-c", job], env=env, stdout=subprocess.PIPE)
    try:
        assert alive.stdout.readline().strip() == b"ready"
        assert replay(store, away, runs) == []  # its job still holds it
    finally:
        alive.kill()
        alive.wait()
    assert replay(store, away, runs) == [run_id]
    assert [(m.step, m.value) for m in store.get_metric_history(run_id, "loss")] == [(1, 0.5), (2, 0.25)]
    run = store.get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags[LATE].startswith("its job died first; sent at ")
    assert not list((runs / "journal").iterdir())
