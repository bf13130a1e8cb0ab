"""How sure a study's answers are: the report's second layer of statistics, on the runs' test predictions.

Adds to the t-based tables of `analysis.stats` (seed noise only) what a reviewer asks for: intervals and
p-values from the hierarchical bootstrap over seeds and test images (`analysis.bootstrap`), Holm-adjusted
p-values per metric, seed ensembles compared by DeLong and McNemar (`analysis.ensembles`), how many seeds a
claim needs, and two-way interactions with an ANOVA in a full factorial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ablation.contract import TEST_METRICS
from analysis.bootstrap import LEVEL, Bootstrap, ScoredRuns, interval, p_value
from analysis.ensembles import ensemble_effects, ensemble_table
from analysis.stats import (
    INTERACTION,
    REPLICATE,
    UNSET,
    anova,
    compare,
    config_keys,
    detectable_difference,
    full_factorial,
    holm_by_metric,
    interactions,
    keyed_by_seed,
    ordered_configs,
    seeds_for_halfwidth,
)

HALFWIDTH = 0.01  # the default target half-width of an effect's interval, for "how many seeds"
PLANNING = ["metric", "n", "sd_diff", "halfwidth_now", "test_set_halfwidth", "mde_80", "seeds_for_halfwidth"]


@dataclass
class Verdict:
    ablation: pd.DataFrame  # the ablation table with <metric>_boot_low/high
    effects: pd.DataFrame  # with boot_low/high, p_boot, p_holm
    main: pd.DataFrame  # with boot_low/high, p_boot, p_holm
    ensembles: pd.DataFrame
    ensemble_effects: pd.DataFrame
    planning: pd.DataFrame
    interactions: pd.DataFrame | None  # a full factorial of two or more factors only
    anova: pd.DataFrame | None
    replicates: int
    halfwidth: float


def _seeds(runs: pd.DataFrame) -> pd.Series:
    """Run ids indexed by seed (by run id when there is no seed param)."""
    index = runs[REPLICATE].fillna(UNSET).astype(str) if REPLICATE in runs else runs["run_id"]
    return pd.Series(runs["run_id"].to_numpy(), index=index.to_numpy())


class _Study:
    """The finished runs, grouped by configuration, restricted to those with test predictions for the bootstrap."""

    def __init__(self, finished: pd.DataFrame, factors: list[str], predictions: ScoredRuns | None, **boot):
        self.finished, self.factors = finished, factors
        scored = set(predictions.run_ids) if predictions else set()
        self.scored = finished[finished["run_id"].isin(scored)]
        self.boot = Bootstrap(predictions, **boot) if predictions else None
        self.configs = ordered_configs(finished, factors)
        keys = config_keys(finished, factors)
        self._runs = {key: finished[keys.map(key.__eq__)] for key in self.configs}
        self._scored = {key: runs[runs["run_id"].isin(scored)] for key, runs in self._runs.items()}

    def runs(self, key: tuple, scored: bool = False) -> pd.DataFrame:
        return (self._scored if scored else self._runs)[key]

    def runs_of(self) -> dict[tuple, list[str]]:
        return {key: list(_seeds(self.runs(key, scored=True)).sort_index()) for key in self.configs}


def _with_holm(table: pd.DataFrame, rows=None) -> pd.DataFrame:
    return table.assign(p_holm=holm_by_metric(table, "p_boot", rows))


def _bootstrap_columns(replicates: np.ndarray | None) -> dict[str, float]:
    if replicates is None:
        return {"boot_low": math.nan, "boot_high": math.nan, "p_boot": math.nan}
    low, high = interval(replicates)
    return {"boot_low": low, "boot_high": high, "p_boot": p_value(replicates)}


def _ablation(study: _Study, table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    for i, key in enumerate(study.configs):
        run_ids = list(study.runs(key, scored=True)["run_id"])
        for m in TEST_METRICS:
            low = high = math.nan
            if study.boot and run_ids:
                low, high = interval(study.boot.mean(run_ids, m, ("config", key)))
            table.loc[i, f"{m}_boot_low"], table.loc[i, f"{m}_boot_high"] = low, high
    return table


def _effect_replicates(study: _Study, key: tuple, baseline: tuple, metric: str) -> np.ndarray | None:
    treated, reference = (_seeds(study.runs(k, scored=True)) for k in (key, baseline))
    if study.boot is None or treated.empty or reference.empty:
        return None
    return study.boot.difference(treated, reference, metric, ("effect", key))


def _effects(study: _Study, effects: pd.DataFrame, baseline: tuple) -> pd.DataFrame:
    rows = []
    for _, row in effects.iterrows():
        key = tuple(str(row[f]) for f in study.factors)
        rows.append(_bootstrap_columns(_effect_replicates(study, key, baseline, row["metric"])))
    return _with_holm(pd.concat([effects, pd.DataFrame(rows, index=effects.index)], axis=1))


def _main_replicates(study: _Study, factor: str, level: str, reference: str, metric: str) -> np.ndarray | None:
    """level − reference of one factor, paired on the other factors' levels and the seed where runs match."""
    if study.boot is None:
        return None
    runs = study.scored
    keyed = keyed_by_seed(runs, [f for f in study.factors if f != factor])
    values = runs[factor].fillna(UNSET).astype(str).to_numpy()
    at, ref = keyed[values == level], keyed[values == reference]
    if at.empty or ref.empty:
        return None
    common = at.index.intersection(ref.index, sort=True)
    if len(common) >= 2 and at.index.is_unique and ref.index.is_unique:
        units = np.stack([study.boot.columns(at.loc[common, "run_id"]), study.boot.columns(ref.loc[common, "run_id"])])
        return study.boot.contrast(units.T, [1.0, -1.0], metric, ("main", factor, level))
    key = ("main", factor, level)
    return study.boot.mean(list(at["run_id"]), metric, (key, "at")) - study.boot.mean(list(ref["run_id"]), metric, key)


