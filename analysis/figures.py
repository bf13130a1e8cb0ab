"""Figures of `python -m analysis report`: learning curves, ROC curves, confusion matrices, effects."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from sklearn.metrics import auc, confusion_matrix, roc_curve

from ablation.contract import CLASSES
from analysis.stats import config_keys, label, ordered_configs

if "inline" not in os.environ.get("MPLBACKEND", ""):  # a Jupyter kernel's figures show in the notebook
    matplotlib.use("Agg")  # headless: CI and training machines have no display
NETWORK = "model"
sns.set_theme(style="whitegrid", context="notebook")


def _save(fig, path: Path | None):
    """`path`, the figure written there and closed; without a path, the figure itself (a notebook shows it)."""
    if path is None:
        return fig
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _palette(n: int):
    return sns.color_palette("tab10" if n <= 10 else "husl", n)


def learning_curves(runs: pd.DataFrame, factors: list[str], hist: pd.DataFrame, path: Path | None = None):
    """Rows loss / accuracy, one column per network; colour = the other factors, dashed = training,
    solid = validation; line = mean over seeds, band = min–max over seeds."""
    panel_by = [NETWORK] if NETWORK in factors else []
    others = [f for f in factors if f not in panel_by]
    panels = [label(k, panel_by) for k in ordered_configs(runs, panel_by)]
    colour_keys = [label(k, others) for k in ordered_configs(runs, others)]
    colours = dict(zip(colour_keys, _palette(len(colour_keys)), strict=True))
    run_panel = [label(k, panel_by) for k in config_keys(runs, panel_by)]
    run_colour = [label(k, others) for k in config_keys(runs, others)]
    curves = (
        hist.assign(
            panel=hist["run_id"].map(dict(zip(runs["run_id"], run_panel, strict=True))),
            colour=hist["run_id"].map(dict(zip(runs["run_id"], run_colour, strict=True))),
        )
        .groupby(["panel", "key", "colour", "step"])["value"]
        .agg(["mean", "min", "max"])
    )
    present = set(curves.index.droplevel("step"))

    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels) + 2.5, 7.5), squeeze=False, sharex=True)
    for col, panel in enumerate(panels):
        for row, metric in enumerate(("loss", "accuracy")):
            ax = axes[row, col]
            for colour in colour_keys:
                for prefix, style in (("", "--"), ("val_", "-")):
                    if (panel, prefix + metric, colour) not in present:
                        continue
                    agg = curves.loc[(panel, prefix + metric, colour)]
                    ax.plot(agg.index, agg["mean"], style, color=colours[colour], lw=1.6)
                    ax.fill_between(agg.index, agg["min"], agg["max"], color=colours[colour], alpha=0.15, lw=0)
            ax.set_title(panel, fontsize=11)
            ax.set_ylabel("Loss (cross-entropy)" if metric == "loss" else "Accuracy (fraction correct)")
            if row == 1:
                ax.set_xlabel("Epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
    handles = [Line2D([], [], color=colours[k], lw=2, label=k) for k in colour_keys]
    handles += [
        Line2D([], [], color="0.3", ls="--", label="training"),
        Line2D([], [], color="0.3", label="validation"),
    ]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=9)
    fig.suptitle("Learning curves (mean over seeds, band = min–max)", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def roc_curves(best: list[dict], path: Path) -> Path:
    """best: one dict per network with `title`, `predictions` (file,label,probability) and `threshold`
    (confusion_matrices also reads `network`, `config` and `seed`)."""
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for item, colour in zip(best, _palette(len(best)), strict=True):
        pred = item["predictions"]
        fpr, tpr, _ = roc_curve(pred["label"], pred["probability"])
        ax.plot(fpr, tpr, color=colour, lw=2, label=f"{item['title']} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="0.5", label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
    ax.set_xlabel("False positive rate (1 − specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title("ROC curve of the best run per network (test set)", fontsize=11)
    # Below the axes: inside, it would hide the steep start of the curves.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, frameon=False)
    return _save(fig, path)


def confusion_matrices(best: list[dict], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(best), figsize=(4.8 * len(best), 4.2), squeeze=False)
    for ax, item in zip(axes[0], best, strict=True):
        pred = item["predictions"]
        matrix = confusion_matrix(pred["label"], (pred["probability"] >= item["threshold"]).astype(int), labels=[0, 1])
        sns.heatmap(
            matrix,
            annot=True,
            fmt="d",
            cmap="Blues",
            cbar=False,
            square=True,
            ax=ax,
            xticklabels=CLASSES,
            yticklabels=CLASSES,
            annot_kws={"fontsize": 12},
        )
        ax.set_xlabel("Predicted class (images)")
        ax.set_ylabel("True class (images)")
        ax.tick_params(axis="y", labelrotation=0)
        config = textwrap.fill(item["config"], 38)
        ax.set_title(
            f"{item['network']}\n{config}\nseed {item['seed']}, threshold {item['threshold']:.2f}",
            fontsize=10,
        )
    fig.tight_layout()
    return _save(fig, path)


VERDICT_COLOURS = {"better": "C2", "worse": "C3", "equivalent": "C0", "undecided": "0.55"}


def effects_plot(effects: pd.DataFrame, factors: list[str], baseline_label: str, path: Path) -> Path:
    """Forest plot: each configuration's difference to the baseline with the verdict rule's 95% interval (seeds as
    replicates, the test images as a second noise), coloured by its verdict; none at one paired seed."""
    metrics = [("test_auc", "Δ test ROC AUC"), ("test_accuracy", "Δ test accuracy (fraction)")]
    first = effects[effects["metric"] == metrics[0][0]]
    labels = [label(tuple(r), factors) for r in first[factors].astype(str).itertuples(index=False)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.2 + 0.45 * len(labels)), sharey=True, squeeze=False)
    y = np.arange(len(labels))[::-1]
    for ax, (metric, xlabel) in zip(axes[0], metrics, strict=True):
        sel = effects[effects["metric"] == metric]
        for word, colour in VERDICT_COLOURS.items():
            mask = (sel["verdict"] == word).to_numpy()
            if mask.any():
                diff = sel["diff"].to_numpy()[mask]
                err = np.abs(sel[["ci_low", "ci_high"]].to_numpy()[mask].T - diff)
                ax.errorbar(diff, y[mask], xerr=np.nan_to_num(err), fmt="o", color=colour, capsize=3, label=word)
        ax.axvline(0, color="0.3", lw=1)
        ax.set_xlabel(xlabel)
        ax.set_yticks(y, labels)
    axes[0, -1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False, title="verdict")
    fig.suptitle(f"Effect vs baseline ({baseline_label}): mean difference over paired seeds, 95% interval, verdict")
    fig.tight_layout()
    return _save(fig, path)
