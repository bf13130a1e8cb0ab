"""Validation to test: does what a run chose on validation hold on the test split?

The Kermany test split is distributed differently from train/, and so from the validation split carved out
of it. From the `val_predictions.csv` and `test_predictions.csv` every run logs, this scores each run at
the threshold it used, at 0.5 and at Youden's J on validation, and compares the two splits' predicted
probabilities class by class (a calibration shift). The test-optimal threshold is shown for reference only:
it is chosen on test and never used.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ablation.contract import DEFAULT_THRESHOLD
from ablation.metrics import binary_metrics, youden_threshold
from analysis.stats import config_keys, label, ordered_configs


def run_transfer(val: pd.DataFrame, test: pd.DataFrame, threshold: float) -> dict[str, float]:
    """One run's validation and test figures; `val` and `test` have columns label, probability."""
    (vy, vp), (ty, tp) = ((d["label"].to_numpy(), d["probability"].to_numpy()) for d in (val, test))
    on_val, on_test = binary_metrics(vy, vp, threshold), binary_metrics(ty, tp, threshold)
    val_youden = youden_threshold(vy, vp)
    return {
        "threshold": threshold,
        "val_auc": on_val["auc"],
        "test_auc": on_test["auc"],
        "val_accuracy": on_val["accuracy"],
        "test_accuracy": on_test["accuracy"],
        "val_sensitivity": on_val["recall"],
        "test_sensitivity": on_test["recall"],
        "val_specificity": on_val["specificity"],
        "test_specificity": on_test["specificity"],
        "test_accuracy_at_0.5": binary_metrics(ty, tp, DEFAULT_THRESHOLD)["accuracy"],
        "val_youden_threshold": val_youden,
        "test_accuracy_at_val_youden": binary_metrics(ty, tp, val_youden)["accuracy"],
        "test_youden_threshold": youden_threshold(ty, tp),  # chosen on test: a reference, never used
        "val_normal_median_p": float(np.median(vp[vy == 0])),
        "test_normal_median_p": float(np.median(tp[ty == 0])),
        "val_pneumonia_median_p": float(np.median(vp[vy == 1])),
        "test_pneumonia_median_p": float(np.median(tp[ty == 1])),
    }


def transfer_runs(finished: pd.DataFrame, factors: list[str], predictions: dict) -> pd.DataFrame:
    """One row per finished run that logged both prediction files (`predictions`: run id -> split -> frame):
    its configuration, run id and figures."""
    rows = []
    for (_, run), key in zip(finished.iterrows(), config_keys(finished, factors), strict=True):
        logged = predictions.get(run["run_id"], {})
        if "val" not in logged or "test" not in logged:
            continue  # a run from before val_predictions.csv was logged
        threshold = DEFAULT_THRESHOLD if pd.isna(run.get("threshold")) else float(run["threshold"])
        figures = run_transfer(logged["val"], logged["test"], threshold)
        rows.append({"configuration": label(key, factors), "run_id": run["run_id"], **figures})
    return pd.DataFrame(rows)


def transfer_summary(per_run: pd.DataFrame, finished: pd.DataFrame, factors: list[str]) -> pd.DataFrame:
    """Mean over seeds of each configuration's figures, in the ablation table's order."""
    if per_run.empty:
        return per_run
    order = [label(key, factors) for key in ordered_configs(finished, factors)]
    grouped = per_run.drop(columns="run_id").groupby("configuration", sort=False)
    summary = grouped.mean().join(grouped.size().rename("n"))
    return summary.reindex([c for c in order if c in summary.index]).reset_index()
