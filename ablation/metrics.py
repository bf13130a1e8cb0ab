"""Test metrics, the validation threshold and logits to probabilities: shared by training
(`ablation.train`), prediction (`ablation.predict`, `ablation.stretch`) and the analysis
(`analysis.transfer`), which must score predictions exactly alike. No TensorFlow here, and scikit-learn only
once something is scored: `ablation.contract` derives the logged metric names from `METRICS` at import.
"""

from __future__ import annotations

import numpy as np

# What `binary_metrics` returns, in this order; a run logs each as `test_<name>` (ablation.contract.TEST_METRICS).
METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc", "pr_auc")


def sigmoid(logits) -> np.ndarray:
    """Pneumonia probabilities (float64) from the model's logits, any shape."""
    x = np.asarray(logits, dtype=np.float64)
    with np.errstate(over="ignore"):  # exp(-logit) overflows to inf for a very negative logit: p = 0
        return 1.0 / (1.0 + np.exp(-x))


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """Test metrics of a probabilistic classifier at `threshold` (`METRICS`); recall is the sensitivity."""
    from sklearn import metrics

    predicted = (probabilities >= threshold).astype(int)
    tn, fp, fn, tp = metrics.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    return {
        "accuracy": metrics.accuracy_score(labels, predicted),
        "precision": metrics.precision_score(labels, predicted, zero_division=0),
        "recall": metrics.recall_score(labels, predicted, zero_division=0),
        "specificity": tn / (tn + fp) if tn + fp else 0.0,
        "f1": metrics.f1_score(labels, predicted, zero_division=0),
        "auc": metrics.roc_auc_score(labels, probabilities),
        "pr_auc": metrics.average_precision_score(labels, probabilities),
    }


def youden_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 on the given (validation) data."""
    from sklearn import metrics

    fpr, tpr, thresholds = metrics.roc_curve(labels, probabilities)
    best = int(np.argmax(tpr - fpr))
    return float(np.clip(thresholds[best], 1e-6, 1 - 1e-6))  # roc_curve's first threshold is inf


def midpoint_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The threshold midway between the classes on the given (validation) data: the mean of the two classes'
    median logits, as a probability. Where validation separates the classes almost perfectly, Youden's J sits at
    the edge of one class (wherever its last errors are), so a shift of that class on new data crosses it; the
    midpoint keeps a margin from both."""
    from scipy.special import logit

    logits = logit(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1 - 1e-12))
    labels = np.asarray(labels)
    middle = (np.median(logits[labels == 0]) + np.median(logits[labels == 1])) / 2
    return float(np.clip(sigmoid(middle), 1e-6, 1 - 1e-6))


def prior_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """For a model trained class-balanced (`class_weighting` oversample or balanced), whose probabilities assume
    the classes equally common: the threshold that gives the class prior of train/ back. Posterior odds are the
    balanced odds times pi / (1 - pi), pi the pneumonia share, so they pass 1 where the balanced probability passes
    1 - pi, the NORMAL share; it is read off the (validation) labels, drawn from train/ by patient within each
    class. The probabilities are not needed."""
    return float(np.clip(np.mean(np.asarray(labels) == 0), 1e-6, 1 - 1e-6))


THRESHOLD_RULES = {"youden": youden_threshold, "midpoint": midpoint_threshold, "prior": prior_threshold}
