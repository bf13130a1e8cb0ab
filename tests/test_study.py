"""Studies run the way a user types them (`python -m ablation -m study=...`), as subprocesses, into a real MLflow
store on the real images: the leave-one-component-out and one-factor-at-a-time designs, seeds until the
interval is narrow, the dry run, resume, a failing configuration, and the report on the parent run."""

from __future__ import annotations

import json
import re

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import DATA_ROOT, ROUND_OFF, study_args
from processes import assert_mlflow_model, run_ablation

pytestmark = pytest.mark.slow

SPEC_PARAMS = {"model", "dropout", "batchnorm", "augmentation", "class_weighting", "epochs", "seed", "batch_size"}
TEST_METRICS = {"test_accuracy", "test_precision", "test_recall", "test_specificity", "test_f1", "test_auc"}
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
STOPPED_FAILED = "stop: no job finished"
# The loco_tiny study's components (tests/conf/study/loco_tiny.yaml): the params each one's removal changes.
COMPONENTS = {"dropout": {"dropout"}, "flip": {"augmentation"}, "batchnorm": {"batchnorm"}}


def _runs(uri: str, experiment: str) -> tuple[mlflow.MlflowClient, list, list]:
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    by_role = lambda role: [r for r in runs if r.data.tags.get("ablation.role") == role]  # noqa: E731
    return client, by_role("sweep"), by_role("job")


def _design(client: mlflow.MlflowClient, parent_id: str, tmp_path) -> dict:
    return json.loads(open(client.download_artifacts(parent_id, "design/design.json", str(tmp_path))).read())


def test_loco_runs_the_baseline_and_each_removal_per_seed_and_logs_its_report(loco_study, tmp_path):
    done = loco_study["done"]
    assert done.returncode == 0, done.stderr[-3000:]
    client, parents, jobs = _runs(loco_study["uri"], loco_study["experiment"])
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(jobs) == (1 + 3) * 2

    design = _design(client, parents[0].info.run_id, tmp_path)
    assert design["design"] == "loco"
    by_run = {job["run_id"]: cell["label"] for cell in design["cells"] for job in cell["jobs"]}
    params = {r.info.run_id: r.data.params for r in jobs}
    baseline = {params[r]["seed"]: params[r] for r, label in by_run.items() if label == "baseline"}
    assert sorted(baseline) == ["0", "1"]
    for run_id, label in by_run.items():
        if label == "baseline":
            continue
        component = label.removeprefix("-")
        changed = {k for k, v in params[run_id].items() if baseline[params[run_id]["seed"]].get(k) != v}
        assert {k.split(".")[0] for k in changed} == COMPONENTS[component], (label, changed)

    for run in jobs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert SPEC_PARAMS <= set(run.data.params) and run.data.params["epochs"] == "1"
        assert TEST_METRICS <= set(run.data.metrics) and "hydra.overrides" in run.data.tags
    first = jobs[0].info.run_id
    for key in EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(first, key)] == [1], key
    assert ARTIFACTS <= {a.path for a in client.list_artifacts(first)}
    assert_mlflow_model(client, first)

    # The end-of-sweep table, then the report: built, logged to the parent run, its path and headline printed.
    rows = [line for line in done.stdout.splitlines() if " FINISHED " in line and not line.startswith("[")]
    assert len(rows) == 8 and "test_auc" in done.stdout
    assert "Report: " in done.stdout and "Leave one component out: Verdicts (each comparison judged" in done.stdout
    assert "removing " in done.stdout.split("Leave one component out: Verdicts")[1]  # the cells, by their verdict
    report = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/design_effects.csv"} <= report
    table = pd.read_csv(client.download_artifacts(parents[0].info.run_id, "report/design_effects.csv", str(tmp_path)))
    auc = table[table["metric"] == "test_auc"]
    assert set(auc["cell"]) == {"-dropout", "-flip", "-batchnorm"} and (auc["pairs"] == 2).all()
    assert auc["boot_low"].le(auc["diff"]).all() and auc["diff"].le(auc["boot_high"]).all()
    assert set(auc["verdict"]) <= {"better", "worse", "equivalent", "undecided"}
    markdown = open(client.download_artifacts(parents[0].info.run_id, "report/report.md", str(tmp_path))).read()
    assert "## Leave one component out" in markdown


