"""The A/A check: how often the verdict rule calls one arm better or worse when nothing differs.

`ablation-report calibrate --experiment NAME` (and a section of any report whose study has a configuration with at
least `MIN_SEEDS` seeds): each such configuration's seeds are split at random into two pseudo-arms of k seeds each,
many times, for k = 1, 2, 3, ...; the verdict rule (`analysis.compare.judge`, the report's own, with the test
images' noise from the same shared draws) judges arm A against arm B. Nothing differs between the arms, so every
"better" or "worse" is a false positive: the rule's error rate measured on real trainings, with a Monte-Carlo
interval (Wilson's, over the splits; the splits of one set of seeds are not independent, so read it as the
simulation's precision, not the seeds').
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from ablation.contract import MARGINS
from analysis.bootstrap import Bootstrap
from analysis.compare import judge
from analysis.stats import config_keys, label, ordered_configs

MIN_SEEDS = 6  # the fewest seeds of one configuration that give two arms of up to three
SPLITS = 500  # random splits per arm size
METRICS = ("test_auc", "test_accuracy")
ALPHA = 0.05


def eligible(finished: pd.DataFrame, factors: list[str], boot: Bootstrap | None) -> dict[tuple, list[str]]:
    """The configurations with at least `MIN_SEEDS` finished runs that logged their test predictions."""
    if boot is None:
        return {}
    keys = config_keys(finished, factors)
    runs = {key: [r for r in finished.loc[keys.map(key.__eq__), "run_id"] if r in boot.predictions.run_ids]
            for key in ordered_configs(finished, factors)}  # fmt: skip
    return {key: ids for key, ids in runs.items() if len(ids) >= MIN_SEEDS}


def calibrate(
    finished: pd.DataFrame,
    factors: list[str],
    boot: Bootstrap | None,
    splits: int = SPLITS,
    metrics=METRICS,
    seed: int = 0,
    margins: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Per eligible configuration, metric and arm size k: the share of random A/A splits the rule calls better or
    worse (`false_rate`, with `false_low/high`), and the share it calls equivalent."""
    rng = np.random.default_rng(seed)
    margins = {**MARGINS, **(margins or {})}
    by_id = finished.set_index("run_id")
    rows = []
    for key, run_ids in eligible(finished, factors, boot).items():
        columns = boot.columns(run_ids)
        for metric in metrics:
            logged = by_id.loc[run_ids, metric].to_numpy(float)
            images = boot.metrics[metric][:, columns]  # (replicates, runs)
            for k in range(1, len(run_ids) // 2 + 1):
                false = equivalent = 0
                for _ in range(splits):
                    order = rng.permutation(len(run_ids))
                    a, b = order[:k], order[k : 2 * k]
                    judged = judge(logged[a] - logged[b], images[:, a] - images[:, b], margin=margins[metric])
                    false += bool(judged["p_value"] < ALPHA)
                    equivalent += bool(judged["p_equivalence"] < ALPHA)
                low, high = proportion_confint(false, splits, alpha=0.05, method="wilson")
                rows.append(
                    {
                        "configuration": label(key, factors),
                        "seeds": len(run_ids),
                        "metric": metric,
                        "k": k,
                        "splits": splits,
                        "false_rate": false / splits,
                        "false_low": low,
                        "false_high": high,
                        "equivalent_rate": equivalent / splits,
                    }
                )
    return pd.DataFrame(rows)
