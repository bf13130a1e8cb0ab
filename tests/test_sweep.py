"""Sweeps run the way a user types them, as subprocesses, into a real MLflow store on real images."""

from __future__ import annotations

import mlflow
import pytest
from processes import run_ablation

SPEC_PARAMS = {
    "model",
    "dropout",
    "batchnorm",
    "augmentation",
    "class_weighting",
    "epochs",
    "seed",
    "batch_size",
    "data.image_size",
}
TEST_METRICS = {
    "test_accuracy",
    "test_precision",
    "test_recall",
    "test_specificity",
    "test_f1",
    "test_auc",
    "test_pr_auc",
    "num_params",
}
EPOCH_METRICS = ("loss", "val_loss", "accuracy", "val_accuracy", "val_auc")
ARTIFACTS = {
    "learning_curves.png",
    "confusion_matrix.png",
    "roc_curve.png",
    "gradcam_panel.png",
    "model_summary.txt",
    "config.yaml",
    "data_record.json",
    "test_predictions.csv",
    "val_predictions.csv",
}
TINY = ["experiment=tiny"]


def _runs(runs_dir, experiment):
    client = mlflow.MlflowClient(f"sqlite:///{runs_dir}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id]) if exp else []


@pytest.mark.slow
def test_sweep_logs_four_complete_runs_then_resumes(tmp_path, cache_dir):
    runs = tmp_path / "runs"
    command = ["-m", "model=cnn,resnet18", "dropout=0,0.5", *TINY, "tracking.experiment=sweep"]
    done = run_ablation(*command, runs=runs, cache=cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]

    client, all_runs = _runs(runs, "sweep")
    parents = [r for r in all_runs if r.data.tags.get("ablation.role") == "sweep"]
    children = [r for r in all_runs if r.data.tags.get("ablation.role") == "job"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4
    assert {(r.data.params["model"], r.data.params["dropout"]) for r in children} == {
        (m, d) for m in ("cnn", "resnet18") for d in ("0.0", "0.5")
    }
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert SPEC_PARAMS <= set(run.data.params) and run.data.params["epochs"] == "2"
        assert "optimizer.lr" in run.data.params and "hydra.overrides" in run.data.tags
        assert TEST_METRICS <= set(run.data.metrics)
        for key in EPOCH_METRICS:
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == [1, 2], key
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert ARTIFACTS <= names
        assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/model.keras"]
    # The end-of-sweep table: every job with its status and test AUC.
    assert done.stdout.count("FINISHED") == 4 and "test_auc" in done.stdout

    again = run_ablation(*command, runs=runs, cache=cache_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(_runs(runs, "sweep")[1]) == 5  # nothing new: no parent, no child
    assert again.stdout.count("SKIPPED") == 4


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep(tmp_path, cache_dir):
    from conftest import DATA_ROOT

    runs = tmp_path / "runs"
    args = ["-m", f"data.root={DATA_ROOT},{tmp_path}/missing", "model=cnn", *TINY, "tracking.experiment=failing"]
    done = run_ablation(*args, runs=runs, cache=cache_dir)
    assert done.returncode != 0
    assert "REFUSED" in done.stdout and f"{tmp_path}/missing" in done.stdout
    _, all_runs = _runs(runs, "failing")
    children = [r for r in all_runs if r.data.tags.get("ablation.role") == "job"]
    assert [r.info.status for r in children] == ["FINISHED"]  # the refused job left no run behind
    parent = next(r for r in all_runs if r.data.tags.get("ablation.role") == "sweep")
    assert parent.info.status == "FAILED"
