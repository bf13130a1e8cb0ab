"""A sweep with the joblib launcher: four jobs (dropout x two seeds) in four worker processes, one MLflow store,
one parent run, each job pinned to its own GPU of a (fake) four-GPU machine before its framework started; then
the end-of-sweep report on it, with intervals over the two seeds and the test images."""

from __future__ import annotations

import os

import mlflow
import pandas as pd
import pytest
from processes import TINY, run_ablation

from ablation.contract import DEVICES

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
def test_joblib_sweep_four_parallel_jobs_pinned_round_robin_then_the_report(tmp_path, cache_dir, monkeypatch):
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
        "dropout=0,0.5",
        "seed=0,1",
        "tracking.experiment=parallel",
        runs=runs,
        cache=cache_dir,
        report=True,
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
    # Job k saw GPU k of 4 (jobs in sweep order: dropout, then seed): pinned before TensorFlow started in its worker.
    cards = {(r.data.params["dropout"], r.data.params["seed"]): r.data.tags.get(DEVICES) for r in children}
    assert cards == {("0.0", "0"): "0", ("0.0", "1"): "1", ("0.5", "0"): "2", ("0.5", "1"): "3"}
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

    # The end-of-sweep report, built from the sweep's runs and logged to its parent run.
    (out,) = (runs / "reports").glob("parallel-*")
    assert f"Report: {out / 'report.html'}" in done.stdout
    assert "report/report.html" in {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    table = pd.read_csv(out / "ablation_table.csv")
    assert sorted(table.dropout) == [0.0, 0.5] and table.n.tolist() == [2, 2]
    assert {"test_auc_mean", "test_auc_ci_low", "test_auc_ci_high", "test_auc_boot_low"} <= set(table.columns)
    assert table.test_auc_ci_low.notna().all() and table.test_auc_boot_low.notna().all()
    for name in ("effects_table.csv", "ensemble_table.csv", "ensemble_effects.csv", "planning.csv"):
        assert len(pd.read_csv(out / name)) > 0, name
    # The best run's Grad-CAM panel (one network here, so no per-network panels) is shown in the report.
    panels = [p.name for p in out.glob("gradcam_*.png")]
    assert len(panels) == 1 and panels[0] in (out / "report.md").read_text()
    for name in ("report.md", "report.html", "learning_curves.png", "roc_curves.png", panels[0]):
        assert (out / name).stat().st_size > 0
