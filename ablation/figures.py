"""The figures each run of `python -m ablation` logs: learning curves, confusion matrix, ROC curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # runs write files; no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402

from ablation.contract import CLASSES  # noqa: E402


def learning_curves(history: dict[str, list[float]], best_epoch: int, path: Path) -> Path:
    """Training and validation loss, accuracy and ROC AUC per epoch, the kept epoch marked."""
    panels = [("loss", "Binary cross-entropy"), ("accuracy", "Accuracy"), ("auc", "ROC AUC")]
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.8), layout="constrained")
    for ax, (key, label) in zip(axes, panels, strict=True):
        epochs = np.arange(1, len(history[key]) + 1)
        ax.plot(epochs, history[key], marker="o", label="training")
        ax.plot(epochs, history[f"val_{key}"], marker="o", label="validation")
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"kept epoch ({best_epoch})")
        ax.set(xlabel="Epoch", ylabel=label, title=label)
        ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_matrix(labels: np.ndarray, probabilities: np.ndarray, threshold: float, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4), layout="constrained")
    ConfusionMatrixDisplay.from_predictions(
        labels,
        (probabilities >= threshold).astype(int),
        labels=[0, 1],
        display_labels=CLASSES,
        cmap="Blues",
        colorbar=False,
        ax=ax,
    )
    ax.set_title(f"Test split, threshold {threshold:.2f}")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def roc_curve(labels: np.ndarray, probabilities: np.ndarray, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4.2), layout="constrained")
    RocCurveDisplay.from_predictions(labels, probabilities, name="test split", ax=ax, plot_chance_level=True)
    ax.set(xlabel="False positive rate (1 - specificity)", ylabel="True positive rate (sensitivity)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
