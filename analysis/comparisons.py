"""Every comparison the report makes, built in one place and judged by one rule.

A comparison is two sides of a study made comparable seed by seed: for each paired seed (the unit of
replication), a weighted sum of runs' test metrics, +1 on one side and −1 on the other, averaged over the cells it
pools (a main effect pools the other factors' levels; an interaction is a difference of differences). So each
seed gives one difference, and the test images add their own noise to all of them at once. Main effects, each
configuration against the baseline, a design's cells and interactions differ only in how they pick the runs:
`analysis.compare.judge` turns every one into a difference, an interval, a test, P(improvement) and a verdict word,
and `analysis.compare.decide` applies Holm per metric over a table.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ablation.contract import MARGINS, TEST_METRICS
from analysis.bootstrap import Bootstrap, interval, p_value
from analysis.compare import decide, judge, seeds_needed
from analysis.stats import REPLICATE, UNSET, config_keys, level_key, ordered_configs

RULE = "paired seeds + test images"  # the `test` column of every judged comparison


@dataclass
class Comparison:
    """One row of a comparison table: what it shows (`row`), and per seed the runs it weighs."""

    row: dict
    blocks: list[tuple[str, dict[str, float]]] = field(default_factory=list)  # (seed, {run id: coefficient})

    def units(self) -> dict[str, dict[str, float]]:
        """Per seed, the mean of its blocks' coefficients: one difference per seed. A seed missing a block (a failed
        run) averages the blocks it has, so its difference weighs those a little more."""
        by_seed: dict[str, list[dict[str, float]]] = defaultdict(list)
        for seed, block in self.blocks:
            by_seed[seed].append(block)
        units = {}
        for seed, blocks in sorted(by_seed.items()):
            unit: dict[str, float] = defaultdict(float)
            for block in blocks:
                for run_id, coefficient in block.items():
                    unit[run_id] += coefficient / len(blocks)
            units[seed] = dict(unit)
        return units


def _seed_of(runs: pd.DataFrame) -> pd.Series:
    """Each run's seed (its run id where there is no seed param), as text."""
    seeds = runs[REPLICATE] if REPLICATE in runs else runs["run_id"]
    return seeds.fillna(UNSET).astype(str)


def _by_seed(runs: pd.DataFrame) -> dict[str, list[str]]:
    """Run ids per seed: two runs of one configuration and seed (two sweeps, a re-run) are averaged, not dropped."""
    by_seed: dict[str, list[str]] = defaultdict(list)
    for seed, run_id in zip(_seed_of(runs), runs["run_id"], strict=True):
        by_seed[seed].append(run_id)
    return dict(by_seed)


def _pairs(a: dict[str, list[str]], b: dict[str, list[str]]) -> list[tuple[str, dict[str, float]]]:
    """(unit, {run: coefficient}): a − b matched on the seed (it fixes the validation split and the data order), then
    the seeds only one side has paired in seed order (independent runs: any pairing is fair); a seed's runs averaged."""
    matched = sorted(a.keys() & b.keys(), key=level_key)
    rest = zip(sorted(a.keys() - b.keys(), key=level_key), sorted(b.keys() - a.keys(), key=level_key), strict=False)
    pairs = []
    for unit, (x, y) in [(seed, (seed, seed)) for seed in matched] + [(f"{x}/{y}", (x, y)) for x, y in rest]:
        coefficients: dict[str, float] = defaultdict(float)
        for run_id in a[x]:
            coefficients[run_id] += 1 / len(a[x])
        for run_id in b[y]:
            coefficients[run_id] -= 1 / len(b[y])  # the same run on both sides cancels: a difference of 0
        pairs.append((unit, dict(coefficients)))
    return pairs


def paired(row: dict, treated: pd.DataFrame, reference: pd.DataFrame) -> Comparison:
    """treated − reference, unit by unit (`_pairs`)."""
    return Comparison(row, _pairs(_by_seed(treated), _by_seed(reference)))


def against_baseline(finished: pd.DataFrame, factors: list[str], baseline: tuple) -> list[Comparison]:
    """Every other configuration against the baseline."""
    keys = config_keys(finished, factors)
    base = finished[keys.map(baseline.__eq__)]
    return [
        paired(dict(zip(factors, key, strict=True)), finished[keys.map(key.__eq__)], base)
        for key in ordered_configs(finished, factors)
        if key != baseline
    ]


def designed(finished: pd.DataFrame, factors: list[str], cells: list[tuple[str, tuple, tuple]]) -> list[Comparison]:
    """A designed study's own comparisons (loco, one_at_a_time): each cell against its reference cell."""
    keys = config_keys(finished, factors)
    return [
        paired({"cell": cell}, finished[keys.map(key.__eq__)], finished[keys.map(reference.__eq__)])
        for cell, key, reference in cells
    ]


def _blocks(finished: pd.DataFrame, columns: list[str]) -> pd.Series:
    """Each run's levels of `columns`, as one text key ("" without columns): the block it is compared within."""
    if not columns:
        return pd.Series("", index=finished.index)
    return finished[columns].fillna(UNSET).astype(str).agg("|".join, axis=1)


def _levels(finished: pd.DataFrame, factor: str) -> list[str]:
    return sorted(finished[factor].fillna(UNSET).astype(str).unique(), key=level_key)


