"""A study from Python, for a notebook: its tables as pandas DataFrames, its figures, and the report inline.

    from analysis import api
    study = api.load(experiment="quickstart")          # the experiment's latest sweep (or sweep=PARENT_RUN_ID)
    study.verdicts                                     # each comparison: seeds, difference, 95% interval, verdict
    study.ablation, study.effects, study.planning      # the report's tables, as its CSV files hold them
    study.learning_curves()                            # a matplotlib figure
    study.report()                                     # the whole report: shown inline in Jupyter; .files, .folder
    study.duplicates                                   # finished runs set aside: a newer one has their configuration

Everything comes from `analysis.report`, the code `ablation-report report` runs: the same tables, the same files.
"""

from __future__ import annotations

import html
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from ablation.contract import quiet_environment
from analysis import report as reporting
from analysis import runs
from analysis.runs import Study
from analysis.tables import Tables


@dataclass
class Report:
    """The report's files in `folder` and its headline; in Jupyter it shows itself (`_repr_html_`)."""

    folder: Path
    files: list[Path]
    headline: str

    @property
    def html(self) -> str:
        return (self.folder / "report.html").read_text()

    def csv(self, name: str) -> pd.DataFrame:
        """One of the report's tables as written, e.g. `csv("ablation_table")`."""
        return pd.read_csv(self.folder / f"{name.removesuffix('.csv')}.csv")

    def _repr_html_(self) -> str:
        # In its own frame: the report's styles stay out of the notebook's.
        frame = html.escape(self.html, quote=True)
        return f'<iframe srcdoc="{frame}" style="width:100%;height:900px;border:0"></iframe>'


@dataclass
class StudyView:
    """One study: a sweep's runs (or an experiment's), with the report's tables computed on first use."""

    study: Study
    baseline: str | None = None  # the reference configuration, e.g. "dropout=0.5" (default: the report's)
    margins: dict[str, float] | None = None  # per test metric, "equivalent" within it (default: the contract's)
    _folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ablation-study-")))

    @cached_property
    def _predictions(self) -> dict:
        return reporting.fetch_predictions(self.study, self.study.finished, self._folder / "predictions")

    @cached_property
    def tables(self) -> Tables:
        return reporting.compute_tables(self.study, self.baseline, self._predictions, margins=self.margins)

    @property
    def runs(self) -> pd.DataFrame:
        """One row per finished run: its params, metrics and tags."""
        return self.study.finished

    @property
    def duplicates(self) -> pd.DataFrame:
        """The finished runs set aside, one row each: the same configuration, seed and data as a newer finished run
        (`kept_run_id`), which alone counts. Empty when none."""
        return self.study.duplicates

    @property
    def ablation(self) -> pd.DataFrame:
        return self.tables.ablation

    @property
    def effects(self) -> pd.DataFrame:
        return self.tables.effects

    @property
    def main_effects(self) -> pd.DataFrame:
        return self.tables.main

    @property
    def planning(self) -> pd.DataFrame:
        return self.tables.verdict.planning

    @property
    def verdicts(self) -> pd.DataFrame:
        """Each comparison the headline speaks of, on test ROC AUC: seeds, difference, 95% interval, verdict."""
        return reporting.decisions(self.study, self.tables.verdict.alpha, "test_auc")

    def learning_curves(self):
        """The report's learning curves, as a matplotlib figure."""
        from analysis import figures

        return figures.learning_curves(self.tables.finished, self.tables.factors, self.tables.history)

    def report(self, out: str | Path | None = None, log: bool = True) -> Report:
        """The report `ablation-report report` writes, into `out` (a new temporary folder if None), logged to the
        sweep's parent run unless `log=False` (`--no-log`)."""
        folder = Path(out) if out else Path(tempfile.mkdtemp(prefix="ablation-report-"))
        written = reporting.build_report(self.study, folder, self.baseline, margins=self.margins, log=log)
        return Report(folder, written.files, written.headline)

    def close(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)


def load(
    experiment: str | None = None,
    sweep: str | None = None,
    tracking_uri: str | None = None,
    all_runs: bool = False,
    baseline: str | None = None,
    margins: dict[str, float] | None = None,
) -> StudyView:
    """A study: `sweep` (a parent run id), else `experiment`'s latest sweep (every run with `all_runs`), from
    `tracking_uri` (default: the project's store, as `ablation-report` finds it).

    >>> study = load(experiment="quickstart")     # doctest: +SKIP
    >>> study.verdicts[["comparison", "seeds", "diff", "verdict"]]
    """
    quiet_environment()  # no download bar for every file the report reads
    uri = runs.tracking_uri(tracking_uri)
    return StudyView(runs.load_study(uri, experiment, sweep, all_runs), baseline, margins)
