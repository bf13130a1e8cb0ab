"""The MLflow UI of the README, on a real 8-job study (the session's `loco_study`): its REST API and its runs
page, a run's datasets and the registered model in headless Chromium.

Starts `mlflow ui --backend-store-uri sqlite:///... --host 127.0.0.1 --port PORT` (the README's command on
a free port) and always stops it. Needs Debian's `chromium` (/usr/bin/chromium): without it this test
fails rather than skips. The screenshots are kept in runs/test-artifacts/ (git-ignored) for people to see.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import CHROMIUM, CHROMIUM_FLAGS, PROJECT
from PIL import Image

MLFLOW = Path(sys.executable).parent / "mlflow"
FLAGS = [
    *CHROMIUM_FLAGS,
    "--virtual-time-budget=15000",  # the page's API calls and rendering finish within it
    "--window-size=1400,900",
]
STARTUP_S = 90

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def mlflow_ui(loco_study, tmp_path_factory):
    """The UI's base URL; the server (its whole process group) is stopped whatever the test does."""
    assert MLFLOW.is_file(), f"{MLFLOW} missing: install the project's dependencies"
    port = _free_port()
    log = tmp_path_factory.mktemp("ui-log") / "mlflow-ui.log"
    command = [
        str(MLFLOW),
        "ui",
        "--backend-store-uri",
        loco_study["uri"],
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # No background job runner: this server only serves the UI, and the cores are busy.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:
        server = subprocess.Popen(
            command,
            cwd=loco_study["runs"].parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            assert server.poll() is None, f"mlflow ui exited {server.returncode}:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, f"mlflow ui not up after {STARTUP_S} s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield base
    finally:
        # The server's own process group: uvicorn and anything it started, and nothing else.
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: apt-get install -y chromium"
    done = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_ui_serves_the_sweep_and_renders_its_runs(mlflow_ui, tmp_path):
    query = urllib.parse.urlencode({"experiment_name": "loco"})
    experiment = _get(f"{mlflow_ui}/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]
    experiment_id = experiment["experiment_id"]
    found = _post(f"{mlflow_ui}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id], "max_results": 100})
    runs = found["runs"]
    roles = sorted(next(t["value"] for t in run["data"]["tags"] if t["key"] == "ablation.role") for run in runs)
    assert roles == ["job"] * 8 + ["sweep"]
    jobs = [r for r in runs if {"key": "ablation.role", "value": "job"} in r["data"]["tags"]]
    dropouts = set()
    for job in jobs:
        assert job["info"]["status"] == "FINISHED"
        metrics = {m["key"]: m["value"] for m in job["data"]["metrics"]}
        assert 0 <= metrics["test_auc"] <= 1 and "threshold" in metrics
        params = {p["key"]: p["value"] for p in job["data"]["params"]}
        dropouts.add(float(params["dropout"]))
    assert dropouts == {0.0, 0.5}  # the baseline's and the dropout-removed cell's

    # MLflow 3 opens an experiment on its GenAI overview; the runs table is the "Model training" view.
    # Filtering on a metric lists the eight jobs themselves, not their collapsed sweep parent.
    view = {
        "workflowType": "machine_learning",
        "searchFilter": "metrics.test_auc >= 0",
        "orderByKey": "metrics.`test_auc`",
        "orderByAsc": "false",
    }
    page = f"{mlflow_ui}/#/experiments/{experiment_id}/runs?{urllib.parse.urlencode(view)}"
    dom = _chromium(tmp_path / "profile-dom", "--dump-dom", page).stdout
    assert "<strong>8</strong> matching runs" in dom, dom[-3000:]
    assert "model=cnn, augmentation=flip, study=loco_tiny" in dom  # a job's run name: its overrides

    shot = tmp_path / "mlflow_ui.png"
    _chromium(tmp_path / "profile-shot", f"--screenshot={shot}", page)
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1400, 900)
        colours = image.convert("RGB").getcolors(1 << 24)
    assert len(colours) > 200, f"a near-blank page: {len(colours)} colours"
    _keep(shot, "mlflow_ui.png")


def _keep(shot: Path, name: str) -> None:
    keep = PROJECT / "runs" / "test-artifacts"
    try:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / name)
    except OSError:
        pass  # a read-only checkout still passes; the copy is only for people to look at


def test_ui_shows_a_runs_datasets_and_the_registered_champion(mlflow_ui, tmp_path):
    query = urllib.parse.urlencode({"experiment_name": "loco"})
    experiment_id = _get(f"{mlflow_ui}/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]["experiment_id"]
    query = urllib.parse.urlencode({"name": "loco-champion", "alias": "champion"})
    champion = _get(f"{mlflow_ui}/api/2.0/mlflow/registered-models/alias?{query}")["model_version"]
    run_page = f"{mlflow_ui}/#/experiments/{experiment_id}/runs/{champion['run_id']}"
    model_page = f"{mlflow_ui}/#/models/loco-champion"
    shown = {
        # the run's overview lists the datasets it used: the first by name and digest, then "+2" (val, test);
        # and the registered model it is a version of
        run_page: ["chest_xray-train (", "+2", "loco-champion"],
        # the registered model: its version, from the champion run, under its alias
        model_page: ["loco-champion", f"Version {champion['version']}", "champion"],
    }
    for number, (page, texts) in enumerate(shown.items()):
        dom = _chromium(tmp_path / f"profile-dom-{number}", "--dump-dom", page).stdout
        for text in texts:
            assert text in dom, (text, dom[-3000:])
        shot = tmp_path / f"page-{number}.png"
        _chromium(tmp_path / f"profile-shot-{number}", f"--screenshot={shot}", page)
        with Image.open(shot) as image:
            assert len(image.convert("RGB").getcolors(1 << 24)) > 200, "a near-blank page"
        _keep(shot, ["mlflow_run_datasets.png", "mlflow_registered_model.png"][number])


def test_the_link_a_sweep_prints_opens_its_runs_not_the_genai_overview(mlflow_ui, loco_study, tmp_path):
    """The end of every sweep prints the MLflow UI's link to its experiment's runs table; the framework tags the
    experiments it creates as model training (`mlflow.experimentKind`), which MLflow 3's UI honours."""
    from ablation.tracking import UI

    [link] = re.findall(r"open the sweep's runs: (\S+)", loco_study["done"].stdout)
    assert link.startswith(f"{UI}/#/experiments/") and link.endswith("/runs?workflowType=machine_learning")
    query = urllib.parse.urlencode({"experiment_name": "loco"})
    experiment = _get(f"{mlflow_ui}/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]
    assert f"/experiments/{experiment['experiment_id']}/" in link
    found = _post(f"{mlflow_ui}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})
    [parent] = [r for r in found["runs"] if {"key": "ablation.role", "value": "sweep"} in r["data"]["tags"]]

    page = link.replace(UI, mlflow_ui)  # the test's server listens on a free port, not 5000
    dom = _chromium(tmp_path / "profile-link", "--dump-dom", page).stdout
    assert parent["info"]["run_name"] in dom, dom[-3000:]  # the runs table, with the sweep's parent run
    assert "matching runs" in dom
    shot = tmp_path / "mlflow_ui_link.png"
    _chromium(tmp_path / "profile-link-shot", f"--screenshot={shot}", page)
    with Image.open(shot) as image:
        assert len(image.convert("RGB").getcolors(1 << 24)) > 200, "a near-blank page"
    _keep(shot, "mlflow_ui_link.png")
