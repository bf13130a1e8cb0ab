"""The report at the end of a sweep: `SweepReport`, a Hydra callback listed in `conf/hydra/default.yaml` after the
training side's `SweepSummary`. Hydra ends a sweep's callbacks in reverse order, so the report is built (and
logged to the sweep's parent run) before the summary ends the parent run and sets the exit status.

It reads only what the sweep left in its folder (`ablation.contract.PARENT_FILE`) and the MLflow store: the
training side never imports the analysis.

Ctrl-C (or SIGTERM, SIGHUP) during the report ends the parent run KILLED (`error`: the report was interrupted) and
the sweep with one line and exit status 130: Hydra passes a callback's KeyboardInterrupt on as a traceback, and the
summary, which would end the parent, never runs after it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ablation import interrupts, tracking
from ablation.contract import PARENT_FILE, redact
from analysis.runs import NotLogged

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """Build the report of the sweep's runs and log it to the parent run; a failure is printed, never raised; an
    interrupt ends the parent KILLED and the sweep with exit status 130."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        record = Path(config.hydra.sweep.dir) / PARENT_FILE
        dry_run = OmegaConf.select(config, "hydra.sweeper.dry_run", default=False)
        if dry_run or not config.tracking.report or not record.exists():
            return
        parent = json.loads(record.read_text())
        retry = f"python -m analysis report --sweep {parent['run_id']}"
        with interrupts.installed():  # as the jobs take them, also where they ran in other processes
            self._report(config, parent, retry)

    def _report(self, config: DictConfig, parent: dict, retry: str) -> None:
        try:
            print(f"\nBuilding the report of sweep {parent['run_id']} (Ctrl-C stops it; the runs are kept)", flush=True)
            from analysis.report import build_report, default_out  # matplotlib and scipy: only when a sweep ends
            from analysis.runs import load_study
            from analysis.sections import duplicates_line

            study = load_study(parent["tracking_uri"], sweep=parent["run_id"], runs_dir=Path(config.paths.runs))
            out = default_out(study, Path(config.paths.runs))
            margins = dict(OmegaConf.select(config, "verdict.margins", default={}) or {})
            written = build_report(study, out, margins=margins)
        except KeyboardInterrupt as interrupt:
            _interrupted(parent, interrupt, retry)
        except NotLogged as error:  # a read-only store: the report is there, only not on the parent run
            print(f"\nReport: {out / 'report.html'}; {redact(str(error))}. Log it with: {retry}")
            return
        except Exception as error:
            log.exception("report not built")
            print(
                f"\nReport not built ({redact(f'{type(error).__name__}: {error}')}); the runs are kept. Retry with: "
                f"{retry}"
            )
            return
        if line := duplicates_line(study.duplicates):
            print(line)
        print(f"\nReport: {out / 'report.html'} (logged to run {parent['run_id']} under report/)\n{written.headline}")


def _interrupted(parent: dict, interrupt: KeyboardInterrupt, retry: str) -> None:
    """End the parent run KILLED with why, say so in one line and end the sweep (exit 130), never a traceback."""
    interrupts.take()  # handled here: the store calls that end the parent must not raise it again
    why = f"report interrupted ({str(interrupt) or 'Ctrl-C'}); the runs are kept"
    ended = "interrupted again"
    try:
        with interrupts.held():  # a second Ctrl-C waits for the parent's end; a third stops at once
            ended = tracking.end_run(tracking.client(parent["tracking_uri"]), parent["run_id"], "KILLED", why)
    except KeyboardInterrupt:
        interrupts.take()
    interrupts.forget()
    state = "ended KILLED" if ended is True else f"not ended ({ended})"
    print(f"\nSweep {why}; parent run {parent['run_id']} {state}. Report with: {retry}", flush=True)
    raise SystemExit(interrupts.EXIT_STATUS)
