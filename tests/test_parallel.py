"""A sweep with the joblib launcher: two jobs in two worker processes, one MLflow store, one parent run."""

from __future__ import annotations

import mlflow
import pytest
from conftest import run_ablation

TEST_METRICS = {
    "test_accuracy",
    "test_precision",
    "test_recall",
    "test_specificity",
    "test_f1",
    "test_auc",
    "test_pr_auc",
}


@pytest.mark.slow
def test_joblib_sweep_two_parallel_jobs_share_one_parent(tmp_path):
    runs = tmp_path / "runs"
    done = run_ablation(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "model=cnn",
        "dropout=0,0.5",
        "data.image_size=32",
        "data.max_train_per_class=32",
        "epochs=2",
        "tracking.experiment=parallel",
        runs=runs,
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
    assert len(all_runs) == 3 and len(children) == 2
    assert sorted(r.data.params["dropout"] for r in children) == ["0.0", "0.5"]
    # Two different processes ran them: the launcher really ran the jobs in parallel workers.
    assert len({r.data.tags["ablation.pid"] for r in children}) == 2
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert TEST_METRICS <= set(run.data.metrics)
        for key in ("loss", "val_auc"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == [1, 2], key
