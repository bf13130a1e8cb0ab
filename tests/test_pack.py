"""Packed seeds (`hydra.sweeper.pack_seeds`, `pack.seeds`): several seeds of one configuration trained in one job,
each still a run of its own, on the real images at tiny settings."""

from __future__ import annotations

import json
import signal

import mlflow
import pandas as pd
import pytest

from ablation import workers
from ablation.contract import PACK
from hydra_plugins.study_sweeper._design import Cell
from hydra_plugins.study_sweeper.study_sweeper import StudySweeper
from tests.processes import (
    TINY,
    ablation,
    assert_complete,
    finish,
    group_alive,
    job_runs,
    kill_group,
    run,
    runs_by_role,
    spawn,
    sweep_folder,
    wait_for,
)
from tests.test_faults import hydra_job


def test_the_sweeper_packs_each_cells_seeds_and_never_two_cells():
    sweeper = StudySweeper(pack_seeds=3)
    a, b = Cell("a", ["epochs=1"]), Cell("b", ["epochs=2"])
    jobs = sweeper.jobs([(cell, seed) for cell in (a, b) for seed in range(4)])
    assert [(cell.label, seeds) for cell, seeds in jobs] == [("a", [0, 1, 2]), ("a", [3]), ("b", [0, 1, 2]), ("b", [3])]
    assert sweeper.job_overrides(a, [0, 1, 2]) == ["epochs=1", "seed=0", "pack.seeds=[0,1,2]"]
    assert sweeper.job_overrides(a, [3]) == ["epochs=1", "seed=3"]  # a pack of one is a lone job
    assert StudySweeper().jobs([(a, 0), (a, 1)]) == [(a, [0]), (a, [1])]  # no pack_seeds: a job per seed
    assert StudySweeper(pack_seeds=2).jobs([(a, None)]) == [(a, [None])]  # no seeds: nothing to pack


def test_workers_default_to_one_per_core_never_more_than_the_seeds(monkeypatch):
    monkeypatch.setattr(workers, "cores", lambda: 16)
    assert workers.plan("auto", 4) == (4, 4)
    assert workers.plan("auto", 32) == (16, 1)
    assert workers.plan(1, 8) == (1, 16)
    monkeypatch.setattr(workers, "cores", lambda: 2)
    assert workers.plan("auto", 4) == (2, 1)


@pytest.mark.slow
def test_a_packed_sweep_leaves_a_complete_run_per_seed_that_the_report_reads_as_lone_runs(request, tmp_path, cache_dir):
    """2 configurations x 4 seeds, packed by 4 in two workers: 8 complete child runs, each tagged with its pack, with
    its own files; the report counts 4 seeds a configuration; a second invocation trains nothing."""
    runs = tmp_path / "runs"
    args = ["-m", "epochs=1,2", "hydra.sweeper.seeds=4", "hydra.sweeper.pack_seeds=4", "tracking.experiment=packed"]
    status, output = run(request, tmp_path, "packed", *args, *TINY, runs=runs, cache=cache_dir, report=True)
    assert status == 0, output[-5000:]
    for chatter in ("I0000", "cuInit", "absl::InitializeLog", "system_metrics_monitor", "Downloading artifacts"):
        assert chatter not in output, chatter  # the console is quiet (`ablation.console`), workers and report too
    client, [parent], children = runs_by_role(f"sqlite:///{runs}/mlflow.db", "packed")
    assert len(children) == 8 and parent.info.status == "FINISHED"
    for child in children:
        epochs = int(child.data.params["epochs"])
        assert_complete(client, child, epochs)
        assert child.data.tags[PACK] == "0,1,2,3" and child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        seed = child.data.params["seed"]
        assert (
            child.data.tags["hydra.overrides"].endswith(f"seed={seed}")
            and "pack.seeds" not in child.data.tags["hydra.overrides"]
        )
    assert sorted((r.data.params["epochs"], r.data.params["seed"]) for r in children) == sorted(
        (e, s) for e in ("1", "2") for s in "0123"
    )
    assert len({r.data.tags["ablation.config_hash"] for r in children}) == 8  # the seed is part of a configuration
    sweep_dir = sweep_folder(parent, runs)
    design = json.loads((sweep_dir / "design.json").read_text())
    assert [sorted({j["job"] for j in cell["jobs"]}) for cell in design["cells"]] == [[0], [1]]
    assert all(j["status"] == "FINISHED" and j["run_id"] for cell in design["cells"] for j in cell["jobs"])
    assert "[2/2]" in output and "4 seeds" in output
    report = next((runs / "reports").glob("packed-*"))
    assert sorted(pd.read_csv(report / "ablation_table.csv")["n"].tolist()) == [4, 4]  # 4 seeds a configuration

    status, output = run(request, tmp_path, "again", *args, *TINY, runs=runs, cache=cache_dir)
    assert status == 0 and output.count("skipped (already FINISHED") == 8, output[-3000:]
    assert len(runs_by_role(f"sqlite:///{runs}/mlflow.db", "packed")[2]) == 8


