"""A sweep with the joblib launcher: four jobs in four worker processes, one MLflow store, one parent run, and
each job pinned to its own GPU of a (fake) four-GPU machine before its framework started."""

from __future__ import annotations

import os

import mlflow
import pytest
from processes import TINY, run_ablation

from ablation.job import DEVICES_TAG

TEST_METRICS = {
    "test_accuracy",
    "test_precision",
    "test_recall",
    "test_specificity",
    "test_f1",
    "test_auc",
    "test_pr_auc",
}
# What `nvidia-smi -L` prints on a machine with four GPUs.
FAKE_NVIDIA_SMI = """#!/bin/sh
[ "$1" = "-L" ] || exit 1
for i in 0 1 2 3; do echo "GPU $i: NVIDIA H200 (UUID: GPU-00000000-0000-0000-0000-00000000000$i)"; done
"""


@pytest.mark.slow
def test_joblib_sweep_four_parallel_jobs_share_one_parent_each_pinned_to_a_gpu(tmp_path, cache_dir, monkeypatch):
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(FAKE_NVIDIA_SMI)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    runs = tmp_path / "runs"
    done = run_ablation(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
        *TINY,
        "seed=0,1,2,3",
        "tracking.experiment=parallel",
        runs=runs,
        cache=cache_dir,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    client = mlflow.MlflowClient(f"sqlite:///{runs}/mlflow.db")
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert [e.name for e in experiments] == ["parallel"]
    all_runs = client.search_runs([experiments[0].experiment_id])
    parents = [r for r in all_runs if r.data.tags.get("ablation.role") == "sweep"]
    children = [r for r in all_runs if r.data.tags.get("ablation.role") == "job"]
    assert len(parents) == 1, [r.info.run_id for r in parents]
    assert parents[0].info.status == "FINISHED"
    assert len(all_runs) == 5 and len(children) == 4
    # Four different processes ran them: the launcher really ran the jobs in parallel workers.
    assert len({r.data.tags["ablation.pid"] for r in children}) == 4
    # Job k (seed k here) saw GPU k of 4: pinned round-robin before TensorFlow started in its worker.
    assert {r.data.params["seed"]: r.data.tags.get(DEVICES_TAG) for r in children} == {str(k): str(k) for k in range(4)}
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert TEST_METRICS <= set(run.data.metrics)
        for key in ("loss", "val_auc"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == [1, 2], key
        # The kept epoch's validation AUC, logged once: what the entry point returns to an optimising sweeper.
        kept = int(run.data.metrics["best_epoch"])
        val_auc = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "val_auc"), key=lambda m: m.step)]
        assert run.data.metrics["kept_val_auc"] == pytest.approx(val_auc[kept - 1])
