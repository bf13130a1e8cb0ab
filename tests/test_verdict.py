"""The report's verdict: bootstrap over seeds and test images, DeLong, McNemar, Holm, seed ensembles, planning,
interactions. Each hand-written piece is checked against an independent computation (scikit-learn, scipy,
statsmodels, or the definition written out directly); the report-level checks run on hand-built runs whose
logged metrics come from their logged predictions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from analysis_helpers import shared_cli_report, shared_store
from scipy import stats
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from ablation.metrics import binary_metrics
from analysis.bootstrap import Bootstrap, ScoredRuns, image_weights, interval, weighted_metrics
from analysis.ensembles import delong, delong_interval, delong_test, mcnemar_test
from analysis.report import build_report
from analysis.runs import TEST_METRICS, load_study
from analysis.stats import detectable_difference, seeds_for_halfwidth


def _scores(n: int = 624, separation: float = 1.6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A test split shaped like Kermany's (62.5 % pneumonia), with tied scores at both ends as a sigmoid gives."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) >= n * 0.375).astype(int)
    scores = 1 / (1 + np.exp(-(rng.normal(0, 1.2, n) + separation * (labels - 0.5) * 2)))
    return labels, np.round(scores, 3)


def test_weighted_metrics_are_scikit_learns_on_the_resampled_images():
    labels, scores = _scores()
    weights = np.vstack([np.ones(len(labels)), image_weights(len(labels), 3, np.random.default_rng(1))])
    ours = weighted_metrics(labels, scores, 0.5, weights)
    for row in range(len(weights)):
        drawn = np.repeat(np.arange(len(labels)), weights[row].astype(int))  # the replicate, written out
        expected = binary_metrics(labels[drawn], scores[drawn], 0.5)
        for key, value in expected.items():
            assert ours[f"test_{key}"][row] == pytest.approx(value, abs=1e-12), (row, key)


def test_delong_equals_its_structural_components_computed_directly():
    labels, first = _scores(200, 1.0, seed=2)
    second = np.round(first + np.random.default_rng(3).normal(0, 0.2, len(first)), 2)
    aucs, covariance = delong(labels, np.vstack([first, second]))
    assert aucs == pytest.approx([roc_auc_score(labels, first), roc_auc_score(labels, second)], abs=1e-12)

    def components(scores):  # psi(x, y) = 1 if x > y, 1/2 if tied, over every positive-negative pair
        pos, neg = scores[labels == 1], scores[labels == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    (p1, n1), (p2, n2) = components(first), components(second)
    m, n = len(p1), len(n1)
    direct = np.array(
        [
            [np.var(p1, ddof=1) / m + np.var(n1, ddof=1) / n, np.cov(p1, p2)[0, 1] / m + np.cov(n1, n2)[0, 1] / n],
            [np.cov(p1, p2)[0, 1] / m + np.cov(n1, n2)[0, 1] / n, np.var(p2, ddof=1) / m + np.var(n2, ddof=1) / n],
        ]
    )
    assert covariance == pytest.approx(direct, rel=1e-10)
    diff, p = delong_test(labels, first, second)
    z = diff / math.sqrt(direct[0, 0] + direct[1, 1] - 2 * direct[0, 1])
    assert p == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-10)


def test_one_run_bootstrap_interval_of_auc_agrees_with_delong_within_0_01():
    labels, scores = _scores()
    boot = Bootstrap(ScoredRuns(["run"], [str(i) for i in range(len(labels))], labels, scores[None], [0.5]))
    low, high = interval(boot.mean(["run"], "test_auc", "n=1"))
    auc, d_low, d_high = delong_interval(labels, scores)
    assert 0.9 < auc < 0.99
    assert abs(low - d_low) < 0.01 and abs(high - d_high) < 0.01
    assert 0 <= low <= auc <= high <= 1


def test_test_image_bootstrap_agrees_with_scipys_at_one_level():
    labels, scores = _scores(seed=4)
    boot = Bootstrap(ScoredRuns(["run"], [str(i) for i in range(len(labels))], labels, scores[None], [0.5]))
    ours = interval(boot.mean(["run"], "test_accuracy", "n=1"))
    correct = ((scores >= 0.5) == labels).astype(float)
    reference = stats.bootstrap((correct,), np.mean, n_resamples=2000, method="percentile", random_state=0)
    assert ours == pytest.approx(tuple(reference.confidence_interval), abs=0.01)


def test_mcnemar_exact_is_a_binomial_test_of_the_discordant_images():
    labels, scores = _scores(100, 0.8, seed=5)
    first, second = (scores >= 0.5).astype(int), (scores >= 0.6).astype(int)
    diff, p = mcnemar_test(labels, first, second)
    only_first = int(np.sum((first == labels) & (second != labels)))
    only_second = int(np.sum((first != labels) & (second == labels)))
    assert diff == pytest.approx((only_first - only_second) / len(labels))
    assert p == pytest.approx(stats.binomtest(only_first, only_first + only_second, 0.5).pvalue)


def test_seeds_for_halfwidth_is_the_smallest_n_and_the_detectable_difference_has_80_percent_power():
    n = seeds_for_halfwidth(0.02, 0.01)
    half = lambda k: stats.t.ppf(0.975, k - 1) * 0.02 / math.sqrt(k)  # noqa: E731
    assert half(n) <= 0.01 < half(n - 1)
    mde = detectable_difference(0.02, 5)
    power = TTestPower().power(effect_size=mde / 0.02, nobs=5, alpha=0.05, alternative="two-sided")
    assert power == pytest.approx(0.8, abs=1e-6)
    assert math.isnan(detectable_difference(0.02, 1))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The shared store and the output of `python -m analysis report` on it (the one test_analysis.py reads)."""
    return shared_store(tmp_path_factory), shared_cli_report(tmp_path_factory)


