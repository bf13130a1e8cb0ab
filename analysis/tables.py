"""What a report is made of: the tables computed from the runs (`Tables`) and what it takes from their artifacts
(`Fetched`). `analysis.report` fills them in; `analysis.sections` says what they show."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.verdict import Verdict


@dataclass
class Tables:
    """What the report computes from the runs: the four CSV tables and what they are computed from."""

    finished: pd.DataFrame  # finished job runs, index 0..n-1
    failed: pd.DataFrame  # failed and killed job runs
    factors: list[str]
    aliases: dict[str, list[str]]  # factor -> the params that split the runs like it
    baseline: tuple
    history: pd.DataFrame  # per-epoch curves of the finished runs (`Study.histories`)
    ablation: pd.DataFrame  # t-intervals over seeds and bootstrap intervals over seeds and test images
    effects: pd.DataFrame
    main: pd.DataFrame
    stability: pd.DataFrame
    verdict: Verdict  # ensembles, planning, interactions, ANOVA
    design: str = "grid"  # the sweep's design (grid, loco, one_at_a_time)
    designed: pd.DataFrame | None = None  # loco, one_at_a_time: each cell versus its reference

    def csvs(self) -> dict[str, pd.DataFrame]:
        csvs = {
            "ablation_table.csv": self.ablation,
            "effects_table.csv": self.effects,
            "main_effects.csv": self.main,
            "stability.csv": self.stability,
            "ensemble_table.csv": self.verdict.ensembles,
            "ensemble_effects.csv": self.verdict.ensemble_effects,
            "planning.csv": self.verdict.planning,
        }
        if not self.verdict.calibration.empty:
            csvs["calibration.csv"] = self.verdict.calibration
        if self.designed is not None:
            csvs["design_effects.csv"] = self.designed
        if self.verdict.interactions is not None:
            csvs["interactions.csv"] = self.verdict.interactions
        if self.verdict.anova is not None:
            csvs["anova.csv"] = self.verdict.anova
        return csvs


@dataclass
class Fetched:
    """What the report takes from the runs' artifacts."""

    best: list[dict]  # per network, from `_best_per_network`; "gradcam" = the copy in the output folder
    transfer: pd.DataFrame  # per run, validation versus test (`transfer_runs`); empty when none logged both
    top: str  # the finished run with the best test AUC
    record: dict | None  # its data_record.json

    @property
    def predicted(self) -> list[dict]:
        return [b for b in self.best if b["predictions"] is not None]

    @property
    def gradcams(self) -> list[Path]:
        return [b["gradcam"] for b in self.best if b["gradcam"]]
