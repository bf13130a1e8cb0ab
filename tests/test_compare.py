"""analysis.compare: the rule against independent computations, hand-built studies, and simulated studies.

The simulation (the main proof) draws synthetic studies on a fresh 624-image test set each, scores every run
by ROC AUC and accuracy and by the same metrics under shared image-bootstrap replicates, and counts how often
the rule makes a false claim. `pytest -s` prints the measured rates. Measured with the half-widths added in
quadrature (seed 20240613; 2,000 null and 1,000 gain studies; n = 2 / 3 / 5 seeds per arm):

  design "shift" (the three effects)     ROC AUC                 accuracy
  false better/worse, null               0.005 / 0.006 / 0.001   0.011 / 0.011 / 0.014
  coverage, A better by ~0.01            0.997 / 0.997 / 0.996   0.983 / 0.988 / 0.989
  coverage, null                         0.995 / 0.994 / 0.999   0.989 / 0.990 / 0.986
  "equivalent" at twice the margin       0.000 / 0.000 / 0.000   0.000 / 0.000 / 0.000
  sequential 2..6 seeds, null            0.000                   0.009
  "better", A truly +0.010 / +0.020      0.018 / 0.027 / 0.063   0.035 / 0.071 / 0.145
  design "shift and quality"
  coverage, A better by ~0.01            0.982 / 0.984 / 0.980   0.980 / 0.982 / 0.977
  "better", A truly +0.010 / +0.020      0.035 / 0.056 / 0.116   0.032 / 0.072 / 0.145

The earlier rule, one se = sqrt(s²/n + V) with Welch–Satterthwaite df, covered "shift and quality" at n = 2 only
0.926 (accuracy): those df jump far above 1 whenever s² happens to be small, and when V is a small share of the seed
variance the interval is then too short. Its null false better/worse rates were 0.022 / 0.013 / 0.004 (ROC AUC) and
0.051 / 0.036 / 0.023 (accuracy). Every rate now holds with room, at the price of power: at n = 2 the seed part
carries t = 12.7.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import expit
from statsmodels.stats.proportion import proportion_confint

from ablation.contract import MARGINS
from analysis.bootstrap import weighted_metrics
from analysis.compare import (
    VERDICTS,
    decide,
    judge,
    looks,
    seeds_needed,
    sequential_alpha,
)


def verdicts(rows: list[dict], alpha: float = 0.05) -> np.ndarray:
    """Each row its own family (its own 'metric'), so that Holm leaves its p-values as they are."""
    table = pd.DataFrame(rows)
    table["metric"] = np.arange(len(table))
    return decide(table, alpha)["verdict"].to_numpy()


# --- 1. against an independent computation ---------------------------------------------------------------


def test_without_image_noise_it_is_the_one_sample_t_test():
    diffs = np.array([0.012, -0.004, 0.021, 0.008, 0.015])
    row = judge(diffs, margin=0.01)
    reference = stats.ttest_1samp(diffs, 0.0)
    interval = reference.confidence_interval(0.95)
    assert row["p_value"] == pytest.approx(reference.pvalue, rel=1e-10)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((interval.low, interval.high), rel=1e-10)
    assert row["df"] == pytest.approx(4) and row["image_var"] == 0.0
    # TOST: the larger one-sided p-value, each from its own shifted t-test
    upper = stats.ttest_1samp(diffs, 0.01, alternative="less").pvalue
    lower = stats.ttest_1samp(diffs, -0.01, alternative="greater").pvalue
    assert row["p_equivalence"] == pytest.approx(max(upper, lower), rel=1e-10)


def quadrature_half(tail, n, seed_part, image_part):
    """The rule's half-width at upper tail probability `tail`, from scipy.stats' quantiles (compare uses special's)."""
    return math.sqrt(stats.t.isf(tail, n - 1) ** 2 * seed_part + stats.norm.isf(tail) ** 2 * image_part)


def bisect_tail(size, n, seed_part, image_part):
    """The tail probability at which the half-width equals size, by plain bisection on log q in (1e-15, 0.5)."""
    low, high = math.log(1e-15), math.log(0.5)
    for _ in range(200):
        middle = (low + high) / 2
        wider = quadrature_half(math.exp(middle), n, seed_part, image_part) > size
        low, high = (middle, high) if wider else (low, middle)
    return math.exp((low + high) / 2)


def test_image_variance_adds_its_half_width_in_quadrature():
    rng = np.random.default_rng(3)
    diffs = rng.normal(0.01, 0.008, size=3)
    image_diffs = diffs + rng.normal(0, 0.006, size=(150, 3))
    seed_part = np.var(diffs, ddof=1) / 3
    image_part = np.var(image_diffs.mean(axis=1), ddof=1)
    row = judge(diffs, image_diffs, margin=0.005)
    assert row["seed_var"] == pytest.approx(seed_part) and row["image_var"] == pytest.approx(image_part)
    assert row["se"] == pytest.approx(np.sqrt(seed_part + image_part)) and row["df"] == 2
    half = math.sqrt(stats.t.ppf(0.975, 2) ** 2 * seed_part + stats.norm.ppf(0.975) ** 2 * image_part)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((diffs.mean() - half, diffs.mean() + half), rel=1e-12)
    # p: the level at which the interval's edge touches 0; p_equivalence: the level at which |D| + k = margin
    assert row["p_value"] == pytest.approx(2 * bisect_tail(abs(diffs.mean()), 3, seed_part, image_part), rel=1e-9)
    room = 0.005 - abs(diffs.mean())
    tost = bisect_tail(abs(room), 3, seed_part, image_part)
    assert row["p_equivalence"] == pytest.approx(tost if room >= 0 else 1 - tost, rel=1e-9)
    # between the all-normal and the all-t p-value of the total se (z <= t)
    x = abs(diffs.mean()) / row["se"]
    assert 2 * stats.norm.sf(x) < row["p_value"] < 2 * stats.t.sf(x, 2)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_p_values_agree_with_the_intervals(n):
    """p < alpha exactly when the (1 − alpha) interval excludes 0; p_equivalence < alpha exactly when the
    (1 − 2 alpha) interval lies inside ±margin: at several levels, over many random studies."""
    rng = np.random.default_rng(n)
    for _ in range(200):
        diffs = rng.normal(rng.normal(0, 0.01), rng.uniform(0.001, 0.02), size=n)
        image_diffs = diffs + rng.normal(0, rng.uniform(0, 0.01), size=(100, n))
        row = judge(diffs, image_diffs, margin=0.01, bounds=(-10, 10))  # no clipping
        for alpha in (0.01, 0.05, 0.2):
            wide = judge(diffs, image_diffs, margin=0.01, level=1 - alpha, bounds=(-10, 10))
            narrow = judge(diffs, image_diffs, margin=0.01, level=1 - 2 * alpha, bounds=(-10, 10))
            assert (row["p_value"] < alpha) == (wide["ci_low"] > 0 or wide["ci_high"] < 0)
            assert (row["p_equivalence"] < alpha) == (-0.01 < narrow["ci_low"] and narrow["ci_high"] < 0.01)


def test_no_seed_spread_left():
    image_only = judge([0.01, 0.01], np.random.default_rng(0).normal(0.01, 0.002, size=(100, 2)))
    assert image_only["df"] == 1  # the seed part's, though it is 0 here: the normal quantile alone
    normal = 2 * stats.norm.sf(0.01 / math.sqrt(image_only["image_var"]))
    assert image_only["p_value"] == pytest.approx(normal, rel=1e-10)
    with np.errstate(all="raise"):  # no NaN warnings where nothing varies at all
        same = judge([0.01, 0.01], margin=0.005)
        none = judge([0.0, 0.0], margin=0.005)
    # Two equal differences and no image noise measured: no spread to judge by, so no claim (not a certain one).
    assert math.isnan(same["p_value"]) and math.isnan(same["p_equivalence"]) and same["diff"] == 0.01
    assert verdicts([same]) == ["undecided"]
    assert (none["p_value"], none["p_equivalence"]) == (1, 0)  # the very same runs on both sides: equivalent


def test_a_seed_without_the_metric_drops_out():
    images = np.random.default_rng(1).normal(0.01, 0.003, size=(200, 3))
    with_gap = judge([0.01, math.nan, 0.02], images)
    assert with_gap["n"] == 2 and with_gap["diff"] == pytest.approx(0.015)
    assert with_gap["p_value"] == judge([0.01, 0.02], images[:, [0, 2]])["p_value"]


def test_probability_of_improvement_counts_ties_half():
    row = judge([0.01, 0.0, -0.01, 0.02])
    assert row["p_improve"] == 0.625
    low, high = proportion_confint(2.5, 4, alpha=0.05, method="wilson")
    assert (row["p_improve_low"], row["p_improve_high"]) == pytest.approx((low, high))


# --- 2. hand-built studies with a known answer -----------------------------------------------------------


def test_known_answers():
    rng = np.random.default_rng(1)
    spread5 = np.linspace(-0.003, 0.003, 5)
    cases = {
        "clear gain": (judge(0.03 + spread5, 0.03 + spread5 + rng.normal(0, 0.003, (200, 5))), "better"),
        "clear loss": (judge(-0.03 + spread5, -0.03 + spread5 + rng.normal(0, 0.003, (200, 5))), "worse"),
        "clear equivalence": (judge(np.linspace(-0.0005, 0.0005, 6), margin=0.005), "equivalent"),
        "one seed": (judge([0.05], margin=0.005), "undecided"),
        "two seeds far apart": (judge([0.04, -0.02], margin=0.01), "undecided"),
    }
    found = verdicts([row for row, _ in cases.values()])
    assert dict(zip(cases, found, strict=True)) == {name: verdict for name, (_, verdict) in cases.items()}
    one_seed = cases["one seed"][0]
    assert one_seed["n"] == 1 and all(math.isnan(v) for k, v in one_seed.items() if k not in ("n", "margin"))
    assert set(found) <= set(VERDICTS)


def test_holm_within_a_metric_takes_back_claims_that_are_only_just_significant():
    table = pd.DataFrame(
        {
            "metric": ["test_auc"] * 5 + ["test_accuracy"],
            "diff": [0.01, 0.012, -0.011, 0.009, 0.01, 0.01],
            "p_value": [0.04, 0.045, 0.049, 0.03, math.nan, 0.04],
            "p_equivalence": [0.9, 0.8, 0.9, 0.7, math.nan, 0.9],
            "n": [3, 3, 3, 3, 1, 3],
        }
    )
    decided = decide(table)
    assert decided["p_holm"].iloc[:4].tolist() == pytest.approx([0.12, 0.12, 0.12, 0.12])  # 4 tests, not 5
    assert math.isnan(decided["p_holm"].iloc[4]) and math.isnan(decided["p_equivalence_holm"].iloc[4])
    assert decided["verdict"].tolist() == ["undecided"] * 5 + ["better"]  # the other metric: its own family
    equivalent = pd.DataFrame({"metric": "m", "diff": 0.0, "p_value": 0.9, "p_equivalence": [0.03, 0.04], "n": 3})
    assert decide(equivalent)["verdict"].tolist() == ["undecided", "undecided"]  # 0.06 and 0.06 after Holm
    assert decide(equivalent.iloc[:1])["verdict"].tolist() == ["equivalent"]


# --- 3. every interval inside its range ------------------------------------------------------------------


def test_intervals_stay_in_the_metric_range():
    large = judge([0.9, 0.3])
    assert (large["ci_low"], large["ci_high"]) == (-1.0, 1.0)
    lopsided = judge([0.95, 0.9, 0.97])
    assert -1.0 <= lopsided["ci_low"] and lopsided["ci_high"] == 1.0


# --- planning helpers -------------------------------------------------------------------------------------


def brute_force_seeds(sd, image_var, diff, margin, alpha=0.05, cap=1000):
    for n in range(2, cap + 1):
        if abs(diff) >= margin:
            if quadrature_half(alpha / 2, n, sd**2 / n, image_var) < abs(diff):
                return n
        elif abs(diff) + quadrature_half(alpha, n, sd**2 / n, image_var) < margin:
            return n
    return math.inf


@pytest.mark.parametrize(
    "sd, image_var, diff, margin",
    [(0.01, 0.0, 0.01, 0.005), (0.01, 1e-6, 0.02, 0.005), (0.002, 0.0, 0.0, 0.005), (0.02, 4e-6, 0.001, 0.01)],
)
def test_seeds_needed_is_the_first_n_that_decides(sd, image_var, diff, margin):
    assert seeds_needed(sd, image_var, diff, margin) == brute_force_seeds(sd, image_var, diff, margin)


def test_seeds_needed_edge_cases():
    assert seeds_needed(0.01, 0.0, 0.01, 0.005) == 7  # t_{N-1} < sqrt(N) first at N = 7
    assert seeds_needed(0.01, 1e-4, 0.015, 0.005) == math.inf  # the test set alone: 1.96 * 0.01 > 0.015
    assert seeds_needed(0.002, 0.0, 0.0, 0.005) == 3
    assert math.isnan(seeds_needed(math.nan, 0.0, 0.01, 0.005))
    assert judge([0.03, 0.031, 0.029], margin=0.005)["seeds_needed"] == 2  # already decided at 2


def test_sequential_looks_and_margins():
    assert looks(2, 6) == 5 and looks(2, 6, 2) == 3 and looks(2, 7, 2) == 4 and looks(3, 3) == 1
    assert sequential_alpha(0.05, looks(2, 6)) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        looks(6, 2)
    assert MARGINS["test_auc"] == MARGINS["test_pr_auc"] == 0.005
    assert all(MARGINS[m] == 0.01 for m in MARGINS if m not in ("test_auc", "test_pr_auc"))


# --- 4. simulated studies ---------------------------------------------------------------------------------
# Logit of run r on image j: (separation + quality_r + gain) * (±1 by class) + difficulty_j + shift_r
# + interaction_rj. difficulty: the image-level effect every run shares, drawn afresh for each study (a new test
# set each time); shift: the seed-level effect (the whole run moves against the 0.5 threshold); interaction:
# run x image. Both designs are sized like the real runs (seed-to-seed sd about 0.01 ROC AUC, 0.02 accuracy).
NEGATIVES, POSITIVES = 234, 390
IMAGES = NEGATIVES + POSITIVES
LABELS = np.r_[np.zeros(NEGATIVES, dtype=int), np.ones(POSITIVES, dtype=int)]  # negatives first, as used below
DIFFICULTY_SD = 1.0
GAIN = 0.08  # A's extra separation in the "truly better" studies: about +0.010 ROC AUC, +0.011 accuracy
NULL_STUDIES, GAIN_STUDIES, SEEDS, REPLICATES, CHUNK = 2000, 1000, 6, 100, 50  # seeds per arm at most
SEED_COUNTS = (2, 3, 5)
METRICS = ("auc", "accuracy")


@dataclass(frozen=True)
class Design:
    separation: float
    shift_sd: float
    interaction_sd: float
    quality_sd: float = 0.0  # a seed-level effect on the run's separation (its ROC AUC), beside the shift


# The brief's three effects: ROC AUC 0.909 (seed sd 0.0098), accuracy 0.821 (seed sd 0.020).
SHIFT = Design(separation=1.7, shift_sd=0.4, interaction_sd=1.5)
# Seeds that also differ in separation: ROC AUC 0.933 (seed sd 0.0105), accuracy 0.848 (seed sd 0.022).
SHIFT_AND_QUALITY = Design(separation=1.5, shift_sd=0.35, interaction_sd=1.0, quality_sd=0.06)


def run_logits(rng, design: Design, difficulty: np.ndarray, seeds: int, gain: float) -> np.ndarray:
    """(studies, seeds, images) logits of one arm's runs on each study's test set."""
    studies = difficulty.shape[0]
    quality = design.quality_sd * rng.standard_normal((studies, seeds, 1))
    shift = design.shift_sd * rng.standard_normal((studies, seeds, 1))
    interaction = design.interaction_sd * rng.standard_normal((studies, seeds, IMAGES))
    return (design.separation + quality + gain) * (2 * LABELS - 1) + difficulty + shift + interaction


def auc(logits: np.ndarray) -> np.ndarray:
    """Mann–Whitney ROC AUC of each run (continuous scores: no ties)."""
    ranks = stats.rankdata(logits, axis=-1)
    return (ranks[..., NEGATIVES:].sum(-1) - POSITIVES * (POSITIVES + 1) / 2) / (POSITIVES * NEGATIVES)


def correct(logits: np.ndarray) -> np.ndarray:
    return ((logits >= 0) == (LABELS == 1)).astype(np.float32)  # probability >= 0.5 is logit >= 0


def weighted_auc(logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(studies, replicates, runs) ROC AUC under each study's image weights (studies, replicates, images).

    For each positive, the drawn weight of the negatives scored below it is a cumulative sum over the run's
    negatives in score order, read at the positive's place among them: no pair matrix, no Python loop.
    Weights are whole counts, so the float32 sums are exact.
    """
    studies, runs, _ = logits.shape
    replicates = weights.shape[1]
    by_image = np.ascontiguousarray(weights.transpose(0, 2, 1))  # (studies, images, replicates)
    order = np.argsort(logits, axis=-1)
    positive = order >= NEGATIVES
    negatives_below = np.cumsum(~positive, axis=-1)[positive].reshape(studies, runs, POSITIVES)
    place = np.empty_like(negatives_below)  # for each positive, in image order: how many negatives lie below it
    np.put_along_axis(place, order[positive].reshape(studies, runs, POSITIVES) - NEGATIVES, negatives_below, -1)

    negatives_in_order = order[~positive].reshape(studies, runs, NEGATIVES)
    drawn_negatives = by_image[np.arange(studies)[:, None, None], negatives_in_order]  # (studies, runs, neg, reps)
    cumulative = np.zeros((studies, runs, NEGATIVES + 1, replicates), np.float32)
    np.cumsum(drawn_negatives, axis=2, out=cumulative[:, :, 1:])
    flat_rows = np.arange(studies * runs)[:, None] * (NEGATIVES + 1) + place.reshape(studies * runs, POSITIVES)
    below = cumulative.reshape(-1, replicates)[flat_rows.ravel()].reshape(studies, runs, POSITIVES, replicates)
    above = np.einsum("srpk,spk->srk", below, by_image[:, NEGATIVES:])  # drawn (positive, negative) pairs in order
    pairs = weights[..., NEGATIVES:].sum(-1, dtype=float) * weights[..., :NEGATIVES].sum(-1, dtype=float)
    return (above.astype(float) / pairs[:, None, :]).transpose(0, 2, 1)


def weighted_accuracy(logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(studies, replicates, runs) accuracy under each study's image weights."""
    return (weights @ correct(logits).transpose(0, 2, 1)).astype(float) / IMAGES


def simulate(
    rng, design: Design, studies: int, seeds: int, gain: float, replicates=REPLICATES, metrics=METRICS
) -> dict:
    """metric -> (diffs (studies, seeds), image_diffs (studies, replicates, seeds)): A − B, paired by seed index.

    Each study has its own test set (fresh image difficulties) and its own replicate image draws, shared by
    all of its runs. With replicates=0 only the diffs (for the Monte-Carlo truth).
    """
    parts = {m: ([], []) for m in metrics}
    for start in range(0, studies, CHUNK):
        size = min(CHUNK, studies - start)
        difficulty = DIFFICULTY_SD * rng.standard_normal((size, 1, IMAGES))
        a, b = run_logits(rng, design, difficulty, seeds, gain), run_logits(rng, design, difficulty, seeds, 0.0)
        if "auc" in metrics:
            parts["auc"][0].append(auc(a) - auc(b))
        if "accuracy" in metrics:
            parts["accuracy"][0].append(correct(a).mean(-1) - correct(b).mean(-1))
        if replicates:
            uniform = np.full(IMAGES, 1.0 / IMAGES)
            weights = rng.multinomial(IMAGES, uniform, size=(size, replicates)).astype(np.float32)
            if "auc" in metrics:
                parts["auc"][1].append(weighted_auc(a, weights) - weighted_auc(b, weights))
            if "accuracy" in metrics:
                parts["accuracy"][1].append(weighted_accuracy(a, weights) - weighted_accuracy(b, weights))
    return {m: tuple(np.concatenate(p) if p else None for p in parts[m]) for m in metrics}


def test_fast_bootstrap_metrics_match_analysis_bootstrap():
    rng = np.random.default_rng(5)
    logits = run_logits(rng, SHIFT, DIFFICULTY_SD * rng.standard_normal((2, 1, IMAGES)), 3, 0.0)
    weights = rng.multinomial(IMAGES, np.full(IMAGES, 1.0 / IMAGES), size=(2, 20)).astype(np.float32)
    fast_auc, fast_accuracy = weighted_auc(logits, weights), weighted_accuracy(logits, weights)
    for study in range(2):
        for run in range(3):
            reference = weighted_metrics(LABELS, expit(logits[study, run]), 0.5, weights[study])
            np.testing.assert_allclose(fast_auc[study, :, run], reference["test_auc"], rtol=1e-9)
            np.testing.assert_allclose(fast_accuracy[study, :, run], reference["test_accuracy"], rtol=1e-9)
    ones = np.ones((2, 1, IMAGES), np.float32)
    np.testing.assert_allclose(weighted_auc(logits, ones)[:, 0], auc(logits), rtol=1e-9)


def test_simulated_runs_are_sized_like_the_real_ones():
    rng = np.random.default_rng(11)
    for design in (SHIFT, SHIFT_AND_QUALITY):
        logits = run_logits(rng, design, DIFFICULTY_SD * rng.standard_normal((200, 1, IMAGES)), 6, 0.0)
        aucs, accuracies = auc(logits), correct(logits).mean(-1)
        assert 0.90 <= aucs.mean() <= 0.95 and 0.008 <= aucs.std(axis=1, ddof=1).mean() <= 0.012
        assert 0.80 <= accuracies.mean() <= 0.90 and 0.016 <= accuracies.std(axis=1, ddof=1).mean() <= 0.024


class Simulation:
    """Simulated studies of each design, each study judged once per seed count (the first n seeds of each arm).

    Null studies (A and B identical: the true difference is exactly 0) are judged with the metric's default
    margin; gain studies with half their true difference as the margin. The true difference is the expected
    A − B over seeds and fresh test sets, from 10,000 one-seed pairs (Monte-Carlo error about 0.0002).
    """

    def __init__(self, rng, design: Design, null: bool):
        self.design = design
        truth_draws = simulate(rng, design, 10_000, 1, GAIN, replicates=0)
        self.truth = {
            "null": dict.fromkeys(METRICS, 0.0),
            "gain": {m: float(truth_draws[m][0].mean()) for m in METRICS},
        }
        self.studies = {"gain": simulate(rng, design, GAIN_STUDIES, max(SEED_COUNTS), GAIN)}
        if null:
            self.studies["null"] = simulate(rng, design, NULL_STUDIES, SEEDS, 0.0)
        self.margins = {"null": DEFAULT_MARGINS, "gain": {m: abs(t) / 2 for m, t in self.truth["gain"].items()}}
        self._judged = {}

    def rows(self, scenario: str, metric: str, n: int) -> list[dict]:
        key = scenario, metric, n
        if key not in self._judged:
            diffs, image_diffs = self.studies[scenario][metric]
            margin = self.margins[scenario][metric]
            self._judged[key] = [judge(d[:n], i[:, :n], margin=margin) for d, i in zip(diffs, image_diffs, strict=True)]
        return self._judged[key]


DEFAULT_MARGINS = {"auc": MARGINS["test_auc"], "accuracy": MARGINS["test_accuracy"]}


@pytest.fixture(scope="module")
def simulations() -> dict[str, Simulation]:
    rng = np.random.default_rng(20240613)
    return {"shift": Simulation(rng, SHIFT, null=True), "shift and quality": Simulation(rng, SHIFT_AND_QUALITY, False)}


def check(rates: dict, bound: float, at_most: bool) -> None:
    for key, rate in rates.items():
        print(f"  {key}: {rate:.3f}")
    failed = {k: r for k, r in rates.items() if (r > bound if at_most else r < bound)}
    assert not failed, f"{'above' if at_most else 'below'} {bound}: {failed}"


def test_simulated_false_better_or_worse_when_nothing_differs(simulations):
    simulation, rates = simulations["shift"], {}
    for metric in METRICS:
        for n in SEED_COUNTS:
            found = verdicts(simulation.rows("null", metric, n))
            rates[f"{metric} n={n}"] = np.isin(found, ["better", "worse"]).mean()
    print("\nfalse better/worse under the null")
    check(rates, 0.06, at_most=True)


@pytest.mark.parametrize("design, scenario", [("shift", "gain"), ("shift", "null"), ("shift and quality", "gain")])
def test_simulated_coverage_of_the_true_difference(simulations, design, scenario):
    """The Welch–Satterthwaite rule failed here for "shift and quality" at n = 2 (accuracy 0.926): see the docstring."""
    simulation, rates = simulations[design], {}
    for metric in METRICS:
        truth = simulation.truth[scenario][metric]
        for n in SEED_COUNTS:
            covered = [row["ci_low"] <= truth <= row["ci_high"] for row in simulation.rows(scenario, metric, n)]
            rates[f"{metric} n={n} (truth {truth:+.4f})"] = float(np.mean(covered))
    print(f"\ncoverage of the 95 % interval, design {design}, {scenario}")
    check(rates, 0.94, at_most=False)


def test_simulated_false_equivalence_at_twice_the_margin(simulations):
    simulation, rates = simulations["shift"], {}
    for metric in METRICS:
        for n in SEED_COUNTS:
            found = verdicts(simulation.rows("gain", metric, n))
            rates[f"{metric} n={n} (margin {simulation.margins['gain'][metric]:.4f})"] = (found == "equivalent").mean()
    print("\n'equivalent' when the true difference is twice the margin")
    check(rates, 0.05, at_most=True)


def test_simulated_sequential_seeds_auto(simulations):
    """seeds=auto: 2 seeds, then one more per round up to 6, each look at 0.05 / 5; stop at the first claim."""
    simulation, rates = simulations["shift"], {}
    first, last = 2, SEEDS
    alpha = sequential_alpha(0.05, looks(first, last))
    for metric in METRICS:
        final = np.full(NULL_STUDIES, "undecided", dtype=object)
        for n in range(first, last + 1):  # every look for every study; a study's verdict is its first claim
            found = verdicts(simulation.rows("null", metric, n), alpha)
            final = np.where((final == "undecided") & (found != "undecided"), found, final)
        rates[f"{metric} (alpha {alpha:.3f} per look)"] = np.isin(final, ["better", "worse"]).mean()
    print("\nsequential: false better/worse under the null")
    check(rates, 0.06, at_most=True)


# A's extra separation for about +0.02 accuracy (the gain studies' GAIN gives about +0.011)
ACCURACY_GAINS = {"shift": 0.145, "shift and quality": 0.125}


def test_simulated_power(simulations):
    """The share of "better" verdicts when A is truly better: by +0.010 ROC AUC (the gain studies above) and by
    +0.02 accuracy (studies of their own, fresh draws, the accuracy replicates only). Power grows with n."""
    rng, rates = np.random.default_rng(20240614), {}
    for name, simulation in simulations.items():
        power = {"auc": [], "accuracy": []}
        for n in SEED_COUNTS:
            power["auc"].append((verdicts(simulation.rows("gain", "auc", n)) == "better").mean())
        gain, only = ACCURACY_GAINS[name], ("accuracy",)
        truth = float(
            simulate(rng, simulation.design, 10_000, 1, gain, replicates=0, metrics=only)["accuracy"][0].mean()
        )
        diffs, image_diffs = simulate(rng, simulation.design, GAIN_STUDIES, max(SEED_COUNTS), gain, metrics=only)[
            "accuracy"
        ]
        for n in SEED_COUNTS:
            rows = [
                judge(d[:n], i[:, :n], margin=MARGINS["test_accuracy"]) for d, i in zip(diffs, image_diffs, strict=True)
            ]
            power["accuracy"].append((verdicts(rows) == "better").mean())
        truths = {"auc": simulation.truth["gain"]["auc"], "accuracy": truth}
        for metric in METRICS:
            for n, rate in zip(SEED_COUNTS, power[metric], strict=True):
                rates[f"{name}, {metric} n={n} (truth {truths[metric]:+.4f})"] = rate
            assert np.all(np.diff(power[metric]) > 0), (name, metric, power[metric])
        assert 0.018 <= truth <= 0.022, truth  # sized as meant
    print("\npower: 'better' when A is truly better")
    for key, rate in rates.items():
        print(f"  {key}: {rate:.3f}")