def test_each_run_carries_its_datasets_system_metrics_and_mlflow_model_and_the_best_is_registered(loco_study, tmp_path):
    import mlflow.pyfunc

    from ablation import predict
    from ablation.data import decode_image, files_digest

    done = loco_study["done"]
    client, parents, jobs = _runs(loco_study["uri"], loco_study["experiment"])
    output = done.stdout + done.stderr
    # Progress: each job starts with [k/N] and its overrides, and ends with its status, time and what is left.
    for k in range(1, 9):
        assert f"[{k}/8] " in output, output[-3000:]
    assert re.search(r"\[\d/8\] FINISHED in \d+s; about \S+ left for the sweep \(\d of 8 runs done\)", output)
    assert output.count("decoding 624 images at 32 px") <= 1  # a cold cache: one line, then every job reuses it

    def files(run_id: str, split: str) -> list[str]:  # the split's images, in the run's order
        return list(pd.read_csv(client.download_artifacts(run_id, f"{split}_predictions.csv", str(tmp_path))).file)

    predictions = {r.info.run_id: {split: files(r.info.run_id, split) for split in ("val", "test")} for r in jobs[:2]}
    for run in jobs:
        # The splits as MLflow datasets: the digest resume uses, the folder, the images per class.
        inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
        assert set(inputs) == {"train", "val", "test"}
        for split, dataset in inputs.items():
            files = predictions.get(run.info.run_id, {}).get(split)
            assert dataset.name == f"chest_xray-{split}" and len(dataset.digest) == 16
            if files is not None:  # the digest of the split's own files, as resume's of the folder
                assert dataset.digest == files_digest([DATA_ROOT / f for f in files], DATA_ROOT)
            assert json.loads(dataset.source)["uri"] == "chest_xray/" + ("test" if split == "test" else "train")
            profile = json.loads(dataset.profile)
            for cls in ("normal", "pneumonia"):
                assert profile[cls]["images"] == run.data.metrics[f"data_{split}_{cls}_images"]
        # MLflow's system metrics, sampled every second (tracking.system_metrics_s=1).
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)

    # The MLflow model gives the probabilities the run logged for its test images, through pyfunc.
    run = jobs[0]
    model = mlflow.pyfunc.load_model(client.download_artifacts(run.info.run_id, "model", str(tmp_path)))
    assert model.metadata.get_input_schema().inputs[0].shape == (-1, 32, 32, 1)
    logged = pd.read_csv(client.download_artifacts(run.info.run_id, "test_predictions.csv", str(tmp_path)))
    images = np.stack([decode_image(DATA_ROOT / f, 32) for f in logged.file[:6]])[..., None].astype(np.float32)
    np.testing.assert_allclose(np.asarray(model.predict(images)).ravel(), logged.probability[:6], atol=ROUND_OFF)

    # The best run on validation is the registered champion, and predict takes it by its alias.
    kept = {r.info.run_id: r.data.metrics["kept_val_auc"] for r in jobs}
    champion = client.get_model_version_by_alias("loco-champion", "champion")
    assert kept[champion.run_id] == max(kept.values())
    assert "Registered the best run by kept_val_auc as 'loco-champion'" in done.stdout
    out = tmp_path / "champion.csv"
    args = ["--model", "models:/loco-champion@champion", "--tracking-uri", loco_study["uri"], "--out", str(out)]
    assert predict.main([*args, *(str(DATA_ROOT / f) for f in logged.file[:2])]) == 0
    expected = pd.read_csv(client.download_artifacts(champion.run_id, "test_predictions.csv", str(tmp_path / "c")))
    np.testing.assert_allclose(pd.read_csv(out).probability, expected.probability[:2], atol=ROUND_OFF)


def test_a_finished_study_is_skipped_and_a_dry_run_writes_nothing(loco_study):
    runs = loco_study["runs"]
    sweeps_before = sorted(runs.glob("sweeps/*/*"))
    dry = run_ablation(*study_args("loco_tiny"), "hydra.sweeper.dry_run=true", runs=runs, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "Dry run (loco): 8 jobs planned" in dry.stdout and dry.stdout.count("FINISHED (") == 8
    assert sorted(runs.glob("sweeps/*/*")) == sweeps_before

    again = run_ablation(*study_args("loco_tiny"), runs=runs, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("] SKIPPED in ") == 8  # each job's progress line
    _, parents, jobs = _runs(loco_study["uri"], loco_study["experiment"])
    assert (len(parents), len(jobs)) == (1, 8)  # nothing new: no parent, no run


def test_one_at_a_time_with_auto_seeds_and_a_refused_configuration(tmp_path, cache_dir):
    runs = tmp_path / "runs"
    done = run_ablation(*study_args("oaat_tiny"), runs=runs, cache=cache_dir)
    assert done.returncode == 1, done.stderr[-3000:]  # the refused configuration fails the sweep
    assert "REFUSED" in done.stdout and "dropout=1.5" in done.stdout
    assert "Seeds, round 1" in done.stdout and "Seeds, round 2" in done.stdout

    client, parents, jobs = _runs(f"sqlite:///{runs}/mlflow.db", "oaat")
    assert all(r.info.status == "FINISHED" for r in jobs)
    seeds = {}
    for run in jobs:
        seeds.setdefault(run.data.params["dropout"], set()).add(run.data.params["seed"])
    # The baseline (dropout 0.5) and its one other trainable level, each at max_seeds; 1.5 left no run.
    assert seeds == {"0.5": {"0", "1", "2"}, "0.0": {"0", "1", "2"}}
    assert parents[0].info.status == "FAILED"
    assert not list(
        client.list_artifacts(parents[0].info.run_id, "report")
    )  # tracking.report=false (the tests' default)

    design = _design(client, parents[0].info.run_id, tmp_path)
    assert [cell["label"] for cell in design["cells"]] == ["baseline", "dropout=0", "dropout=1.5"]
    assert design["alpha"] == pytest.approx(0.05 / 2)  # two looks planned: 2 seeds, then 3
    first, second = design["rounds"]
    assert (first["seeds"], first["decision"]) == (2, "another seed")  # two tiny seeds decide nothing
    assert [c["comparison"] for c in first["comparisons"]] == ["dropout=0"]  # the refused cell has no run
    assert first["comparisons"][0]["verdict"] == "undecided" and first["comparisons"][0]["seeds"] == 2
    assert (second["seeds"], second["decision"]) in ((3, "stop: at max_seeds"), (3, "stop: every comparison decided"))
