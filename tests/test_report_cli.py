"""The report against a real store of real runs: duplicates of one configuration, data and seed counted once,
Ctrl-C during the end-of-sweep report and during `python -m analysis report`, and `--no-log` on a read-only store.

One store for the module: a sweep of seeds 0 and 1, then the same seed 0 again (`tracking.skip_finished=false`:
a duplicate), whose end-of-sweep report is stopped by Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from processes import TINY, ablation, finish, run_ablation, run_module, runs_by_role, spawn, wait_for

from ablation.contract import CONFIG_HASH, ERROR
from analysis import api
from analysis.runs import load_study

pytestmark = pytest.mark.slow  # real trainings and report processes

EXPERIMENT = "pneumonia-ablation"  # the default `tracking.experiment`
# A runner started in the background passes SIGINT on as ignored, and Python then never takes Ctrl-C: as a terminal.
CTRL_C = {"preexec_fn": lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)}


@pytest.fixture(scope="module")
def store(request, tmp_path_factory, cache_dir) -> dict:
    runs = tmp_path_factory.mktemp("duplicates") / "runs"
    first = run_ablation("-m", *TINY, "seed=0,1", runs=runs, cache=cache_dir)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    log = runs.parent / "interrupted-sweep.log"
    again = ablation("-m", *TINY, "seed=0", "tracking.skip_finished=false", runs=runs, cache=cache_dir, report=True)
    proc = spawn(request, again, log, **CTRL_C)
    wait_for(lambda: "Building the report" in log.read_text(), 300, "the report starting", log, proc, interval=0.05)
    os.killpg(proc.pid, signal.SIGINT)
    output = finish(proc, log, 120)
    uri = f"sqlite:///{runs}/mlflow.db"
    client, parents, jobs = runs_by_role(uri, EXPERIMENT)
    return {
        "runs": runs,
        "uri": uri,
        "client": client,
        "parents": sorted(parents, key=lambda r: r.info.start_time),  # the first sweep's, then the interrupted one's
        "jobs": sorted(jobs, key=lambda r: r.info.start_time),  # seed 0, seed 1, seed 0 again
        "interrupted": (proc.returncode, output),
    }


def _running(store) -> list[str]:
    return [
        r.info.run_id
        for r in store["client"].search_runs([store["parents"][0].info.experiment_id])
        if r.info.status == "RUNNING"
    ]


def test_ctrl_c_during_the_end_of_sweep_report_ends_the_parent_killed_in_one_line(store):
    code, output = store["interrupted"]
    assert code == 130, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    said = [line for line in output.splitlines() if "report interrupted" in line]
    parent = store["client"].get_run(store["parents"][1].info.run_id)
    assert len(said) == 1 and parent.info.run_id in said[0] and "KILLED" in said[0], output[-3000:]
    assert parent.info.status == "KILLED"
    assert parent.data.tags[ERROR].startswith("report interrupted (Ctrl-C)")
    assert store["jobs"][2].info.status == "FINISHED"  # the sweep's own run is kept
    assert _running(store) == []


def test_all_runs_keeps_one_run_per_configuration_data_and_seed_and_names_the_duplicates(store, tmp_path):
    old, seed1, new = store["jobs"]
    assert old.data.tags[CONFIG_HASH] == new.data.tags[CONFIG_HASH] != seed1.data.tags[CONFIG_HASH]
    out = tmp_path / "report"
    done = run_module(
        "analysis",
        "report",
        "--tracking-uri",
        store["uri"],
        "--all-runs",
        "--out",
        out,
        "--replicates",
        "100",
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "1 duplicate run(s) set aside" in done.stdout and old.info.run_id in done.stdout, done.stdout
    assert "(2 seeds;" in done.stdout  # not 3: the duplicate is no seed
    table = pd.read_csv(out / "ablation_table.csv")
    assert table["n"].tolist() == [2]
    aside = pd.read_csv(out / "duplicates.csv")
    assert aside["run_id"].tolist() == [old.info.run_id] and aside["kept_run_id"].tolist() == [new.info.run_id]
    for name in ("report.md", "report.html"):
        text = (out / name).read_text()
        assert "1 duplicate run(s) set aside" in text and "Duplicate runs set aside (1)" in text, name
        assert old.info.run_id in text.split("Duplicate runs set aside (1)")[1], name
    study = load_study(store["uri"], all_runs=True)
    assert sorted(study.finished["run_id"]) == sorted([seed1.info.run_id, new.info.run_id])
    assert study.duplicates["run_id"].tolist() == [old.info.run_id]
    view = api.load(tracking_uri=store["uri"], all_runs=True)
    assert view.duplicates["kept_run_id"].tolist() == [new.info.run_id]
    view.close()


def test_ctrl_c_during_the_report_command_exits_130_in_one_line_and_logs_nothing(request, store, tmp_path):
    parent = store["parents"][0].info.run_id
    log = tmp_path / "report.log"
    command = [
        sys.executable,
        "-m",
        "analysis",
        "report",
        "--tracking-uri",
        store["uri"],
        "--sweep",
        parent,
        "--out",
        str(tmp_path / "report"),
    ]
    proc = spawn(request, command, log, **CTRL_C)
    wait_for(lambda: "building the report" in log.read_text(), 120, "the report starting", log, proc, interval=0.05)
    os.killpg(proc.pid, signal.SIGINT)
    output = finish(proc, log, 60)
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    said = [line for line in output.splitlines() if "interrupted" in line]
    assert said == ["analysis report: interrupted (Ctrl-C); nothing was logged"], output
    assert store["client"].list_artifacts(parent, "report") == []
    assert store["client"].get_run(parent).info.status == "FINISHED"
    assert _running(store) == []


def _read_only(folder: Path) -> list[str]:
    """Make `folder` read-only; the command prefix under which that holds (as root: without the capabilities that
    override file permissions), checked for real."""
    subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("as root, a read-only store needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    probe = [*prefix, "sh", "-c", f'touch "{folder}/probe" || echo x >> "{folder}/mlflow.db"']
    assert subprocess.run(probe, capture_output=True).returncode != 0, "the store is still writable"
    return prefix


def test_no_log_writes_the_report_of_a_read_only_store_without_logging_it(store, tmp_path):
    parent = store["parents"][0].info.run_id
    runs = store["runs"]
    try:
        prefix = _read_only(runs)
        report = [sys.executable, "-m", "analysis", "report", "--tracking-uri", store["uri"], "--sweep", parent]
        report += ["--replicates", "100"]
        env = {"MPLCONFIGDIR": str(tmp_path / "mpl")}
        logged = subprocess.run(
            [*prefix, *report, "--out", str(tmp_path / "logged")],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, **env},
        )
        kept = subprocess.run(
            [*prefix, *report, "--out", str(tmp_path / "kept"), "--no-log"],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, **env},
        )
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(runs)], check=True)
    # Without --no-log: the files are written, then one line says the store would not take them.
    assert logged.returncode == 2 and "Traceback" not in logged.stderr, logged.stderr
    assert f"not logged to run {parent}" in logged.stderr and "--no-log" in logged.stderr, logged.stderr
    assert (tmp_path / "logged" / "report.html").exists()
    # With it: written, not logged, exit 0.
    assert kept.returncode == 0, kept.stderr
    assert f"not logged to run {parent} (--no-log)" in kept.stdout
    assert {"report.html", "report.md", "ablation_table.csv"} <= {p.name for p in (tmp_path / "kept").iterdir()}
    assert store["client"].list_artifacts(parent, "report") == []
