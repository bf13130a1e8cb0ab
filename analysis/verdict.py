"""How sure a study's answers are: every comparison judged on the configuration, and the tables around them.

`analysis.comparisons` builds each table's comparisons (each configuration against the baseline, main effects, a
design's cells, interactions) and judges them all with one rule (`analysis.compare`: the seed is the unit of
replication, the test images a second source of noise; Holm per metric; better, worse, equivalent or undecided).
Here too: the ablation table's bootstrap intervals, the seed ensembles compared by DeLong and McNemar (they compare
trained models, never give a verdict word), how many seeds a claim needs, the ANOVA of a full factorial, and the
A/A check (`analysis.calibrate`) where a configuration has enough seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ablation.contract import TEST_METRICS
from analysis import comparisons
from analysis.bootstrap import Bootstrap, ScoredRuns, interval
from analysis.calibrate import calibrate
from analysis.compare import ALPHA
from analysis.ensembles import ensemble_effects, ensemble_table
from analysis.stats import (
    REPLICATE,
    UNSET,
    anova,
    config_keys,
    detectable_difference,
    full_factorial,
    holm_by_metric,
    level_key,
    ordered_configs,
    seeds_for_halfwidth,
    t_interval,
)

HALFWIDTH = 0.01  # the default target half-width of an effect's interval, for "how many seeds"
PLANNING = [
    "metric",
    "n",
    "sd_diff",
    "halfwidth_now",
    "test_set_halfwidth",
    "mde_80",
    "seeds_for_halfwidth",
    "seeds_needed",
]


@dataclass
class Verdict:
    ablation: pd.DataFrame  # the ablation table with <metric>_boot_low/high
    effects: pd.DataFrame  # each configuration against the baseline, judged
    main: pd.DataFrame  # each factor's levels against its reference level, judged
    ensembles: pd.DataFrame
    ensemble_effects: pd.DataFrame
    planning: pd.DataFrame
    interactions: pd.DataFrame | None  # a full factorial of two or more factors only
    anova: pd.DataFrame | None
    replicates: int
    halfwidth: float
    designed: pd.DataFrame | None = None  # loco, one_at_a_time: each cell against its reference, judged
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)  # the A/A check, where seeds allow
    alpha: float = ALPHA  # the verdicts' level: 0.05, or a seeds=auto sweep's level per look


def _seeds(runs: pd.DataFrame) -> pd.Series:
    """Run ids indexed by seed (by run id when there is no seed param)."""
    index = runs[REPLICATE].fillna(UNSET).astype(str) if REPLICATE in runs else runs["run_id"]
    return pd.Series(runs["run_id"].to_numpy(), index=index.to_numpy())


def _ablation(table: pd.DataFrame, finished: pd.DataFrame, factors: list[str], boot: Bootstrap | None):
    """Each configuration's percentile interval over seeds and test images redrawn together."""
    table = table.copy()
    keys = config_keys(finished, factors)
    for i, key in enumerate(ordered_configs(finished, factors)):
        run_ids = [r for r in finished.loc[keys.map(key.__eq__), "run_id"] if boot and r in boot.predictions.run_ids]
        for m in TEST_METRICS:
            low = high = math.nan
            if run_ids:
                low, high = interval(boot.mean(run_ids, m, ("config", key)))
            table.loc[i, f"{m}_boot_low"], table.loc[i, f"{m}_boot_high"] = low, high
    return table


def _effects(judged: pd.DataFrame, finished, factors, baseline) -> pd.DataFrame:
    """The judged comparisons against the baseline, with each side's number of runs."""
    if judged.empty:
        return judged
    keys = config_keys(finished, factors)
    counts = keys.value_counts()
    judged.insert(len(factors) + 1, "n", [int(counts[tuple(r)]) for r in judged[factors].to_numpy()])
    judged.insert(len(factors) + 2, "n_baseline", int(counts[baseline]))
    return judged


def _main(judged: pd.DataFrame, finished, factors, baseline) -> pd.DataFrame:
    """Per factor and level: its mean over every run at that level (a clipped t-interval), and, for the levels
    other than the reference, the judged comparison with the reference level."""
    judged = judged.rename(columns={"ci_low": "diff_ci_low", "ci_high": "diff_ci_high"})
    rows = []
    for i, factor in enumerate(factors):
        values = finished[factor].fillna(UNSET).astype(str)
        for level in sorted(values.unique(), key=level_key):
            at = finished[values == level]
            for m in TEST_METRICS:
                mean, low, high = t_interval(at[m])
                row = {"factor": factor, "level": level, "reference": baseline[i], "metric": m, "n": len(at)}
                rows.append({**row, "mean": mean, "ci_low": low, "ci_high": high})
    levels = pd.DataFrame(rows)
    if judged.empty:
        return levels.assign(test="reference")
    keys = ["factor", "level", "reference", "metric"]
    main = levels.merge(judged, on=keys, how="left")
    main["test"] = main["test"].fillna("reference")
    return main


