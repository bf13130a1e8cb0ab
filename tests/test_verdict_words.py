"""The report's four verdict words on hand-built studies whose answer is known, its intervals inside the metric's
range, the A/A check, and the headline that states the verdicts (`analysis.comparisons`, `analysis.calibrate`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ablation.contract import MARGINS
from analysis import comparisons
from analysis.calibrate import calibrate
from analysis.stats import ablation_table, t_interval

RNG = np.random.default_rng(7)


def study(shifts: dict[str, float], seeds: int, spread: float = 0.01, noise: float = 0.0) -> pd.DataFrame:
    """Finished runs of configurations `dropout` = each key, `seeds` seeds each: a seed effect shared by every
    configuration (the seed fixes the split and the data order), plus each configuration's shift and its own noise."""
    seed_effect = RNG.normal(0, spread, seeds)
    rows = []
    for level, shift in shifts.items():
        for seed in range(seeds):
            value = 0.9 + shift + seed_effect[seed] + RNG.normal(0, noise)
            rows.append({"run_id": f"{level}-{seed}", "dropout": level, "seed": str(seed), "test_auc": value})
    frame = pd.DataFrame(rows)
    return frame.assign(test_accuracy=frame["test_auc"] - 0.05)


def judged(frame: pd.DataFrame) -> pd.DataFrame:
    built = comparisons.against_baseline(frame, ["dropout"], ("0",))
    return comparisons.judge_all(built, frame, None, metrics=("test_auc",), factors=["dropout"]).set_index("dropout")


def test_a_clear_gain_is_better_and_a_clear_loss_worse():
    words = judged(study({"0": 0.0, "0.5": 0.03, "0.9": -0.03}, seeds=5, noise=0.003))["verdict"]
    assert (words["0.5"], words["0.9"]) == ("better", "worse")


def test_a_clear_equivalence_is_equivalent_within_the_margin():
    row = judged(study({"0": 0.0, "0.1": 0.0}, seeds=6, noise=0.0005)).loc["0.1"]
    assert row["verdict"] == "equivalent" and row["margin"] == MARGINS["test_auc"]
    assert -row["margin"] < row["ci_low"] <= row["ci_high"] < row["margin"]


def test_two_seeds_that_disagree_are_undecided_and_one_seed_makes_no_claim():
    two = judged(study({"0": 0.0, "0.5": 0.01}, seeds=2, noise=0.01)).loc["0.5"]
    assert two["verdict"] == "undecided" and two["pairs"] == 2 and two["seeds_needed"] > 2
    one = study({"0": 0.0, "0.5": 0.03}, seeds=1)
    pooled = pd.concat([one, study({"0.9": 0.0}, seeds=4, noise=0.005).assign(seed=lambda f: f["seed"] + "x")])
    row = judged(pooled).loc["0.5"]
    assert row["verdict"] == "undecided" and row["pairs"] == 1 and np.isnan(row["p_value"])
    assert row["diff"] == pytest.approx(0.03)  # what the one pair shows
    assert 2 <= row["seeds_needed"] < 1000  # from the spread the other configuration's seeds show


def test_seeds_that_do_not_match_are_paired_in_order_and_still_judged():
    frame = study({"0": 0.0, "0.5": 0.03}, seeds=4, noise=0.002)
    frame.loc[frame["dropout"] == "0.5", "seed"] = ["10", "11", "12", "13"]  # another sweep's seeds
    row = judged(frame).loc["0.5"]
    assert row["pairs"] == 4 and row["diff"] == pytest.approx(0.03, abs=0.02)


def test_every_interval_lies_inside_the_metrics_range():
    mean, low, high = t_interval([0.999, 0.97])  # a t-interval with 1 degree of freedom reaches past 1
    assert 0 <= low <= mean <= high == 1.0
    frame = study({"0": 0.09, "0.5": 0.099}, seeds=2, noise=0.02)  # means near 1, two seeds
    table = ablation_table(frame, ["dropout"], metrics=("test_auc",))
    assert (table["test_auc_ci_low"] >= 0).all() and (table["test_auc_ci_high"] <= 1).all()
    row = judged(frame).loc["0.5"]
    assert -1 <= row["ci_low"] <= row["ci_high"] <= 1


class _Images:
    """A stand-in for `analysis.bootstrap.Bootstrap` with every run's metrics under shared image draws: a shared
    image effect (the test set) plus each run's own."""

    def __init__(self, run_ids: list[str], logged: np.ndarray, replicates: int = 200):
        shared = RNG.normal(0, 0.01, (replicates, 1))
        self.metrics = {m: logged[None, :] + shared + RNG.normal(0, 0.003, (replicates, len(run_ids))) for m in MARGINS}
        self.predictions = type("Scored", (), {"run_ids": run_ids})()

    def columns(self, run_ids):
        return np.array([self.predictions.run_ids.index(r) for r in run_ids])


def test_the_aa_check_splits_one_configurations_seeds_and_finds_no_difference():
    frame = study({"0": 0.0}, seeds=12, noise=0.01)
    images = _Images(list(frame["run_id"]), frame["test_auc"].to_numpy())
    table = calibrate(frame, ["dropout"], images, splits=200, metrics=("test_auc",))
    assert list(table["k"]) == [1, 2, 3, 4, 5, 6] and set(table["seeds"]) == {12}
    assert table.loc[table["k"] == 1, "false_rate"].item() == 0  # one seed a side: no claim
    assert (table["false_rate"] <= 0.1).all()  # nothing differs: the rule seldom says better or worse
    assert (table["false_low"] <= table["false_rate"]).all() and (table["false_rate"] <= table["false_high"]).all()
    assert calibrate(frame.head(5), ["dropout"], images).empty  # fewer than six seeds: no check


def test_a_cell_whose_runs_are_its_references_is_equivalent_not_worse():
    """A loco component whose removal is already the baseline's value: resume sends both cells to the same runs."""
    frame = study({"0": 0.0}, seeds=3, noise=0.01)
    built = comparisons.designed(frame, ["dropout"], [("-dropout", ("0",), ("0",))])
    row = comparisons.judge_all(built, frame, None, metrics=("test_auc",)).iloc[0]
    assert row["diff"] == 0 and row["verdict"] == "equivalent"


def test_two_runs_of_one_configuration_and_seed_are_averaged_not_dropped():
    frame = study({"0": 0.0, "0.5": 0.02}, seeds=3, noise=0.002)
    again = frame[frame["dropout"] == "0.5"].assign(run_id=lambda f: f["run_id"] + "-again", test_auc=0.5)
    row = judged(pd.concat([frame, again], ignore_index=True)).loc["0.5"]
    treated = (frame.loc[frame["dropout"] == "0.5", "test_auc"].to_numpy() + 0.5) / 2
    assert row["pairs"] == 3
    assert row["diff"] == pytest.approx(np.mean(treated - frame.loc[frame["dropout"] == "0", "test_auc"].to_numpy()))