def _csv(out, name):
    return pd.read_csv(out / name, dtype={c: str for c in ("dropout", "level", "level_a", "level_b", "reference")})


@pytest.mark.slow  # reads the report `python -m analysis report` wrote
def test_holm_columns_are_statsmodels_holm_per_metric(report):
    _, out = report
    effects = _csv(out, "effects_table.csv")
    main = _csv(out, "main_effects.csv")
    main = main[main["test"] != "reference"]
    for table in (effects, main):
        for _, group in table.groupby("metric"):
            assert group["p_holm"].to_numpy() == pytest.approx(multipletests(group["p_value"], method="holm")[1])
            holm_equivalence = multipletests(group["p_equivalence"], method="holm")[1]
            assert group["p_equivalence_holm"].to_numpy() == pytest.approx(holm_equivalence)
            better = (group["p_holm"] < 0.05) & (group["diff"] > 0)
            assert ((group["verdict"] == "better") == better).all()
    ensemble = _csv(out, "ensemble_effects.csv")
    for _, group in ensemble.groupby("metric"):
        assert group["p_holm"].to_numpy() == pytest.approx(multipletests(group["p_value"], method="holm")[1])
    assert set(ensemble["test"]) == {"DeLong", "McNemar (exact)"}


@pytest.mark.slow  # reads the report `python -m analysis report` wrote
def test_ensemble_metrics_are_scikit_learns_on_the_averaged_probabilities(report):
    store, out = report
    table = _csv(out, "ensemble_table.csv").set_index(["model", "dropout"])
    for (model, dropout), row in table.iterrows():
        seeds = sorted(s for (m, d, s) in store["values"] if (m, d) == (model, dropout))
        mean = np.mean([store["probabilities"](model, dropout, s, "test") for s in seeds], axis=0)
        expected = binary_metrics(store["labels"], mean, 0.5)
        assert row["n"] == len(seeds)
        for key, value in expected.items():
            assert row[f"test_{key}"] == pytest.approx(value), (model, dropout, key)
        assert row["test_auc_low"] <= row["test_auc"] <= row["test_auc_high"]


