"""The Python API (`ablation.api`, `analysis.api`) and the example notebook, on the real images at tiny settings."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import CHROMIUM, CHROMIUM_FLAGS, DATA_ROOT, PROJECT

from ablation import api
from analysis import api as analysis_api

pytestmark = pytest.mark.slow


def _where(runs: Path, cache: Path) -> list[str]:
    return [f"paths.runs={runs}", f"data.root={DATA_ROOT}", f"data.cache_dir={cache}", "experiment=tiny"]


def test_train_sweep_resume_and_the_report_are_the_command_lines(tmp_path, cache_dir):
    runs = tmp_path / "runs"
    where = _where(runs, cache_dir)

    one = api.train([*where, "tracking.experiment=api-one"], echo=False)
    assert one.status == "FINISHED" and 0 <= one.metrics["test_auc"] <= 1
    stored = mlflow.MlflowClient(one.tracking_uri).get_run(one.run_id)
    assert stored.data.metrics["test_auc"] == one.metrics["test_auc"]  # the run landed in the project's store
    assert stored.data.tags["ablation.role"] == "job"

    sweep = [*where, "dropout=0,0.5", "hydra.sweeper.seeds=2", "tracking.experiment=api"]
    done = api.sweep(sweep, echo=False)
    assert sorted(done.jobs["status"]) == ["FINISHED"] * 4 and done.parent_run_id
    assert done.ui_link.endswith("/runs?workflowType=machine_learning")
    again = api.sweep(sweep, echo=False)  # resume: a second call trains nothing
    assert sorted(again.jobs["status"]) == ["SKIPPED"] * 4
    assert set(again.jobs["run_id"]) == set(done.jobs["run_id"])

    study = analysis_api.load(sweep=done.parent_run_id, tracking_uri=done.tracking_uri)
    assert len(study.runs) == 4 and set(study.verdicts["verdict"]) <= {"better", "worse", "equivalent", "undecided"}
    report = study.report(tmp_path / "api-report")
    assert "<iframe srcdoc=" in report._repr_html_() and "<table" in report.html and report.headline
    cli = tmp_path / "cli-report"
    command = ["-m", "analysis", "report", "--sweep", done.parent_run_id, "--tracking-uri", done.tracking_uri]
    subprocess.run([sys.executable, *command, "--out", str(cli)], cwd=PROJECT, check=True, timeout=300)
    csvs = sorted(p.name for p in cli.glob("*.csv"))
    assert csvs and csvs == sorted(p.name for p in report.folder.glob("*.csv"))
    for name in csvs:  # the same tables, to the last digit
        pd.testing.assert_frame_equal(report.csv(name), pd.read_csv(cli / name), check_exact=True)
    shown = pd.read_csv(io.StringIO(study.ablation.to_csv(index=False)))  # the DataFrame, as its CSV file holds it
    pd.testing.assert_frame_equal(shown, pd.read_csv(cli / "ablation_table.csv"))


def test_the_example_notebook_runs_end_to_end_and_renders(tmp_path, monkeypatch):
    """examples/quickstart.ipynb executed headless (nbclient) at tiny settings, then rendered to HTML (nbconvert) and
    photographed in Chromium; the picture is kept in runs/test-artifacts/ for people to look at."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    notebook = nbformat.read(PROJECT / "examples" / "quickstart.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # stored without
    monkeypatch.setenv("ABLATION_NOTEBOOK_TINY", "1")  # the kernel inherits the environment
    monkeypatch.setenv("ABLATION_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(PROJECT)}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    texts = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "workflowType=machine_learning" in texts and "FINISHED" in texts
    htmls = "".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert "<iframe srcdoc=" in htmls  # the report, inline
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # X-rays, learning curves, Grad-CAM

    page = tmp_path / "quickstart.html"
    page.write_text(HTMLExporter().from_notebook_node(notebook)[0])
    shot = tmp_path / "quickstart.png"
    done = subprocess.run(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,4000",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0 and shot.stat().st_size > 50_000, done.stderr[-2000:]
    keep = PROJECT / "runs" / "test-artifacts"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep / "notebook_quickstart.png")
