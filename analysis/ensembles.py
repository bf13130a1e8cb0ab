"""Seed ensembles and the classic paired tests of two classifiers on the same test images.

A configuration's seed ensemble averages its runs' test probabilities image by image and thresholds the
mean at the runs' threshold: often the best single number a configuration can claim. Two ensembles are
compared as a medical-imaging reviewer would: DeLong's test for the difference of two correlated ROC AUCs
(DeLong, DeLong & Clarke-Pearson 1988, in the fast midrank form of Sun & Xu 2014; no maintained Python
package provides it, so it is written here and tested against a direct computation of its structural
components) and McNemar's exact test for the difference in accuracy (statsmodels).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar

from ablation.contract import TEST_METRICS
from ablation.metrics import binary_metrics
from analysis.bootstrap import LEVEL, ScoredRuns


def _midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, tied values sharing the mean of their ranks."""
    return stats.rankdata(x, axis=-1)


def delong(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUCs of k classifiers scored on the same images, shape (k,), and DeLong's covariance, (k, k).

    `scores` is (k, images). With m positives and n negatives, each positive's structural component is the
    share of negatives it outranks (ties half), each negative's the share of positives that outrank it;
    the AUC's covariance is cov(positives' components) / m + cov(negatives' components) / n.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    positive = np.asarray(labels) == 1
    m, n = int(positive.sum()), int((~positive).sum())
    pos, neg = scores[:, positive], scores[:, ~positive]
    all_ranks = _midranks(np.hstack([pos, neg]))
    v_pos = (all_ranks[:, :m] - _midranks(pos)) / n  # per positive: negatives below it
    v_neg = 1.0 - (all_ranks[:, m:] - _midranks(neg)) / m  # per negative: positives above it
    aucs = v_pos.mean(axis=1)
    covariance = np.atleast_2d(np.cov(v_pos)) / m + np.atleast_2d(np.cov(v_neg)) / n
    return aucs, covariance


def delong_interval(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float, float]:
    """(AUC, low, high): the normal 95% interval of DeLong's variance, clipped to [0, 1]."""
    [auc], covariance = delong(labels, scores[None, :])
    half = stats.norm.ppf((1 + LEVEL) / 2) * math.sqrt(covariance[0, 0])
    return float(auc), max(0.0, float(auc - half)), min(1.0, float(auc + half))


def delong_test(labels: np.ndarray, first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
    """(AUC(first) − AUC(second), two-sided p) of DeLong's paired test on the same images."""
    aucs, cov = delong(labels, np.vstack([first, second]))
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = float(aucs[0] - aucs[1])
    if variance <= 0:
        return diff, (1.0 if diff == 0 else 0.0)
    return diff, float(2 * stats.norm.sf(abs(diff) / math.sqrt(variance)))


def mcnemar_test(labels: np.ndarray, first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
    """(accuracy(first) − accuracy(second), exact two-sided p) from the two sets of decisions (0/1)."""
    right_first, right_second = first == labels, second == labels
    table = [
        [np.sum(right_first & right_second), np.sum(right_first & ~right_second)],
        [np.sum(~right_first & right_second), np.sum(~right_first & ~right_second)],
    ]
    diff = float(right_first.mean() - right_second.mean())
    return diff, float(mcnemar(table, exact=True).pvalue)


def ensemble(predictions: ScoredRuns, run_ids: list[str]) -> tuple[np.ndarray, float]:
    """The mean probability of the runs per test image, and the runs' threshold (their mean, if they differ)."""
    columns = [predictions.column(r) for r in run_ids]
    return predictions.probabilities[columns].mean(axis=0), float(predictions.thresholds[columns].mean())


def ensemble_table(
    predictions: ScoredRuns,
    configs: list[tuple],
    factors: list[str],
    runs_of: dict[tuple, list[str]],
    finished: pd.DataFrame,
) -> pd.DataFrame:
    """One row per configuration: its seed ensemble's test metrics, DeLong's interval of its ROC AUC, and the
    mean of its runs' logged test metrics (`<metric>_runs_mean`; what the ensemble adds is the difference)."""
    logged = finished.set_index("run_id")
    rows = []
    for key in configs:
        run_ids = runs_of.get(key, [])
        if not run_ids:
            continue
        probabilities, threshold = ensemble(predictions, run_ids)
        scored = binary_metrics(predictions.labels, probabilities, threshold)
        _, low, high = delong_interval(predictions.labels, probabilities)
        row = {**dict(zip(factors, key, strict=True)), "n": len(run_ids), "threshold": threshold}
        row.update({f"test_{k}": float(v) for k, v in scored.items()})
        row.update(test_auc_low=low, test_auc_high=high)
        row.update({f"{m}_runs_mean": float(logged.loc[run_ids, m].mean()) for m in TEST_METRICS})
        rows.append(row)
    return pd.DataFrame(rows)


def ensemble_effects(
    predictions: ScoredRuns,
    configs: list[tuple],
    factors: list[str],
    runs_of: dict[tuple, list[str]],
    baseline: tuple,
) -> pd.DataFrame:
    """Each configuration's ensemble against the baseline's: DeLong for ROC AUC, McNemar for accuracy."""
    columns = [*factors, "metric", "diff", "p_value", "test"]
    if not runs_of.get(baseline):
        return pd.DataFrame(columns=columns)
    labels = predictions.labels
    base, base_threshold = ensemble(predictions, runs_of[baseline])
    rows = []
    for key in configs:
        if key == baseline or not runs_of.get(key):
            continue
        probabilities, threshold = ensemble(predictions, runs_of[key])
        levels = dict(zip(factors, key, strict=True))
        diff, p = delong_test(labels, probabilities, base)
        rows.append({**levels, "metric": "test_auc", "diff": diff, "p_value": p, "test": "DeLong"})
        diff, p = mcnemar_test(labels, (probabilities >= threshold).astype(int), (base >= base_threshold).astype(int))
        rows.append({**levels, "metric": "test_accuracy", "diff": diff, "p_value": p, "test": "McNemar (exact)"})
    return pd.DataFrame(rows, columns=columns)
