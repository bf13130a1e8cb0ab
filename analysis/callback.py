"""The report at the end of a sweep: `SweepReport`, a Hydra callback listed in `conf/hydra/default.yaml` after the
training side's `SweepSummary`. Hydra ends a sweep's callbacks in reverse order, so the report is built (and
logged to the sweep's parent run) before the summary ends the parent run and sets the exit status.

It reads only what the sweep left in its folder (`ablation.contract.PARENT_FILE`) and the MLflow store: the
training side never imports the analysis.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ablation.contract import PARENT_FILE, redact

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """Build the report of the sweep's runs and log it to the parent run; a failure is printed, never raised."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        record = Path(config.hydra.sweep.dir) / PARENT_FILE
        dry_run = OmegaConf.select(config, "hydra.sweeper.dry_run", default=False)
        if dry_run or not config.tracking.report or not record.exists():
            return
        parent = json.loads(record.read_text())
        try:
            from analysis.report import build_report, default_out  # matplotlib and scipy: only when a sweep ends
            from analysis.runs import load_study

            study = load_study(parent["tracking_uri"], sweep=parent["run_id"])
            out = default_out(study, Path(config.paths.runs))
            margins = dict(OmegaConf.select(config, "verdict.margins", default={}) or {})
            written = build_report(study, out, margins=margins)
        except Exception as error:
            log.exception("report not built")
            print(
                f"\nReport not built ({redact(f'{type(error).__name__}: {error}')}); the runs are kept. Retry with: "
                f"python -m analysis report --sweep {parent['run_id']}"
            )
            return
        print(f"\nReport: {out / 'report.html'} (logged to run {parent['run_id']} under report/)\n{written.headline}")