@pytest.mark.slow
def test_a_seed_failing_inside_a_pack_leaves_the_others_finished_and_only_it_is_run_again(
    tmp_path, cache_dir, monkeypatch
):
    """In the job's process (pack.workers=1): seed 1's training raises; seeds 0 and 2 go on and end FINISHED. Run again
    without the fault, only seed 1 trains."""
    import ablation.job
    from ablation.job import run_job

    real = ablation.job._train_and_log

    def seed_1_fails(cfg, *args, **kwargs):
        if cfg.seed == 1:
            raise OSError("disk gone while writing seed 1's files")
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(ablation.job, "_train_and_log", seed_1_fails)
    overrides = ("tracking.experiment=failing", "pack.seeds=[0,1,2]", "pack.workers=1")
    with hydra_job(tmp_path, cache_dir, *overrides) as cfg:
        entry = run_job(cfg)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    experiment = client.get_experiment_by_name("failing").experiment_id
    first = {r.data.params["seed"]: r for r in client.search_runs([experiment])}
    assert {seed: r.info.status for seed, r in first.items()} == {"0": "FINISHED", "1": "FAILED", "2": "FINISHED"}
    assert first["1"].data.tags["error"] == "OSError: disk gone while writing seed 1's files"
    assert entry["seeds"] == [0, 1, 2] and entry["kept_val_auc"] is not None

    monkeypatch.setattr(ablation.job, "_train_and_log", real)
    with hydra_job(tmp_path, cache_dir, *overrides) as cfg:
        run_job(cfg)
    runs = client.search_runs([experiment])
    assert len(runs) == 4
    [rerun] = [r for r in runs if r.info.run_id not in {r.info.run_id for r in first.values()}]
    assert rerun.data.params["seed"] == "1" and rerun.info.status == "FINISHED"


@pytest.mark.slow
def test_ctrl_c_during_a_pack_ends_every_unfinished_seed_killed_and_leaves_no_worker(request, tmp_path, cache_dir):
    """Four seeds in two workers, far more epochs than they reach: Ctrl-C once the first epochs are logged. The two
    training seeds and the two waiting ones all end KILLED, the sweep's parent too, and no process is left."""
    runs = tmp_path / "runs"
    args = ["-m", "epochs=5000", "hydra.sweeper.seeds=4", "hydra.sweeper.pack_seeds=4", "tracking.experiment=ctrlc"]
    # As a terminal delivers Ctrl-C: SIGINT to the foreground process group, with Python's own handler in place.
    restore = {"preexec_fn": lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)}
    proc = spawn(request, ablation(*args, *TINY, runs=runs, cache=cache_dir), tmp_path / "ctrlc.log", **restore)
    db = runs / "mlflow.db"
    wait_for(lambda: len([r for r in job_runs(db) if r["losses"] >= 1]) >= 2, 400, "two seeds training", proc=proc)
    kill_group(proc, signal.SIGINT)
    output = finish(proc, tmp_path / "ctrlc.log", 120)
    assert proc.returncode != 0
    wait_for(lambda: not group_alive(proc.pid), 30, "the workers to end with their job", tmp_path / "ctrlc.log")
    client, [parent], children = runs_by_role(f"sqlite:///{db}", "ctrlc")
    assert parent.info.status == "KILLED"
    assert sorted(r.data.params.get("seed", "?") for r in children if r.info.status == "KILLED") == ["0", "1", "2", "3"]
    reasons = sorted(r.data.tags["error"] for r in children)
    assert reasons.count("interrupted (Ctrl-C)") == 2, reasons  # the two that were training
    assert reasons.count("interrupted (Ctrl-C, before this seed ended)") == 2, reasons  # the two waiting
    lines = [json.loads(line) for line in (sweep_folder(parent, runs) / "jobs.jsonl").open()]
    assert sorted(line["seed"] for line in lines if line["status"] == "KILLED") == [0, 1, 2, 3], output[-3000:]
