"""Two sources of uncertainty for `python -m analysis report`: the seeds and the test images.

A configuration's test metric varies with the seed it was trained with and with the 624 test images it
happened to be scored on. The hierarchical bootstrap here resamples both: in each replicate, the test
images are drawn with replacement once, as multinomial weights shared by every run (all runs score the
same test set), and then the seeds of a configuration (or the matched units of a comparison) are drawn
with replacement. Each run's metrics under all replicates' image weights are computed at once, as
weighted confusion counts and weighted ROC / precision-recall sums: no Python loop over replicates.

Intervals are percentile intervals (2.5 % and 97.5 % of the replicates), so they lie in the metric's
range; a comparison's two-sided p-value is 2 x the smaller tail of its replicates around 0, with the
usual +1 correction. `scipy.stats.bootstrap` resamples one level of independent observations; it cannot
share one image draw between runs, hence the hand-written resampling (tested against it at one level).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ablation.contract import DEFAULT_THRESHOLD, TEST_METRICS, image_key
from ablation.metrics import METRICS
from analysis.runs import AnalysisError

REPLICATES = 2000
SEED = 0  # the same report twice
LEVEL = 0.95


@dataclass
class ScoredRuns:
    """Every run's test probabilities on one common, ordered list of test images."""

    run_ids: list[str]
    files: list[str]
    labels: np.ndarray  # (images,) 0 or 1
    probabilities: np.ndarray  # (runs, images)
    thresholds: np.ndarray  # (runs,)

    def column(self, run_id: str) -> int:
        return self.run_ids.index(run_id)


def align(predictions: dict[str, pd.DataFrame], thresholds: dict[str, float]) -> ScoredRuns | None:
    """The runs' `test_predictions.csv` frames (file, label, probability) on the files they all share."""
    if not predictions:
        return None
    frames = {
        run_id: frame.assign(file=frame["file"].map(image_key)).drop_duplicates("file").set_index("file")
        for run_id, frame in predictions.items()
    }
    first = next(iter(frames.values()))
    files = [f for f in first.index if all(f in frame.index for frame in frames.values())]
    if not files:
        raise AnalysisError("the runs' test_predictions.csv share no test image: were they scored on one test set?")
    labels = first.loc[files, "label"].to_numpy(int)
    for run_id, frame in frames.items():
        if not np.array_equal(frame.loc[files, "label"].to_numpy(int), labels):
            raise AnalysisError(f"run {run_id}: its test_predictions.csv labels the shared test images differently")
    run_ids = list(frames)
    return ScoredRuns(
        run_ids=run_ids,
        files=files,
        labels=labels,
        probabilities=np.stack([frames[r].loc[files, "probability"].to_numpy(float) for r in run_ids]),
        thresholds=np.array([thresholds.get(r, DEFAULT_THRESHOLD) for r in run_ids], dtype=float),
    )


def image_weights(n_images: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """(replicates, images): how often each image is drawn in each replicate (a draw with replacement)."""
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=replicates).astype(float)


