"""`python -m analysis report` against a hand-made MLflow store: numbers recomputed with numpy/scipy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_helpers import ERROR, shared_cli_report, shared_store
from scipy import stats

from ablation.contract import TEST_METRICS
from analysis import comparisons
from analysis.__main__ import main
from analysis.report import build_report
from analysis.runs import AnalysisError, load_study
from analysis.stats import choose_baseline, find_factors, level_key, run_stability, stability
from analysis.transfer import run_transfer

OUTPUTS = (
    "ablation_table.csv",
    "effects_table.csv",
    "main_effects.csv",
    "stability.csv",
    "threshold_transfer.csv",
    "learning_curves.png",
    "roc_curves.png",
    "confusion_matrices.png",
    "effects.png",
    "report.md",
    "report.html",
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return shared_store(tmp_path_factory)


@pytest.fixture(scope="module")
def study(store):
    return load_study(store["uri"])


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """`python -m analysis report --tracking-uri ... --out ...`, run once as a subprocess from the root."""
    return shared_cli_report(tmp_path_factory)


def _values(store, model, dropout, metric):
    return {seed: v[metric] for (m, d, seed), v in store["values"].items() if (m, d) == (model, dropout)}


def _t_interval(x):
    """scipy's t-interval of a metric's mean, clipped to the metric's range [0, 1]."""
    x = np.asarray(x, dtype=float)
    low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    return max(low, 0.0), min(high, 1.0)


def _rule_interval(d, image_var):
    """The verdict rule's 95% interval, computed here from scipy's quantiles: the seed part with Student's t on
    n − 1 degrees of freedom and the test images' part with the normal quantile, added in quadrature."""
    d = np.asarray(d, dtype=float)
    seed = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    half = np.hypot(seed, stats.norm.ppf(0.975) * np.sqrt(image_var))
    return d.mean() - half, d.mean() + half


def test_default_selection_is_latest_sweep_with_failed_run_listed(store, study):
    assert study.parent_id == store["parent"]
    assert study.experiment == store["experiment"]
    assert len(study.finished) == 11
    assert list(study.failed["run_id"]) == [store["failed"]]
    assert study.failed["error"].iloc[0] == ERROR
    assert store["failed"] not in set(study.finished["run_id"])


def test_factors_exclude_seed_and_collapse_aliases(study):
    factors, aliases = find_factors(study.finished, study.params)
    assert factors == ["model", "dropout"]
    assert aliases == {"model": ["model.name"], "dropout": ["model.dropout"]}


def test_settings_outside_the_configuration_are_never_factors():
    # Two configurations (dropout) x two seeds. Where the runs keep their cache and data, how verbose they
    # train and where they log differ too, each splitting the runs its own way: none is a factor, nor an alias.
    runs = pd.DataFrame(
        {
            "dropout": ["0.0", "0.0", "0.5", "0.5"],
            "seed": ["1", "2", "1", "2"],
            "data.cache_dir": ["/a", "/a", "/b", "/b"],
            "trainer.verbose": ["0", "0", "0", "2"],
            "data.root": ["/x", "/y", "/y", "/y"],
            "tracking.uri": ["sqlite:///a.db", "sqlite:///b.db", "sqlite:///c.db", "sqlite:///d.db"],
        }
    )
    assert find_factors(runs, list(runs.columns)) == (["dropout"], {"dropout": []})
    runs["trainer.epochs"] = ["5", "5", "5", "9"]  # a setting that is part of the configuration is one
    assert find_factors(runs, list(runs.columns)) == (
        ["dropout", "trainer.epochs"],
        {"dropout": [], "trainer.epochs": []},
    )


def test_level_order_and_baseline_choice(study):
    assert sorted(["resnet50", "none", "flip"], key=level_key) == ["none", "flip", "resnet50"]
    assert sorted(["True", "False"], key=level_key) == ["False", "True"]
    assert sorted(["0.5", "0.25", "10", "0"], key=level_key) == ["0", "0.25", "0.5", "10"]
    factors = ["model", "dropout"]
    assert choose_baseline(study.finished, factors, {}) == ("cnn", "0.0")
    assert choose_baseline(study.finished, factors, {"model": "resnet18"}) == ("resnet18", "0.0")
    assert choose_baseline(study.finished, factors, {"dropout": "0.50"}) == ("cnn", "0.5")
    with pytest.raises(AnalysisError, match=r"model: cnn, resnet18; dropout: 0.0, 0.5"):
        choose_baseline(study.finished, factors, {"model": "vgg16"})
    with pytest.raises(AnalysisError, match="lr is not a factor"):
        choose_baseline(study.finished, factors, {"lr": "0.1"})