def main_effects(finished: pd.DataFrame, factors: list[str], baseline: tuple) -> list[Comparison]:
    """Each level of each factor against the baseline's level, per seed averaged over the other factors' levels
    where both cells were run."""
    comparisons = []
    for i, factor in enumerate(factors):
        values = finished[factor].fillna(UNSET).astype(str)
        blocks = _blocks(finished, [f for f in factors if f != factor])
        reference = finished[values == baseline[i]]
        for level in _levels(finished, factor):
            if level == baseline[i]:
                continue
            at = finished[values == level]
            pairs = [
                pair
                for block in blocks[at.index].unique()
                for pair in _pairs(
                    _by_seed(at[blocks[at.index] == block]), _by_seed(reference[blocks[reference.index] == block])
                )
            ]
            comparisons.append(Comparison({"factor": factor, "level": level, "reference": baseline[i]}, pairs))
    return comparisons


INTERACTION = (1.0, -1.0, -1.0, 1.0)  # (a, b) − (a0, b) − (a, b0) + (a0, b0): a difference of differences


def interactions(finished: pd.DataFrame, factors: list[str], baseline: tuple) -> list[Comparison]:
    """Two-way interactions: for each pair of factors and non-reference levels, how much the effect of one changes
    with the other, over the blocks (other factors' levels, seed) that hold all four cells."""
    comparisons = []
    seeds = _seed_of(finished)
    for a, b in itertools.combinations(factors, 2):
        ia, ib = factors.index(a), factors.index(b)
        block = _blocks(finished, [f for f in factors if f not in (a, b)])
        va, vb = (finished[f].fillna(UNSET).astype(str) for f in (a, b))
        run_at: dict[tuple, list[str]] = defaultdict(list)  # a cell's runs at one seed: averaged, like `_by_seed`
        for j in finished.index:
            run_at[(va[j], vb[j], block[j], seeds[j])].append(finished.at[j, "run_id"])
        for level_a, level_b in itertools.product(_levels(finished, a), _levels(finished, b)):
            if level_a == baseline[ia] or level_b == baseline[ib]:
                continue
            cells = [(level_a, level_b), (baseline[ia], level_b), (level_a, baseline[ib]), (baseline[ia], baseline[ib])]
            blocks = []
            for where in sorted({(block[j], seeds[j]) for j in finished.index}):
                runs = [run_at.get((x, y, *where), []) for x, y in cells]
                if all(runs):
                    coefficients = {r: c / len(cell) for cell, c in zip(runs, INTERACTION, strict=True) for r in cell}
                    blocks.append((where[1], coefficients))
            row = {"factor_a": a, "level_a": level_a, "reference_a": baseline[ia]}
            row |= {"factor_b": b, "level_b": level_b, "reference_b": baseline[ib]}
            comparisons.append(Comparison(row, blocks))
    return comparisons


def _image_values(boot: Bootstrap | None, units: list[dict[str, float]], metric: str) -> np.ndarray | None:
    """(replicates, seeds): each seed's difference under the shared image draws, seeds held; None unless every run
    logged its test predictions."""
    if boot is None or not units or any(r not in boot.predictions.run_ids for u in units for r in u):
        return None
    return np.stack([boot.metrics[metric][:, boot.columns(list(u))] @ np.array(list(u.values())) for u in units], 1)


def pooled_spread(finished: pd.DataFrame, factors: list[str], metric: str) -> float:
    """The sd of a per-seed difference expected from the seed-to-seed sd within configurations (pooled over those with
    two seeds or more) times sqrt(2): where a comparison has fewer than two paired seeds, its planning uses this."""
    keys = config_keys(finished, factors)
    squares = dof = 0.0
    for _, group in finished.groupby(keys.map(str)):
        values = group[metric].dropna().to_numpy(float)
        if len(values) >= 2:
            squares += float(np.sum((values - values.mean()) ** 2))
            dof += len(values) - 1
    return math.sqrt(2 * squares / dof) if dof else math.nan


def judge_all(
    comparisons: list[Comparison],
    finished: pd.DataFrame,
    boot: Bootstrap | None,
    margins: dict[str, float] | None = None,
    metrics=TEST_METRICS,
    alpha: float = 0.05,
    factors: list[str] | None = None,
) -> pd.DataFrame:
    """One row per comparison and metric: the verdict rule's columns (`analysis.compare`), the hierarchical
    bootstrap's interval and p-value (seeds and images redrawn; descriptive), and the verdict, Holm per metric. A
    comparison of one paired seed shows its difference and, from the spread pooled over `factors`' configurations,
    the paired seeds that would decide it; it makes no claim."""
    margins = {**MARGINS, **(margins or {})}
    spread = functools.cache(lambda metric: pooled_spread(finished, factors or [], metric))  # for one-pair rows
    by_id = finished.set_index("run_id")
    rows = []
    for comparison in comparisons:
        units = comparison.units()
        for metric in metrics:
            diffs = [sum(c * by_id.at[r, metric] for r, c in unit.items()) for unit in units.values()]
            image = _image_values(boot, list(units.values()), metric)
            judged = judge(diffs, image, margin=margins[metric])  # 95% intervals; the words at `alpha`
            if len(diffs) == 1:  # no claim; what one pair shows, and what the study's spread says it would need
                image_var = float(np.var(image[:, 0], ddof=1)) if image is not None else 0.0
                judged |= {"diff": diffs[0], "image_var": image_var}
                needed = seeds_needed(spread(metric), image_var, diffs[0], margins[metric], alpha=alpha)
                judged["seeds_needed"] = needed
            replicates = boot.resample_seeds(image, (comparison.row, metric)) if image is not None else None
            low, high = interval(replicates) if replicates is not None else (math.nan, math.nan)
            booted = {"boot_low": low, "boot_high": high}
            booted["p_boot"] = p_value(replicates) if replicates is not None else math.nan
            pairs = judged.pop("n")  # the paired seeds judged: a seed without the metric drops out
            rows.append({**comparison.row, "metric": metric, "test": RULE, "pairs": pairs, **judged, **booted})
    table = pd.DataFrame(rows)
    return decide(table, alpha) if len(table) else table