def _main(study: _Study, main: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, row in main.iterrows():
        replicates = None
        if row["test"] != "reference":
            replicates = _main_replicates(study, row["factor"], row["level"], row["reference"], row["metric"])
        rows.append(_bootstrap_columns(replicates))
    main = pd.concat([main, pd.DataFrame(rows, index=main.index)], axis=1)
    return _with_holm(main, main["test"] != "reference")


def _planning(study: _Study, baseline: tuple, halfwidth: float) -> pd.DataFrame:
    """Per configuration versus the baseline and metric: the spread of a per-seed difference, the interval's
    half-width now, the part the test images alone set (it does not shrink with seeds), the smallest difference
    detectable with 80% power at this many seeds, and the seeds an interval of +-`halfwidth` needs."""
    base = _seeds(study.runs(baseline))
    by_id = study.finished.set_index("run_id")
    rows = []
    for key in study.configs:
        if key == baseline:
            continue
        treated = _seeds(study.runs(key))
        common = treated.index.intersection(base.index) if treated.index.is_unique and base.index.is_unique else []
        paired = len(common) >= 2
        for m in TEST_METRICS:
            if paired:
                diffs = by_id.loc[treated[common], m].to_numpy() - by_id.loc[base[common], m].to_numpy()
                n, sd = len(common), float(np.std(diffs, ddof=1))
            else:
                a, b = by_id.loc[treated, m].to_numpy(), by_id.loc[base, m].to_numpy()
                n = min(len(a), len(b))
                sd = float(np.sqrt(np.var(a, ddof=1) + np.var(b, ddof=1))) if n >= 2 else math.nan
            now = float(stats.t.ppf((1 + LEVEL) / 2, n - 1) * sd / math.sqrt(n)) if n >= 2 else math.nan
            rows.append(
                {
                    **dict(zip(study.factors, key, strict=True)),
                    "metric": m,
                    "n": n,
                    "sd_diff": sd,
                    "halfwidth_now": now,
                    "test_set_halfwidth": _test_set_halfwidth(study, key, baseline, m),
                    "mde_80": detectable_difference(sd, n),
                    "seeds_for_halfwidth": seeds_for_halfwidth(sd, halfwidth),
                }
            )
    return pd.DataFrame(rows, columns=[*study.factors, *PLANNING])


def _test_set_halfwidth(study: _Study, key: tuple, baseline: tuple, metric: str) -> float:
    """Half the width of the difference's interval when only the test images are resampled (seeds held)."""
    if study.boot is None:
        return math.nan
    treated, reference = (list(_seeds(study.runs(k, scored=True))) for k in (key, baseline))
    if not treated or not reference:
        return math.nan
    boot = study.boot
    units = np.array([list(boot.columns(treated)) + list(boot.columns(reference))])
    weights = [1 / len(treated)] * len(treated) + [-1 / len(reference)] * len(reference)
    low, high = interval(boot.images_only(units, weights, metric))
    return (high - low) / 2


def _interactions(study: _Study, baseline: tuple) -> pd.DataFrame | None:
    if not full_factorial(study.finished, study.factors):
        return None
    table = interactions(study.finished, study.factors, baseline)
    rows = []
    for _, row in table.iterrows():
        units = [u for u in row["units"] if study.boot and all(r in study.boot.predictions.run_ids for r in u)]
        replicates = None
        if units:
            columns = np.array([study.boot.columns(u) for u in units])
            label = ("interaction", row["factor_a"], row["level_a"], row["factor_b"], row["level_b"])
            replicates = study.boot.contrast(columns, INTERACTION, row["metric"], label)
        rows.append(_bootstrap_columns(replicates))
    table = pd.concat([table.drop(columns="units"), pd.DataFrame(rows, index=table.index)], axis=1)
    return _with_holm(table)


def verdict(
    finished: pd.DataFrame,
    factors: list[str],
    baseline: tuple,
    tables: dict[str, pd.DataFrame],
    predictions: ScoredRuns | None,
    halfwidth: float = HALFWIDTH,
    **boot,
) -> Verdict:
    """`tables`: the t-based "ablation", "effects" and "main" tables of `analysis.stats` for these runs."""
    study = _Study(finished, factors, predictions, **boot)
    runs_of = study.runs_of()
    ensembles = ensemble_effects_table = pd.DataFrame()
    if predictions is not None:
        ensembles = ensemble_table(predictions, study.configs, factors, runs_of, finished)
        ensemble_effects_table = ensemble_effects(predictions, study.configs, factors, runs_of, baseline)
        ensemble_effects_table = ensemble_effects_table.assign(p_holm=holm_by_metric(ensemble_effects_table, "p_value"))
    return Verdict(
        ablation=_ablation(study, tables["ablation"]),
        effects=_effects(study, tables["effects"], baseline),
        main=_main(study, tables["main"]),
        ensembles=ensembles,
        ensemble_effects=ensemble_effects_table,
        planning=_planning(study, baseline, halfwidth),
        interactions=_interactions(study, baseline),
        anova=anova(finished, factors),
        replicates=study.boot.replicates if study.boot else 0,
        halfwidth=halfwidth,
    )


def design_effects(
    finished: pd.DataFrame,
    factors: list[str],
    compared: list[tuple[str, tuple, tuple]],
    predictions: ScoredRuns | None,
    **boot,
) -> pd.DataFrame:
    """A designed study's own comparisons: (cell label, its configuration, its reference's configuration) ->
    per metric the difference with its seed-only t-interval, the bootstrap interval and the Holm-adjusted p."""
    study = _Study(finished, factors, predictions, **boot)
    rows = []
    for cell, key, reference in compared:
        treated, base = (keyed_by_seed(study.runs(k), []) for k in (key, reference))
        for m in TEST_METRICS:
            rows.append(
                {
                    "cell": cell,
                    "metric": m,
                    "n": len(treated),
                    "n_reference": len(base),
                    **compare(treated[m], base[m]),
                    **_bootstrap_columns(_effect_replicates(study, key, reference, m)),
                }
            )
    return _with_holm(pd.DataFrame(rows))
