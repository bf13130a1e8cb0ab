"""The report's verdict on one comparison (A against B): seeds as replicates, the test images as a second noise.

Each of the n paired units (seeds) gives a difference d_i = A_i − B_i, both runs scored on the same test set.
The seeds' spread gives the variance of the mean, s²/n, but with n − 1 degrees of freedom only: with 2 or 3
seeds a normal quantile would be far too narrow, hence Student's t. The 624 test images add a variance V that
the seeds cannot see (every run was scored on the same images); it is estimated from shared image-bootstrap
replicates with the seeds held fixed, from hundreds of replicates, so it is treated as known and normal.
At two-sided level 1 − a the interval is D ± h(a) with h(a) = sqrt(t²_{n−1,1−a/2} · s²/n + z²_{1−a/2} · V): the two
parts' half-widths added in quadrature (V = 0: the paired t-interval; s = 0: the normal one).

Why not one se = sqrt(s²/n + V) with Welch–Satterthwaite df: at n = 2 those df jump far above 1 whenever s² comes
out small, and the interval under-covered (0.926 instead of 0.95 for accuracy in a simulated design). Adding the
half-widths in quadrature keeps each part's exact quantile, and in the same simulations (tests/test_compare.py, n = 2,
3, 5) it held every nominal rate: coverage 0.977 to 0.999, false better/worse 0.001 to 0.014 against 0.05. The price
is caution: with 2 seeds t = 12.7 (1 df), so a claim needs a large difference or nearly equal seeds.
The p-value is the a at which the interval just reaches 0 (p < alpha exactly when the 1 − alpha interval excludes 0),
p_equivalence the a at which |D| + one-sided half-width reaches the margin; `se` = sqrt(s²/n + V) and `df` = n − 1
(the seed part's) are reported as descriptions.

A verdict is a claim: "better" / "worse" (the two-sided test above, Holm-adjusted within a metric), "equivalent"
(TOST against a margin, the same construction, Holm-adjusted too: every claim is family-wise controlled) or
"undecided". One seed makes no claim. Intervals are clipped to the metric's range. `seeds_needed` says how many
seeds would decide a comparison if its variances stayed as estimated; `sequential_alpha` splits alpha over the
planned looks of `seeds=auto` (Bonferroni: the chance of any false claim over all looks is at most the sum over the
looks).
"""

from __future__ import annotations

import functools
import gc
import math

import numpy as np
import pandas as pd
from scipy import optimize, special, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

LEVEL = 0.95
ALPHA = 0.05
VERDICTS = ("better", "worse", "equivalent", "undecided")
KEYS = ("n", "diff", "se", "df", "ci_low", "ci_high", "p_value", "p_equivalence", "margin",
        "p_improve", "p_improve_low", "p_improve_high", "seed_var", "image_var", "seeds_needed")  # fmt: skip