@pytest.mark.slow  # reads the report `python -m analysis report` wrote
def test_every_interval_lies_in_the_metrics_range_and_holds_the_mean(report):
    _, out = report
    table = _csv(out, "ablation_table.csv")
    for m in TEST_METRICS:
        low, high, mean = table[f"{m}_boot_low"], table[f"{m}_boot_high"], table[f"{m}_mean"]
        assert ((0 <= low) & (low <= high) & (high <= 1)).all(), m
        assert ((low <= mean + 1e-9) & (mean - 1e-9 <= high)).all(), m
    ensembles = _csv(out, "ensemble_table.csv")
    assert ((ensembles["test_auc_low"] >= 0) & (ensembles["test_auc_high"] <= 1)).all()
    effects = _csv(out, "effects_table.csv")
    assert ((effects["boot_low"] >= -1) & (effects["boot_high"] <= 1) & (effects["boot_low"] <= effects["diff"])).all()


@pytest.mark.slow  # reads the report `python -m analysis report` wrote
def test_the_same_seed_gives_the_same_report(report, tmp_path):
    store, out = report
    again = tmp_path / "again"
    build_report(load_study(store["uri"], store["experiment"]), again)
    for name in ("ablation_table.csv", "effects_table.csv", "main_effects.csv", "planning.csv", "interactions.csv"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


@pytest.mark.slow  # reads the report `python -m analysis report` wrote
def test_a_single_run_gets_the_test_image_interval(report, tmp_path):
    store, _ = report
    out = tmp_path / "single"
    build_report(load_study(store["uri"], store["experiment"], sweep=store["old_parent"]), out, replicates=500)
    [row] = _csv(out, "ablation_table.csv").to_dict("records")
    assert row["n"] == 1 and math.isnan(row["test_auc_ci_low"])  # no seed-only interval at n = 1
    assert 0 < row["test_auc_boot_low"] < row["test_auc_mean"] < row["test_auc_boot_high"] < 1


@pytest.mark.slow  # reads the report `python -m analysis report` wrote
def test_interactions_are_differences_of_differences_over_complete_blocks(report):
    store, out = report
    table = _csv(out, "interactions.csv").set_index("metric")
    row = table.loc["test_auc"]
    assert (row["factor_a"], row["level_a"], row["factor_b"], row["level_b"]) == ("model", "resnet18", "dropout", "0.5")
    v = store["values"]
    blocks = [  # seed 3 lacks (resnet18, 0.5): the failed run
        v[("resnet18", "0.5", s)]["test_auc"]
        - v[("cnn", "0.5", s)]["test_auc"]
        - v[("resnet18", "0.0", s)]["test_auc"]
        + v[("cnn", "0.0", s)]["test_auc"]
        for s in (1, 2)
    ]
    assert row["pairs"] == 2 and row["diff"] == pytest.approx(np.mean(blocks))
    assert row["boot_low"] <= row["diff"] <= row["boot_high"]
    anova = _csv(out, "anova.csv")
    assert list(anova["source"]) == ["model", "dropout", "seed (block)", "model:dropout", "Residual"]


@pytest.mark.slow  # reads the report `python -m analysis report` wrote
def test_planning_rows_follow_the_paired_spread(report):
    store, out = report
    planning = _csv(out, "planning.csv").set_index(["model", "dropout", "metric"])
    row = planning.loc[("cnn", "0.5", "test_auc")]
    v = store["values"]
    diffs = [v[("cnn", "0.5", s)]["test_auc"] - v[("cnn", "0.0", s)]["test_auc"] for s in (1, 2, 3)]
    assert row["n"] == 3 and row["sd_diff"] == pytest.approx(np.std(diffs, ddof=1))
    assert row["seeds_for_halfwidth"] == seeds_for_halfwidth(row["sd_diff"], 0.01)
    assert 0 < row["test_set_halfwidth"] < 0.2  # 200 test images: a floor that more seeds cannot lower
