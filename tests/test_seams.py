"""The seams between the project's packages, read from the source: no import loops, analysis imports only the
contract, the metric definitions and the store's plumbing from training (`scripts/imports.py`), training never imports
the analysis or the plugin, the plugin
starts light, and each shared name has one home."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import PROJECT, compose_config

sys.path.insert(0, str(PROJECT / "scripts"))
import imports  # noqa: E402  (scripts/imports.py: the import graph)

from ablation import contract, metrics  # noqa: E402


def test_no_module_imports_itself_back():
    assert imports.loops(imports.graph()) == []


def test_analysis_reads_training_only_through_the_contract():
    graph = imports.graph()
    assert imports.wrong_way(graph) == []
    for module, targets in graph.items():
        if module.startswith("analysis"):
            assert {t for t in targets if t.startswith("ablation")} <= imports.ANALYSIS_MAY_IMPORT, module
        if module.startswith("ablation."):
            assert not {t for t in targets if t.startswith(("analysis", "hydra_plugins"))}, module


def test_the_checker_sees_a_loop_and_a_wrong_way_import():
    """The two rules above could pass by seeing nothing: fed a made-up graph, they find what is there."""
    made_up = {"analysis.a": {"ablation.data"}, "ablation.b": {"ablation.c"}, "ablation.c": {"ablation.b"}}
    assert imports.loops(made_up) == [["ablation.b", "ablation.c"]]
    assert imports.wrong_way(made_up) == ["analysis.a -> ablation.data"]


HEAVY = ("pandas", "mlflow", "statsmodels", "tensorflow", "keras", "sklearn", "scipy")


def loaded_by(statement: str) -> list[str]:
    """The heavy libraries a fresh interpreter has loaded after `statement`."""
    code = f"import json, sys; {statement}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def test_importing_the_sweeper_plugin_loads_no_heavy_library():
    """Hydra imports every installed plugin on every start (each run, each tab completion)."""
    assert loaded_by("import hydra_plugins.study_sweeper.study_sweeper, hydra_plugins.study_sweeper.config") == []


def test_the_contract_derives_the_metric_names_and_loads_no_framework():
    assert contract.TEST_METRICS == tuple(f"test_{name}" for name in metrics.METRICS)
    assert loaded_by("import ablation.contract") == []
    assert "mlflow" in loaded_by("import ablation.tracking")  # the probe sees what is loaded


def test_the_default_store_is_where_conf_paths_puts_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose_config(f"paths.root={tmp_path}")
    assert cfg.tracking.uri == contract.default_tracking_uri(tmp_path)
    assert cfg.paths.runs == str(tmp_path / contract.RUNS_DIR)


def test_shared_names_are_written_once():
    """Tag names, the metric names and the default threshold are spelt only in the contract."""
    tags = r"[\"']ablation\.(role|config_hash|heartbeat)[\"']|mlflow\.parentRunId"
    threshold = r"threshold=0\.5|fillna\(0\.5\)|get\([^)]*, 0\.5\)|binary_metrics\([^)]*0\.5\)"
    spelt = re.compile(rf"{tags}|[\"']test_pr_auc[\"']|{threshold}")
    for folder in ("ablation", "analysis", "hydra_plugins", "benchmarks"):
        for path in sorted((PROJECT / folder).rglob("*.py")):
            if path.name != "contract.py":
                found = [line for line in path.read_text().splitlines() if spelt.search(line) and "#" not in line]
                assert found == [], path