def _variances(values, image_values) -> tuple[int, float, float, float]:
    """n, mean, seed variance of the mean (s²/n) and image variance of the mean (V) of per-unit values."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return n, math.nan, math.nan, math.nan
    seed_var = float(np.var(values, ddof=1)) / n
    image_var = 0.0
    if image_values is not None:  # (replicates, n): each replicate's mean over the same units
        image_values = np.asarray(image_values, dtype=float)
        if image_values.ndim != 2 or image_values.shape[1] != n or len(image_values) < 2:
            raise ValueError(f"image replicates: expected (replicates >= 2, {n}), got {image_values.shape}")
        image_var = float(np.var(image_values.mean(axis=1), ddof=1))
    return n, float(values.mean()), seed_var, image_var


def _se(seed_var: float, image_var: float) -> float:
    """The descriptive standard error of the mean difference; the intervals use `_half` instead."""
    return math.sqrt(seed_var + image_var)


def _half(tail: float, n: int, seed_var: float, image_var: float) -> float:
    """The half-width at upper tail probability `tail`: (1 − level) / 2 for an interval, alpha for one TOST side.

    The seed part with its Student t on n − 1 df, the image part with the normal quantile, added in quadrature.
    scipy.special's quantiles: a judge call evaluates this dozens of times, and scipy.stats' take 60 times longer.
    """
    t_part = -special.stdtrit(n - 1, tail) * math.sqrt(seed_var) if seed_var > 0 else 0.0
    z_part = -special.ndtri(tail) * math.sqrt(image_var) if image_var > 0 else 0.0
    return math.hypot(float(t_part), float(z_part))


_FLOOR = 1e-200  # the smallest tail solved for: stdtrit is exact to 1e-250 (not at 1e-300), far below any p used


def _tail(size: float, n: int, seed_var: float, image_var: float) -> float:
    """The upper tail probability q in (0, 0.5] at which `_half(q)` equals size >= 0.

    `_half` falls from infinity at q -> 0 to 0 at q = 0.5, so the root is unique. Since z <= t, it lies between the
    normal and the Student-t tail of size / se: brentq (on log q) needs only that narrow bracket. One part alone:
    its exact tail (with no image part, the one-sample t-test's).
    """
    if seed_var == 0 and image_var == 0:  # no noise at all: a size above zero is certain
        return 0.5 if size == 0 else 0.0
    x = size / _se(seed_var, image_var)
    if image_var == 0:
        return float(special.stdtr(n - 1, -x))
    if seed_var == 0:
        return float(special.ndtr(-x))
    low, high = max(float(special.ndtr(-x)), _FLOOR), float(special.stdtr(n - 1, -x))
    if high <= low:  # x = 0 (both 0.5), or beyond the floor
        return high if x == 0 else low

    def excess(log_q: float) -> float:
        return _half(math.exp(log_q), n, seed_var, image_var) - size

    if excess(math.log(low)) <= 0:  # the root lies below the floor: report the floor (conservative)
        return low
    if excess(math.log(high)) >= 0:  # at the t tail within round-off (the image part is negligible)
        return high
    return math.exp(optimize.brentq(excess, math.log(low), math.log(high)))


def _interval(center: float, n: int, seed_var: float, image_var: float, level: float, bounds: tuple[float, float]):
    half = _half((1 - level) / 2, n, seed_var, image_var)
    # Clipping to the metric's range never loses coverage: the true value lies in the range too.
    return float(max(center - half, bounds[0])), float(min(center + half, bounds[1]))


def _p_two_sided(diff: float, n: int, seed_var: float, image_var: float) -> float:
    """The smallest alpha at which the (1 − alpha) interval excludes 0: |diff| = h(alpha)."""
    return 2 * _tail(abs(diff), n, seed_var, image_var)


def _p_equivalence(diff: float, n: int, seed_var: float, image_var: float, margin: float) -> float:
    """TOST: the smallest alpha at which |diff| + k(alpha) < margin, k the one-sided half-width.

    Beyond the margin the one-sided quantiles turn negative (k(alpha) = −k(1 − alpha)), which gives p >= 0.5 as the
    classical TOST does: with no image part this is exactly the larger one-sided t-test p-value.
    """
    room = margin - abs(diff)
    if seed_var == 0 and image_var == 0:
        return 0.0 if room > 0 else 1.0
    tail = _tail(abs(room), n, seed_var, image_var)
    return tail if room >= 0 else 1 - tail


def judge(diffs, image_diffs=None, margin: float = 0.01, level: float = LEVEL, bounds=(0.0, 1.0)) -> dict:
    """One comparison from its per-seed differences A_i − B_i (and their (R, n) image-bootstrap replicates).

    `bounds` is the range of the metric itself; the difference's interval is clipped to (lo − hi, hi − lo).
    seed_var and image_var are the two parts of the variance of the mean difference (s²/n and V).
    """
    diffs = np.asarray(diffs, dtype=float)
    known = ~np.isnan(diffs)  # a run that did not log the metric: its seed drops out of this metric's comparison
    if not known.all():
        diffs = diffs[known]
        image_diffs = None if image_diffs is None else np.asarray(image_diffs, dtype=float)[:, known]
    n, diff, seed_var, image_var = _variances(diffs, image_diffs)
    row = dict.fromkeys(KEYS, math.nan) | {"n": n, "margin": margin}
    if n < 2:  # one seed is one run: no claim about a configuration
        return row
    if seed_var == 0 and image_var == 0 and diff != 0:  # identical differences and no image noise measured: no
        return row | {"diff": diff, "ci_low": diff, "ci_high": diff}  # spread to judge by, so no claim either
    span = bounds[1] - bounds[0]
    ci_low, ci_high = _interval(diff, n, seed_var, image_var, level, (-span, span))
    # rliable's probability of improvement over paired seeds; ties count half, hence a fractional count.
    wins = float(np.sum(diffs > 0) + 0.5 * np.sum(diffs == 0))
    p_improve_low, p_improve_high = proportion_confint(wins, n, alpha=1 - level, method="wilson")
    return row | {
        "diff": diff,
        "se": _se(seed_var, image_var),
        "df": n - 1,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "p_value": _p_two_sided(diff, n, seed_var, image_var),
        "p_equivalence": _p_equivalence(diff, n, seed_var, image_var, margin),
        "p_improve": wins / n,
        "p_improve_low": float(p_improve_low),
        "p_improve_high": float(p_improve_high),
        "seed_var": seed_var,
        "image_var": image_var,
        "seeds_needed": seeds_needed(math.sqrt(seed_var * n), image_var, diff, margin, alpha=1 - level),
    }


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels' `multipletests`), NaN (no test) left out of the family and kept NaN."""
    p_values = np.asarray(p_values, dtype=float)
    adjusted = np.full(len(p_values), math.nan)
    tested = ~np.isnan(p_values)
    if tested.any():
        # statsmodels' Holm calls gc.collect() each time: seconds over many families in a process holding MLflow and
        # pandas. Frozen objects are left out of that scan; they are unfrozen right after.
        gc.freeze()
        try:
            adjusted[tested] = multipletests(p_values[tested], method="holm")[1]
        finally:
            gc.unfreeze()
    return adjusted


def decide(table: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Holm within each metric on both p-values, then each row's verdict (every test metric: higher is better)."""
    table = table.copy()
    families = table.groupby("metric", sort=False).indices.values()
    for source, target in (("p_value", "p_holm"), ("p_equivalence", "p_equivalence_holm")):
        p_values, adjusted = table[source].to_numpy(dtype=float), np.full(len(table), math.nan)
        for rows in families:
            adjusted[rows] = holm(p_values[rows])
        table[target] = adjusted
    significant = table["p_holm"] < alpha  # NaN compares False: no claim
    table["verdict"] = np.select(
        [significant & (table["diff"] > 0), significant & (table["diff"] < 0), table["p_equivalence_holm"] < alpha],
        ["better", "worse", "equivalent"],
        "undecided",
    )
    return table


@functools.lru_cache(maxsize=16)
def _t_quantiles(probability: float, cap: int) -> tuple[np.ndarray, np.ndarray]:
    seeds = np.arange(2, cap + 1)
    return seeds, stats.t.ppf(probability, seeds - 1)


def seeds_needed(sd: float, image_var: float, diff: float, margin: float, alpha: float = ALPHA, cap: int = 1000):
    """Smallest total N >= 2 of paired seeds that would decide the comparison if sd and V stayed as estimated,
    before Holm's adjustment (a table of several comparisons needs somewhat more).

    A difference beyond the margin is decided once the (1 − alpha) interval excludes 0; one inside it once
    the (1 − 2 alpha) interval fits in the margin (the same half-widths as `judge`: t on N − 1 df for the seeds,
    z for the images). math.inf: the test set alone is too noisy to decide.
    """
    if any(math.isnan(x) for x in (sd, image_var, diff)):
        return math.nan
    size = abs(diff)
    beyond = size >= margin
    probability = 1 - alpha / 2 if beyond else 1 - alpha
    seeds, quantiles = _t_quantiles(probability, cap)
    half = np.sqrt(quantiles**2 * sd**2 / seeds + stats.norm.ppf(probability) ** 2 * image_var)
    decided = half < size if beyond else size + half < margin
    return int(seeds[np.argmax(decided)]) if decided.any() else math.inf


def looks(min_seeds: int, max_seeds: int, step: int = 1) -> int:
    """How often `seeds=auto` applies the rule: at min_seeds, then after each round of `step` seeds (a last,
    smaller round that reaches max_seeds counts too)."""
    if min_seeds > max_seeds or step < 1:
        raise ValueError(f"no rounds from {min_seeds} to {max_seeds} seeds in steps of {step}")
    return 1 + math.ceil((max_seeds - min_seeds) / step)


def sequential_alpha(alpha: float, looks: int) -> float:
    """Each look's alpha: Bonferroni over the planned looks (valid whatever the stopping rule, if conservative)."""
    return alpha / looks
