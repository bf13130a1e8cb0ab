"""report.html of `python -m analysis report` in headless Chromium: every image decodes, tables render.

Needs Debian's `chromium` package (/usr/bin/chromium); without it this test fails rather than skips.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from analysis_helpers import ROOT, shared_cli_report
from conftest import CHROMIUM, CHROMIUM_FLAGS
from processes import run_command

pytestmark = pytest.mark.slow  # Chromium and `python -m analysis report` as subprocesses

FLAGS = [
    *CHROMIUM_FLAGS,
    "--virtual-time-budget=5000",  # lets the load event (and the report's image check) fire
]


def _chromium(tmp_path: Path, *args: str) -> str:
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: apt-get install -y chromium"
    result = run_command([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return shared_cli_report(tmp_path_factory) / "report.html"


def test_images_load_and_tables_render(report, tmp_path):
    dom = _chromium(tmp_path, "--dump-dom", report.as_uri())
    loaded = re.search(r'<body[^>]*data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded, "the report's load script did not run"
    ok, total = map(int, loaded.groups())
    assert total == 4 and ok == total
    assert dom.count("<table") >= 6
    for header in (
        "<th>model</th>",
        "<th>dropout</th>",
        "<th>ROC AUC</th>",
        "<th>PR AUC</th>",
        "<th>error</th>",
    ):
        assert header in dom, header
    assert "Best configuration</strong> (chosen on validation" in dom and "Verdicts</strong>" in dom


def test_screenshot(report, tmp_path):
    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri())
    assert shot.stat().st_size > 20_000  # a blank page is a few kB
    keep = ROOT / "runs" / "test-artifacts"
    try:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / "report.png")
    except OSError:
        pass  # a read-only checkout still passes; the copy is only for people to look at