def _ranking_metrics(labels: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted ROC AUC (ties count half) and average precision (as scikit-learn's), one per replicate.

    `counts` is (images, replicates). Images are sorted by score, highest first; at the end of each group of
    tied scores, the cumulative drawn true and false positives give one point of the ROC and precision-recall
    curves. Rows are gathered (contiguous) and summed in float32, exact for counts this small.
    """
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    ends = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])  # last index of each tie group
    w = counts[order]
    drawn = np.cumsum(w, axis=0)[ends].astype(float)
    tp = np.cumsum(w * labels[order, None].astype(np.float32), axis=0)[ends].astype(float)
    fp = drawn - tp
    positives, negatives = tp[-1:], fp[-1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.vstack([np.zeros_like(positives), tp / positives])
        fpr = np.vstack([np.zeros_like(negatives), fp / negatives])
        auc = np.sum(np.diff(fpr, axis=0) * (tpr[1:] + tpr[:-1]) / 2, axis=0)
        precision = np.divide(tp, drawn, out=np.zeros_like(tp), where=drawn > 0)  # no image drawn yet: 0
        average_precision = np.sum(np.diff(tpr, axis=0) * precision, axis=0)
    return auc, average_precision


def weighted_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float, weights: np.ndarray) -> dict:
    """`ablation.metrics.binary_metrics` of one run under each row of image weights: metric -> (rows,)."""
    counts = np.ascontiguousarray(weights.T, dtype=np.float32)  # (images, replicates)
    predicted = (probabilities >= threshold).astype(np.float32)
    y = labels.astype(np.float32)
    drawn_positives, drawn = y @ counts, counts.sum(axis=0)
    tp = (predicted * y) @ counts
    fp = (predicted * (1 - y)) @ counts
    fn, tn = drawn_positives - tp, drawn - drawn_positives - fp
    tp, fp, fn, tn = (x.astype(float) for x in (tp, fp, fn, tn))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        specificity = np.where(tn + fp > 0, tn / (tn + fp), 0.0)
    auc, average_precision = _ranking_metrics(labels, probabilities, counts)
    accuracy = (tp + tn) / (tp + tn + fp + fn)
    scores = {"accuracy": accuracy, "precision": precision, "recall": recall, "specificity": specificity}
    scores |= {"f1": f1, "auc": auc, "pr_auc": average_precision}
    return {f"test_{name}": scores[name] for name in METRICS}


class Bootstrap:
    """Every run's test metrics under `replicates` shared draws of the test images; resampling on top."""

    def __init__(self, predictions: ScoredRuns, replicates: int = REPLICATES, seed: int = SEED):
        self.predictions, self.replicates, self.seed = predictions, replicates, seed
        weights = image_weights(len(predictions.labels), replicates, np.random.default_rng(seed))
        per_run = [
            weighted_metrics(predictions.labels, p, t, weights)
            for p, t in zip(predictions.probabilities, predictions.thresholds, strict=True)
        ]
        self.metrics = {m: np.stack([r[m] for r in per_run], axis=1) for m in TEST_METRICS}  # (replicates, runs)

    def _rng(self, *key: object) -> np.random.Generator:
        """A generator per comparison, so that a row's replicates do not depend on which rows came before."""
        return np.random.default_rng([self.seed, zlib.crc32(repr(key).encode())])

    def columns(self, run_ids: Sequence[str]) -> np.ndarray:
        return np.array([self.predictions.column(r) for r in run_ids], dtype=int)

    def _unit_values(self, units: np.ndarray, coefficients: Sequence[float], metric: str) -> np.ndarray:
        """(replicates, units): sum_j c_j * metric(run units[k, j]) under each image draw."""
        return self.metrics[metric][:, units] @ np.asarray(coefficients, dtype=float)

    def contrast(self, units: np.ndarray, coefficients: Sequence[float], metric: str, key: object) -> np.ndarray:
        """(replicates,): the mean over resampled units of sum_j c_j * metric(run units[k, j]).

        A unit is a seed (or a seed and the other factors' levels): its runs are resampled together, so
        a comparison stays paired on the seed as well as on the images.
        """
        return self.resample_seeds(self._unit_values(units, coefficients, metric), (key, metric))

    def resample_seeds(self, values: np.ndarray, key: object) -> np.ndarray:
        """(replicates,): the mean of (replicates, units) unit values under each image draw, over units redrawn with
        replacement, seeded by `key`."""
        draw = self._rng(key).integers(0, values.shape[1], size=(self.replicates, values.shape[1]))
        return np.take_along_axis(values, draw, axis=1).mean(axis=1)

    def mean(self, run_ids: Sequence[str], metric: str, key: object) -> np.ndarray:
        return self.contrast(self.columns(run_ids)[:, None], [1.0], metric, key)


def interval(replicates: np.ndarray) -> tuple[float, float]:
    finite = replicates[np.isfinite(replicates)]
    if not len(finite):
        return np.nan, np.nan
    low, high = np.quantile(finite, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(low), float(high)


def p_value(replicates: np.ndarray) -> float:
    """Two-sided bootstrap p-value of 'no difference': twice the smaller share of replicates at or beyond 0."""
    finite = replicates[np.isfinite(replicates)]
    if not len(finite):
        return np.nan
    below, above = np.sum(finite <= 0), np.sum(finite >= 0)
    return float(min(1.0, 2 * (1 + min(below, above)) / (1 + len(finite))))