def _planning(effects: pd.DataFrame, finished, factors, halfwidth: float) -> pd.DataFrame:
    """Per configuration against the baseline and metric: the spread of a per-seed difference (pooled from every
    configuration's seeds where this one has fewer than two pairs), the interval's half-width now, the part the test
    images alone set (it does not shrink with seeds), the smallest difference detectable with 80% power, the seeds an
    interval of +-`halfwidth` needs, and the paired seeds that would decide the comparison."""
    if effects.empty:
        return pd.DataFrame(columns=[*factors, *PLANNING])
    rows = []
    pooled = {m: comparisons.pooled_spread(finished, factors, m) for m in TEST_METRICS}
    for _, row in effects.iterrows():
        m, n = row["metric"], int(row["pairs"])
        sd = math.sqrt(row["seed_var"] * n) if n >= 2 else pooled[m]
        image_var = row["image_var"] if np.isfinite(row["image_var"]) else 0.0
        rows.append(
            {
                **{f: row[f] for f in factors},
                "metric": m,
                "n": n,
                "sd_diff": sd,
                "halfwidth_now": (row["ci_high"] - row["ci_low"]) / 2,
                "test_set_halfwidth": 1.96 * math.sqrt(image_var) if np.isfinite(row["image_var"]) else math.nan,
                "mde_80": detectable_difference(sd, n) if n >= 2 else math.nan,
                "seeds_for_halfwidth": seeds_for_halfwidth(sd, halfwidth),
                "seeds_needed": row["seeds_needed"],
            }
        )
    return pd.DataFrame(rows, columns=[*factors, *PLANNING])


def verdict(
    finished: pd.DataFrame,
    factors: list[str],
    baseline: tuple,
    ablation: pd.DataFrame,
    predictions: ScoredRuns | None,
    designed_cells: list[tuple[str, tuple, tuple]] | None = None,
    halfwidth: float = HALFWIDTH,
    margins: dict[str, float] | None = None,
    replicates: int | None = None,
    alpha: float = ALPHA,
) -> Verdict:
    """Every comparison of the study judged at level `alpha`, with the tables around them."""
    boot = Bootstrap(predictions, **({"replicates": replicates} if replicates else {})) if predictions else None

    def judged(built: list[comparisons.Comparison]) -> pd.DataFrame:
        return comparisons.judge_all(built, finished, boot, margins, alpha=alpha, factors=factors)

    effects = _effects(judged(comparisons.against_baseline(finished, factors, baseline)), finished, factors, baseline)
    designed = judged(comparisons.designed(finished, factors, designed_cells)) if designed_cells else None
    interactions = None
    if full_factorial(finished, factors):
        interactions = judged(comparisons.interactions(finished, factors, baseline))
    ensembles = ensemble_effects_table = pd.DataFrame()
    if predictions is not None:
        configs, keys = ordered_configs(finished, factors), config_keys(finished, factors)
        runs_of = {  # each configuration's scored runs, in seed order
            key: [r for r in _seeds(finished[keys.map(key.__eq__)]).sort_index() if r in predictions.run_ids]
            for key in configs
        }
        ensembles = ensemble_table(predictions, configs, factors, runs_of, finished)
        ensemble_effects_table = ensemble_effects(predictions, configs, factors, runs_of, baseline)
        ensemble_effects_table = ensemble_effects_table.assign(p_holm=holm_by_metric(ensemble_effects_table, "p_value"))
    return Verdict(
        ablation=_ablation(ablation, finished, factors, boot),
        effects=effects,
        main=_main(judged(comparisons.main_effects(finished, factors, baseline)), finished, factors, baseline),
        ensembles=ensembles,
        ensemble_effects=ensemble_effects_table,
        planning=_planning(effects, finished, factors, halfwidth),
        interactions=interactions,
        anova=anova(finished, factors),
        replicates=boot.replicates if boot else 0,
        halfwidth=halfwidth,
        designed=designed,
        calibration=calibrate(finished, factors, boot, margins=margins),
        alpha=alpha,
    )