@pytest.mark.slow  # `python -m analysis report` as a subprocess
def test_ablation_table_rows_n_and_intervals(store, cli):
    table = pd.read_csv(cli / "ablation_table.csv", dtype={"dropout": str})
    assert list(zip(table["model"], table["dropout"], table["n"], strict=True)) == [
        ("cnn", "0.0", 3),
        ("cnn", "0.5", 3),
        ("resnet18", "0.0", 3),
        ("resnet18", "0.5", 2),
    ]
    assert {f"{m}_{s}" for m in TEST_METRICS for s in ("mean", "ci_low", "ci_high")} <= set(table.columns)
    for row in table.itertuples():
        for metric in TEST_METRICS:
            x = list(_values(store, row.model, row.dropout, metric).values())
            low, high = _t_interval(x)
            assert getattr(row, f"{metric}_mean") == pytest.approx(np.mean(x))
            assert getattr(row, f"{metric}_ci_low") == pytest.approx(low)
            assert getattr(row, f"{metric}_ci_high") == pytest.approx(high)


@pytest.mark.slow  # `python -m analysis report` as a subprocess
def test_effects_are_paired_on_the_seed_and_judged_by_the_rule(store, cli):
    eff = pd.read_csv(cli / "effects_table.csv", dtype={"dropout": str}).set_index(["model", "dropout", "metric"])
    assert ("cnn", "0.0", "test_auc") not in eff.index  # the baseline itself
    base = _values(store, "cnn", "0.0", "test_auc")
    treated = _values(store, "cnn", "0.5", "test_auc")
    d = np.array([treated[s] - base[s] for s in sorted(base)])
    row = eff.loc[("cnn", "0.5", "test_auc")]
    assert row["test"] == comparisons.RULE and row["pairs"] == 3
    assert row["diff"] == pytest.approx(d.mean())
    assert row["image_var"] > 0 and row["seed_var"] == pytest.approx(d.var(ddof=1) / 3)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(_rule_interval(d, row["image_var"]))
    assert row["verdict"] in ("better", "worse", "equivalent", "undecided") and row["margin"] == 0.005
    assert row["p_improve"] == pytest.approx(np.mean(d > 0))

    # (resnet18, 0.5) lost seed 3 to the failed run: paired on the two seeds both sides have.
    paired = _values(store, "resnet18", "0.5", "test_auc")
    d = np.array([paired[s] - base[s] for s in sorted(paired)])
    row = eff.loc[("resnet18", "0.5", "test_auc")]
    assert row["pairs"] == 2 and row["diff"] == pytest.approx(d.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(_rule_interval(d, row["image_var"]))


def test_main_effects_average_each_seed_over_the_other_factors(store, study):
    finished = study.finished.reset_index(drop=True)
    built = comparisons.main_effects(finished, ["model", "dropout"], ("cnn", "0.0"))
    main = comparisons.judge_all(built, finished, None, factors=["model", "dropout"])
    row = main[(main["factor"] == "dropout") & (main["level"] == "0.5") & (main["metric"] == "test_auc")].iloc[0]
    values = store["values"]
    per_seed = {  # (resnet18, 0.5, seed 3) failed: seed 3 is the cnn's difference alone
        s: np.mean([values[(m, "0.5", s)]["test_auc"] - values[(m, "0.0", s)]["test_auc"]
                    for m in ("cnn", "resnet18") if (m, "0.5", s) in values])
        for s in (1, 2, 3)
    }  # fmt: skip
    d = np.array(list(per_seed.values()))
    assert row["test"] == comparisons.RULE and row["pairs"] == 3
    assert row["diff"] == pytest.approx(d.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(_rule_interval(d, 0.0))  # no predictions: no image part
    assert row["p_value"] == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)
    assert comparisons.main_effects(finished, [], ()) == []


def test_stability_from_histories(store, study):
    factors = ["model", "dropout"]
    per_run = study.histories(study.finished["run_id"])
    table = stability(study.finished, factors, run_stability(per_run)).set_index(factors)
    epochs = store["epochs"]
    expected = []
    for seed in (1, 2, 3):
        h = store["history"](seed, "0.0")
        acc = np.abs(np.diff(h["val_accuracy"]))[np.arange(2, epochs + 1) > epochs / 2]
        expected.append((acc.mean(), int(np.argmax(h["val_auc"])) + 1))
    row = table.loc[("cnn", "0.0")]
    assert row["val_accuracy_jitter"] == pytest.approx(np.mean([e[0] for e in expected]))
    assert row["best_val_auc_epoch"] == pytest.approx(np.mean([e[1] for e in expected]))
    assert row["epochs_logged"] == epochs


def test_stability_when_epochs_is_a_factor(study):
    # A study of `epochs` must not collide with the per-run count of logged epochs.
    runs = study.finished.assign(epochs=["10" if i % 2 else "12" for i in range(len(study.finished))])
    table = stability(runs, ["epochs"], run_stability(study.histories(runs["run_id"])))
    assert list(table["epochs"]) == ["10", "12"] and table["epochs_logged"].notna().all()


@pytest.mark.slow  # `python -m analysis report` as a subprocess
def test_cli_writes_everything_and_logs_to_parent(store, cli):
    for name in OUTPUTS:
        assert (cli / name).stat().st_size > 0, name
    logged = {Path(f.path).name for f in store["client"].list_artifacts(store["parent"], "report")}
    assert set(OUTPUTS) <= logged
    md = (cli / "report.md").read_text()
    kept = {(m, d): np.mean(list(_values(store, m, d, "kept_val_auc").values())) for m, d, _ in store["values"]}
    best = max(kept, key=kept.get)  # chosen on validation, never on test
    assert (
        f"**Best configuration** (chosen on validation, ROC AUC {kept[best]:.3f}): model={best[0]}, dropout={best[1]}"
        in md
    )
    assert "**Verdicts** (each comparison judged on the configuration" in md
    assert "model resnet18 (vs cnn): better, ROC AUC +0.18" in md  # the much better separation, 3 seeds
    assert "**Undecided** (2 on accuracy, ROC AUC): dropout 0.5 (vs 0.0)" in md  # +0.04 within the noise
    assert store["failed"] in md and ERROR in md
    assert "NORMAL (0): 1.950, PNEUMONIA (1): 0.670" in md
    html = (cli / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "http://" not in html and "https://" not in html and "<link" not in html


def test_run_transfer_scores_val_and_test_at_each_threshold():
    val = pd.DataFrame({"label": [0, 0, 1, 1], "probability": [0.1, 0.2, 0.8, 0.9]})
    test = pd.DataFrame({"label": [0, 0, 1, 1], "probability": [0.3, 0.6, 0.7, 0.9]})
    figures = run_transfer(val, test, threshold=0.5)
    assert figures["val_accuracy"] == 1.0 and figures["test_accuracy"] == 0.75
    assert figures["test_sensitivity"] == 1.0 and figures["test_specificity"] == 0.5
    # Youden's J is 1 from 0.8 down to 0.2 on val; the highest such threshold is kept. On test only 0.7 reaches it.
    assert figures["val_youden_threshold"] == 0.8 and figures["test_youden_threshold"] == 0.7
    assert figures["test_accuracy_at_val_youden"] == 0.75 and figures["test_accuracy_at_0.5"] == 0.75
    assert figures["val_normal_median_p"] == pytest.approx(0.15)
    assert figures["test_normal_median_p"] == pytest.approx(0.45)
    assert figures["test_pneumonia_median_p"] == pytest.approx(0.8)


@pytest.mark.slow  # `python -m analysis report` as a subprocess
def test_report_shows_the_validation_to_test_shift(store, cli):
    per_run = pd.read_csv(cli / "threshold_transfer.csv")
    experiment_id = store["client"].get_experiment_by_name(store["experiment"]).experiment_id
    finished = store["client"].search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{store['parent']}' and attributes.status = 'FINISHED'"
    )
    assert set(per_run["run_id"]) == {r.info.run_id for r in finished}
    # The synthetic test split puts NORMAL higher and separates worse than validation, in every run.
    assert (per_run["test_normal_median_p"] > per_run["val_normal_median_p"]).all()
    assert (per_run["test_auc"] < per_run["val_auc"]).all()
    md = (cli / "report.md").read_text()
    section = md.split("## Validation to test")[1].split("## ")[0]
    for configuration in ("model=cnn, dropout=0.0", "model=resnet18, dropout=0.5"):
        assert f"| {configuration} |" in section


def test_cli_error_for_missing_experiment(store, tmp_path, capsys):
    args = [
        "report",
        "--tracking-uri",
        store["uri"],
        "--experiment",
        "no-such-exp",
        "--out",
        str(tmp_path / "x"),
    ]
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "experiment 'no-such-exp' not found" in err and store["experiment"] in err
    assert not (tmp_path / "x").exists()


def test_missing_store_and_sweep_errors(store, tmp_path):
    with pytest.raises(AnalysisError, match="no MLflow store"):
        load_study(f"sqlite:///{tmp_path}/absent.db")
    with pytest.raises(AnalysisError, match="not found"):
        load_study(store["uri"], sweep="0" * 32)
    with pytest.raises(AnalysisError, match="not a sweep parent"):
        load_study(store["uri"], sweep=store["old_child"])


def test_single_run_sweep_has_no_interval(store, tmp_path):
    study = load_study(store["uri"], sweep=store["old_parent"])
    build_report(study, tmp_path)
    table = pd.read_csv(tmp_path / "ablation_table.csv", keep_default_na=False)
    assert len(table) == 1 and table["n"].tolist() == [1]
    assert table["test_auc_ci_low"].tolist() == [""] and table["test_auc_ci_high"].tolist() == [""]
    assert not math.isnan(float(table["test_auc_mean"].iloc[0]))
    assert "n = 1: no interval" in (tmp_path / "report.md").read_text()


def test_all_runs_pools_both_sweeps(store):
    study = load_study(store["uri"], experiment=store["experiment"], all_runs=True)
    assert study.parent_id is None
    assert len(study.finished) == 12 and len(study.failed) == 1


def test_the_report_never_shows_the_tracking_uris_password(study, tmp_path):
    """The report is uploaded to the shared server: the URI it names must not carry the credentials."""
    import dataclasses

    # Secrets with - and !, which no base64 image data in the HTML can contain by chance.
    secret = dataclasses.replace(study, tracking_uri="http://alice:s3-cr/et!@mlflow.example:5000?token=t0-k!")
    out = tmp_path / "report"
    build_report(secret, out, replicates=200)
    for name in ("report.md", "report.html"):
        text = (out / name).read_text()
        assert "http://alice:***@mlflow.example:5000?token=***" in text
        assert "s3-cr" not in text and "et!" not in text and "t0-k!" not in text


def test_a_store_mlflow_cannot_read_is_named_in_one_line(store, tmp_path, capsys):
    """A real store from another MLflow version passes the file checks (`ablation.store`); MLflow refuses it."""
    import shutil
    import sqlite3

    db = tmp_path / "newer.db"
    shutil.copy(store["uri"].removeprefix("sqlite:///"), db)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    assert main(["report", "--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot read the MLflow store sqlite:///{db}" in err, err
    assert "database schema (found version ffffffffffff" in err and not (tmp_path / "out").exists()


def test_only_finished_runs_with_both_identity_tags_are_duplicates():
    from analysis.runs import set_aside_duplicates

    def run(run_id, status, start, config="h", data="d"):
        return {
            "run_id": run_id,
            "status": status,
            "start_time": start,
            "end_time": start + 5,
            "config_hash": config,
            "data_digest": data,
        }

    runs = pd.DataFrame(
        [
            run("old", "FINISHED", 1),
            run("newest", "FINISHED", 3),
            run("middle", "FINISHED", 2),
            run("failed", "FAILED", 4),  # never a duplicate, never kept in a finished one's place
            run("other-data", "FINISHED", 0, data="e"),
            run("untagged-1", "FINISHED", 0, config="", data=""),  # logged before the tags: never merged
            run("untagged-2", "FINISHED", 1, config="", data=""),
        ]
    )
    kept, aside = set_aside_duplicates(runs)
    assert sorted(kept["run_id"]) == ["failed", "newest", "other-data", "untagged-1", "untagged-2"]
    assert sorted(aside["run_id"]) == ["middle", "old"] and set(aside["kept_run_id"]) == {"newest"}
