"""What the report says, section by section: the answer first, the tables as a person reads them, the verdict
(ensembles, how sure, interactions), the best runs, validation to test, training, the data record, the method.
Each section is a list of (kind, *args) blocks that `analysis.render` writes as Markdown and HTML."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pandas as pd

from ablation.contract import CLASSES, NOT_CONFIGURATION, TEST_METRICS, redact
from ablation.metrics import METRICS
from analysis.runs import Study
from analysis.stats import config_keys, label
from analysis.tables import Fetched, Tables
from analysis.transfer import transfer_summary

KEY_METRICS = ("test_auc", "test_accuracy", "test_f1")  # the ones the summary and the report tables show
HEADLINE_METRICS = ("test_auc", "test_accuracy")  # the ones the headline gives verdicts on
SHORT_NAMES = {"recall": "recall (sensitivity)", "f1": "F1", "auc": "ROC AUC", "pr_auc": "PR AUC"}
NAMES = {f"test_{name}": SHORT_NAMES.get(name, name) for name in METRICS}  # a logged test metric as the text calls it
BASELINE_RULE = (
    "each factor not given with `--baseline` takes its first level, levels sorted with "
    "none/False/off/0 first, then numbers in numeric order, then text alphabetically "
    "(factor by factor, among the configurations that exist)"
)
STABILITY_RULE = (
    "jitter = mean absolute change from epoch e−1 to epoch e over the epochs e > E/2 (E = the run's "
    "last logged epoch), averaged over seeds; best val AUC epoch = epoch of the highest val_auc "
    "(first one on ties), averaged over seeds"
)


def _num(x, digits=3, sign=False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _ci(mean, low, high, sign=False) -> str:
    if math.isnan(low):
        return _num(mean, sign=sign)
    # No-break space inside the brackets: a narrow table cell wraps before the interval, not inside it.
    return f"{_num(mean, sign=sign)} [{_num(low, sign=sign)},\u00a0{_num(high, sign=sign)}]"


def _p(p: float, prefix: str = "") -> str:
    """'0.006' or '< 0.001'; with prefix 'p ' it reads 'p = 0.006' or 'p < 0.001'."""
    if math.isnan(p):
        return prefix + "—"
    return prefix + ("< 0.001" if p < 0.001 else ("= " if prefix else "") + f"{p:.3f}")


BEST_ON = "kept_val_auc"  # "the best" configuration and run are chosen on the kept epoch's validation ROC AUC


def top_index(values: pd.Series):
    """Index of the highest value; a metric missing everywhere must not stop the report."""
    return values.fillna(-math.inf).idxmax()


def _data_record_blocks(record: dict | None, run_id: str) -> list:
    if record is None:
        return [("p", f"Run `{run_id}` logged no `data_record.json`.")]
    rows = [
        {"split": split, "class": cls, "images": v.get("images"), "patients": v.get("patients")}
        for split, classes in record.get("splits", {}).items()
        for cls, v in classes.items()
    ]
    weights = record.get("class_weights")
    names = dict(enumerate(CLASSES))
    weight_text = (
        ", ".join(f"{names.get(int(k), k)} ({k}): {float(w):.3f}" for k, w in weights.items())
        if weights
        else "none (unweighted loss)"
    )
    skipped = record.get("skipped_files") or {}
    blocks = [
        ("p", f"From the best run `{run_id}`; image size {record.get('image_size', '?')} px."),
        ("table", pd.DataFrame(rows)),
        ("p", f"**Class weights:** {weight_text}."),
        ("p", f"**Skipped files:** {len(skipped)}."),
    ]
    if skipped:
        shown = pd.DataFrame(list(skipped.items())[:20], columns=["file", "reason"])
        blocks.append(("table", shown))
        if len(skipped) > 20:
            blocks.append(("p", f"… and {len(skipped) - 20} more (see `data_record.json`)."))
    return blocks


def _rule(alpha: float) -> str:
    """How every verdict was reached, in the words the report uses wherever it shows one."""
    level = "" if alpha == 0.05 else f" at alpha {alpha:.4g} (a seeds=auto sweep: 0.05 over its looks)"
    return (
        "each comparison judged on the configuration: seeds as the replicates, the test images as a second source "
        f"of noise; Holm per metric{level}; 95% intervals"
    )


def _what(row: pd.Series) -> str:
    """How a headline names a comparison: a design's cell, a factor's level, or a configuration."""
    if "cell" in row and isinstance(row["cell"], str):
        return _cell_name(row["cell"])
    if "factor" in row and isinstance(row.get("factor"), str):
        return f"{row['factor']} {row['level']} (vs {row['reference']})"
    return str(row.get("configuration", ""))


def _claim(row: pd.Series) -> str:
    """One decided comparison as the headline says it."""
    name, word = NAMES[row["metric"]], row["verdict"]
    seeds = f"{int(row['pairs'])} seeds"
    if word == "equivalent":
        return f"{_what(row)}: equivalent within ±{row['margin']:g} {name} ({_num(row['diff'], sign=True)}, {seeds})"
    low, high = ("diff_ci_low", "diff_ci_high") if "diff_ci_low" in row else ("ci_low", "ci_high")  # main effects
    return f"{_what(row)}: {word}, {name} {_ci(row['diff'], row[low], row[high], sign=True)}, {seeds}"


def _undecided(rows: pd.DataFrame) -> str:
    """The undecided comparisons in one line, with the paired seeds the planning says would decide them."""
    needed = rows["seeds_needed"].replace([math.inf], math.nan)
    what = ", ".join(dict.fromkeys(_what(r) for _, r in rows.iterrows()))
    if needed.notna().any():
        advice = f"about {int(needed.max())} paired seeds would decide them all (`planning.csv`)"
    elif (rows["seeds_needed"] == math.inf).any():
        advice = "the test set itself is too small to decide some of them, however many seeds"
    else:
        advice = "run at least 3 seeds per configuration so that their spread can be measured"
    metrics = ", ".join(NAMES[m] for m in dict.fromkeys(rows["metric"]))
    return f"**Undecided** ({len(rows)} on {metrics}): {what}; {advice}."


def verdict_lines(judged: pd.DataFrame) -> list[str]:
    """The decided comparisons on the key metrics by their word, then the undecided ones summed up."""
    shown = judged[judged["metric"].isin(HEADLINE_METRICS) & judged["verdict"].notna()]
    decided = shown[shown["verdict"] != "undecided"]
    lines = ["; ".join(_claim(r) for _, r in decided.iterrows()) + "."] if len(decided) else []
    undecided = shown[shown["verdict"] == "undecided"]
    if len(undecided):
        lines.append(_undecided(undecided))
    return lines


def _judged(tables: Tables) -> pd.DataFrame:
    """The comparisons the headline speaks of: a design's cells, else the main effects."""
    if _is_designed(tables):
        return tables.designed
    return tables.main[tables.main["test"] != "reference"] if len(tables.main) else tables.main


def _best(table: pd.DataFrame) -> pd.Series:
    """The configuration with the best kept validation ROC AUC (test ROC AUC only where no run logged one)."""
    on_validation = table[f"{BEST_ON}_mean"].notna().any()
    return table.loc[top_index(table[f"{BEST_ON}_mean" if on_validation else "test_auc_mean"])], on_validation


def _summary(tables: Tables) -> list[str]:
    """The answer first: the verdicts, then the best configuration (chosen on validation) and its test figures."""
    factors, table = tables.factors, tables.ablation
    lines = []
    if factors:
        judged = _judged(tables)
        words = verdict_lines(judged) if len(judged) and "verdict" in judged else []
        lines.append(
            f"**Verdicts** ({_rule(tables.verdict.alpha)}): "
            + (words[0] if words and not words[0].startswith("**") else "none decided.")
        )
        lines += [w for w in words if w.startswith("**Undecided")]
    best, on_validation = _best(table)
    key = tuple(best[factors].astype(str))
    ci = {m: _ci(best[f"{m}_mean"], best[f"{m}_boot_low"], best[f"{m}_boot_high"]) for m in KEY_METRICS}
    seeds = "1 seed" if best["n"] == 1 else f"{int(best['n'])} seeds"
    chosen = (
        f"chosen on validation, ROC AUC {_num(best[f'{BEST_ON}_mean'])}"
        if on_validation
        else "chosen on test: no run logged its validation ROC AUC"
    )
    lines.append(
        f"**Best configuration** ({chosen}): {label(key, factors)}: test ROC AUC {ci['test_auc']}, "
        f"accuracy {ci['test_accuracy']} ({seeds}; 95% interval over seeds and test images in brackets)."
    )
    if not factors:
        lines.append("No param varies across the finished runs: one configuration, nothing to compare.")
        return lines
    lines.append(f"Baseline for the effects table: **{label(tables.baseline, factors)}** ({BASELINE_RULE}).")
    return lines


def _both(mean, boot_low, boot_high, t_low, t_high, sign=False) -> str:
    """The bootstrap interval (seeds and test images) where there is one, else the seed-only t-interval."""
    if math.isnan(boot_low):
        return _ci(mean, t_low, t_high, sign=sign)
    return _ci(mean, boot_low, boot_high, sign=sign)


def _shown_ablation(table: pd.DataFrame, factors: list[str]) -> pd.DataFrame:
    shown = table[factors + ["n"]].copy()
    for m in TEST_METRICS:
        columns = [f"{m}_{c}" for c in ("mean", "boot_low", "boot_high", "ci_low", "ci_high")]
        shown[NAMES[m]] = [_both(*v) for v in table[columns].to_numpy()]
    best = top_index(table[f"{BEST_ON}_mean"] if table[f"{BEST_ON}_mean"].notna().any() else table["test_auc_mean"])
    shown.loc[best, NAMES["test_auc"]] = "★ " + shown.loc[best, NAMES["test_auc"]]
    return shown


def _p_improve(row) -> str:
    if math.isnan(row["p_improve"]):
        return "—"
    return f"{row['p_improve']:.2f} [{row['p_improve_low']:.2f},\u00a0{row['p_improve_high']:.2f}]"


def _seeds_needed(x: float) -> str:
    return "—" if math.isnan(x) else "test set too small" if math.isinf(x) else f"{x:.0f}"


def _judged_columns(judged: pd.DataFrame, low: str = "ci_low", high: str = "ci_high") -> dict:
    """The columns every judged table shows: Δ [95%], the verdict, p (Holm), P(improvement), seeds needed."""
    return {
        "Δ [95%]": [_ci(*v, sign=True) for v in judged[["diff", low, high]].to_numpy()],
        "verdict": judged["verdict"].fillna("—"),
        "p (Holm)": judged["p_holm"].map(_p),
        "P(better) [95%]": [_p_improve(r) for _, r in judged.iterrows()],
        "seeds to decide": judged["seeds_needed"].map(_seeds_needed),
    }


def _shown_main(main: pd.DataFrame) -> pd.DataFrame:
    main = main[main["metric"].isin(KEY_METRICS)]
    shown = pd.DataFrame(
        {
            "factor": main["factor"],
            "level": main["level"],
            "n": main["n"],
            "metric": main["metric"].map(NAMES),
            "mean [95% t-CI]": [_ci(*v) for v in main[["mean", "ci_low", "ci_high"]].to_numpy()],
            "seeds (pairs)": [str(int(n)) if n == n else "—" for n in main["pairs"]],
        }
    )
    for column, values in _judged_columns(main, "diff_ci_low", "diff_ci_high").items():
        shown[column] = list(values)
    reference = (main["test"] == "reference").to_numpy()
    shown.loc[reference, ["Δ [95%]", "verdict", "p (Holm)", "P(better) [95%]", "seeds to decide"]] = "reference"
    return shown


def _shown_effects(eff: pd.DataFrame, factors: list[str]) -> pd.DataFrame:
    first = eff[eff["metric"] == KEY_METRICS[0]]
    shown = first[[*factors, "n", "pairs"]].reset_index(drop=True)
    for m in KEY_METRICS:
        shown[f"Δ {NAMES[m]} [95%]: verdict"] = [
            f"{_ci(r.diff, r.ci_low, r.ci_high, sign=True)}: {r.verdict}" for r in eff[eff["metric"] == m].itertuples()
        ]
    return shown


DESIGNS = {
    "loco": (
        "Leave one component out",
        "Each component removed from the baseline, one at a time: its run minus the baseline's (paired by seed), "
        "sorted by what the removal costs in ROC AUC, largest loss first.",
    ),
    "one_at_a_time": (
        "One factor at a time",
        "Each factor's other levels, one at a time, the others at the baseline: its run minus the baseline's "
        "(paired by seed), in the order the study lists them.",
    ),
}


def _cell_name(cell: str) -> str:
    return f"removing {cell[1:]}" if cell.startswith("-") else cell


def _designed_rows(tables: Tables) -> pd.DataFrame:
    """One row per compared cell: its test ROC AUC comparison, loco's sorted by cost (largest loss first)."""
    auc = tables.designed[tables.designed["metric"] == "test_auc"]
    return auc.sort_values("diff", kind="stable") if tables.design == "loco" else auc


def _designed_line(row: pd.Series) -> str:
    interval = _ci(row["diff"], row["ci_low"], row["ci_high"], sign=True)
    p, seeds = _p(row["p_holm"], "p_holm "), int(row["pairs"])
    return f"{_cell_name(row['cell'])}: {row['verdict']}, test ROC AUC {interval} ({p}, {seeds} seeds)"


def _is_designed(tables: Tables) -> bool:
    return tables.designed is not None and tables.design in DESIGNS


def _design_blocks(tables: Tables) -> list:
    if not _is_designed(tables):
        return []
    title, intro = DESIGNS[tables.design]
    eff, order = tables.designed, list(_designed_rows(tables)["cell"])
    shown = pd.DataFrame({"cell": [_cell_name(c) for c in order]})
    for m in KEY_METRICS:
        rows = eff[eff["metric"] == m].set_index("cell").loc[order]
        shown[f"Δ {NAMES[m]} [95%]: verdict"] = [
            f"{_ci(r.diff, r.ci_low, r.ci_high, sign=True)}: {r.verdict}" for r in rows.itertuples()
        ]
    shown["seeds"] = list(eff[eff["metric"] == KEY_METRICS[0]].set_index("cell").loc[order, "pairs"])
    note = (
        f" Verdicts: {_rule(tables.verdict.alpha)}. They are the design's answer, so the report shows no main "
        "effects: in this design each factor's other level exists only in its own cell, and pooling would repeat "
        "these comparisons "
        "(`main_effects.csv` and `effects_table.csv` still hold them)."
    )
    return [
        ("h2", title),
        ("p", intro + note),
        ("table", shown),
        ("img", "effects.png", "Forest plot of each cell versus the baseline"),
    ]


def headline(tables: Tables) -> str:
    """The report's answer in one line: the decided comparisons by their word and the undecided ones summed up
    (a design's cells, else the main effects), then the best configuration, chosen on validation."""
    lines = [line.replace("**", "") for line in _summary(tables)]
    design = f"{DESIGNS[tables.design][0]}: " if _is_designed(tables) else ""
    return design + " ".join(line for line in lines if not line.startswith("Baseline"))


def _verdict_blocks(tables: Tables) -> list:
    """Seed ensembles; how sure, and what more seeds would buy; interactions and the ANOVA."""
    v, factors = tables.verdict, tables.factors
    blocks = [("h2", "Seed ensembles")]
    if v.ensembles.empty:
        blocks.append(("p", "No run logged `test_predictions.csv`: no ensembles, no bootstrap."))
    else:
        shown = v.ensembles[[*factors, "n"]].copy()
        shown["ROC AUC [DeLong 95%]"] = [
            _ci(*r) for r in v.ensembles[["test_auc", "test_auc_low", "test_auc_high"]].to_numpy()
        ]
        for m in ("test_auc", "test_accuracy"):
            shown[f"{NAMES[m]}: ensemble − mean run"] = (v.ensembles[m] - v.ensembles[f"{m}_runs_mean"]).map(
                lambda x: _num(x, sign=True)
            )
        shown["accuracy"] = v.ensembles["test_accuracy"].map(_num)
        blocks += [
            (
                "p",
                "Per configuration, the mean of its seeds' test probabilities per image, at the runs' threshold; "
                "what it adds over the mean of its single runs on the same images. Against the baseline's "
                "ensemble: DeLong's paired test of ROC AUC and McNemar's exact test of accuracy, Holm-adjusted per "
                "metric (`ensemble_effects.csv`). These tests compare the trained models (these ensembles), not the "
                "configurations: they never give a verdict word and never reach the headline.",
            ),
            ("table", shown),
        ]
        if len(v.ensemble_effects):
            e = v.ensemble_effects
            ee = e[factors].copy()
            ee["metric"] = e["metric"].map(NAMES)
            ee["Δ"] = e["diff"].map(lambda x: _num(x, sign=True))
            ee["p"] = e["p_value"].map(_p)
            ee["p (Holm)"] = e["p_holm"].map(_p)
            ee["test"] = e["test"]
            blocks.append(("table", ee))
    blocks += _planning_blocks(v.planning, factors, v.halfwidth)
    blocks += _calibration_blocks(v.calibration)
    if v.interactions is not None:
        blocks += _interaction_blocks(v.interactions, v.anova, v.alpha)
    return blocks


def _planning_blocks(planning: pd.DataFrame, factors: list[str], halfwidth: float) -> list:
    heading = ("h2", "How sure, and what more seeds would buy")
    if planning.empty:
        return [heading, ("p", "One configuration: no effect to plan for.")]
    shown = planning[planning["metric"].isin(KEY_METRICS)]
    table = shown[factors].copy()
    table["metric"] = shown["metric"].map(NAMES)
    table["seeds (pairs)"] = shown["n"]
    table["sd of a difference"] = shown["sd_diff"].map(lambda x: _num(x, 4))
    table["± now (seeds)"] = shown["halfwidth_now"].map(_num)
    table["± from the test images alone"] = shown["test_set_halfwidth"].map(_num)
    table["smallest effect found 4 times in 5"] = shown["mde_80"].map(_num)
    table[f"seeds for ±{halfwidth:g}"] = shown["seeds_for_halfwidth"].map(
        lambda x: "—" if math.isnan(x) else f"{x:.0f}"
    )
    table["paired seeds to decide"] = shown["seeds_needed"].map(_seeds_needed)
    return [
        heading,
        (
            "p",
            "Per configuration versus the baseline: the spread of a per-seed difference, the half-width of its "
            "95% t-interval now, the half-width the 624 test images alone impose (more seeds do not shrink it), "
            "the smallest true difference a paired t-test at 5% detects with 80% power at this many seeds, and "
            f"the seeds an interval of ±{halfwidth:g} needs (`--halfwidth`), and the paired seeds at which the verdict "
            "rule would decide the comparison if the spreads stayed as measured (pooled over the configurations' "
            "seeds where this one has fewer than two). A difference smaller than the test-image half-width cannot "
            "be settled on this test set, however many seeds.",
        ),
        ("table", table),
    ]


def _interaction_blocks(interactions: pd.DataFrame, anova_table: pd.DataFrame | None, alpha: float) -> list:
    shown = interactions[interactions["metric"].isin(KEY_METRICS)]
    table = pd.DataFrame(
        {
            "contrast": [
                f"{r.factor_a}={r.level_a} (vs {r.reference_a}) × {r.factor_b}={r.level_b} (vs {r.reference_b})"
                for r in shown.itertuples()
            ],
            "metric": shown["metric"].map(NAMES),
            "seeds": shown["pairs"],
            "difference of differences [95%]": [
                _ci(*v, sign=True) for v in shown[["diff", "ci_low", "ci_high"]].to_numpy()
            ],
            "verdict": shown["verdict"],
            "p (Holm)": shown["p_holm"].map(_p),
        }
    )
    blocks = [
        ("h2", "Interactions"),
        (
            "p",
            "In a full factorial: how much one factor's effect changes with another's level, (a, b) − (a₀, b) − "
            "(a, b₀) + (a₀, b₀), per seed over the blocks (other factors' levels) that hold all four cells; "
            f"{_rule(alpha)}.",
        ),
        ("table", table),
    ]
    if anova_table is not None:
        a = anova_table.copy()
        a["sum_sq"] = a["sum_sq"].map(lambda x: _num(x, 5))
        a["F"] = a["F"].map(lambda x: _num(x, 2))
        a["p_value"] = a["p_value"].map(_p)
        blocks += [("p", "ANOVA of test ROC AUC, seed as a block (type II sums of squares):"), ("table", a)]
    return blocks


def _shown_stability(stab: pd.DataFrame, factors: list[str]) -> pd.DataFrame:
    shown = stab[factors + ["n"]].copy()
    shown["epochs logged (mean)"] = stab["epochs_logged"].map(lambda x: _num(x, 1))
    shown["val accuracy jitter"] = stab["val_accuracy_jitter"].map(lambda x: _num(x, 4))
    shown["val loss jitter"] = stab["val_loss_jitter"].map(lambda x: _num(x, 4))
    shown["best val AUC epoch (mean)"] = stab["best_val_auc_epoch"].map(lambda x: _num(x, 1))
    return shown


TRANSFER_COLUMNS = {
    "n": "n",
    "threshold": "threshold used",
    "val_accuracy": "val accuracy",
    "test_accuracy": "test accuracy",
    "test_sensitivity": "test sensitivity",
    "test_specificity": "test specificity",
    "val_auc": "val ROC AUC",
    "test_auc": "test ROC AUC",
    "test_accuracy_at_0.5": "test accuracy at 0.5",
    "val_youden_threshold": "Youden threshold on val",
    "test_accuracy_at_val_youden": "test accuracy at it",
    "test_youden_threshold": "Youden threshold on test (reference)",
    "val_normal_median_p": "NORMAL median p, val",
    "test_normal_median_p": "NORMAL median p, test",
    "val_pneumonia_median_p": "PNEUMONIA median p, val",
    "test_pneumonia_median_p": "PNEUMONIA median p, test",
}


def _transfer_blocks(per_run: pd.DataFrame, finished: pd.DataFrame, factors: list[str]) -> list:
    heading = ("h2", "Validation to test")
    if per_run.empty:
        return [heading, ("p", "No run logged both `val_predictions.csv` and `test_predictions.csv`.")]
    summary = transfer_summary(per_run, finished, factors)
    shown = summary[["configuration"]].copy()
    for column, name in TRANSFER_COLUMNS.items():
        shown[name] = summary[column] if column == "n" else summary[column].map(_num)
    return [
        heading,
        (
            "p",
            "The checkpoint and the threshold are chosen on the validation split, carved out of train/ by "
            "patient; the test split comes from another distribution. Per configuration, mean over seeds: "
            "the metrics at the threshold each run used, on both splits; test accuracy at 0.5 and at Youden's "
            "J on validation; the median predicted pneumonia probability per class on both splits (a class "
            "whose median moves is a calibration shift). The test-optimal threshold is a reference, never "
            "used. Per run: `threshold_transfer.csv`.",
        ),
        ("table", shown),
    ]


def _calibration_blocks(calibration: pd.DataFrame) -> list:
    """The A/A check, where a configuration has enough seeds (`analysis.calibrate`)."""
    if calibration.empty:
        return []
    shown = calibration[["configuration", "seeds", "metric", "k", "splits"]].copy()
    shown["metric"] = shown["metric"].map(NAMES)
    shown["false better/worse [95%]"] = [
        _ci(*v) for v in calibration[["false_rate", "false_low", "false_high"]].to_numpy()
    ]
    shown["equivalent"] = calibration["equivalent_rate"].map(_num)
    return [
        ("h2", "A/A check: the verdict rule on random splits of one configuration's seeds"),
        (
            "p",
            "Each configuration with enough seeds, split at random into two arms of k seeds, many times: nothing "
            "differs between the arms, so every 'better' or 'worse' is a false positive. The rule should say it at "
            "most 5% of the time at every k (at k = 1 it makes no claim). Interval: Wilson's, over the splits "
            "(`calibration.csv`; `ablation-report calibrate`).",
        ),
        ("table", shown),
    ]


def _method(aliases: dict[str, list[str]], replicates: int) -> list[str]:
    found = "; ".join(f"{f} (same split as {', '.join(a)})" if a else f for f, a in aliases.items())
    return [
        f"Factors: the params that vary across the finished runs, one per distinct split: {found or 'none'}. "
        "Never factors: `seed` (the replicate) and params splitting the runs like it, and what is not part of "
        f"a configuration: {', '.join(f'`{key}`' for key in NOT_CONFIGURATION)}.",
        "Verdicts: every comparison (each configuration against the baseline, main effects, a design's cells, "
        "interactions) is judged on the configuration. Per paired seed, the difference of the two sides (a main "
        "effect averages it over the other factors' levels, an interaction is a difference of differences). "
        "Interval: Δ ± sqrt(t² s²/n + z² V), where s²/n is the seed part (Student's t with n − 1 degrees of freedom: "
        "exact for 2 or 3 seeds, where a normal quantile is far too narrow) and V the test images' variance of the "
        "mean difference, from the shared image draws of the bootstrap with the seeds held (the seeds cannot see it: "
        "every run is scored on the same images). Adding the two half-widths in quadrature keeps each part's own "
        "quantile; Satterthwaite's pooled degrees of freedom under-covered at 2 seeds in our simulations. "
        "p-value: the level at which the interval reaches 0; Holm per metric over a table (`p_holm`). "
        "**better** / **worse**: p_holm < alpha (0.05; a seeds=auto sweep's 0.05 over its looks); **equivalent**: "
        "two one-sided tests against the metric's margin "
        "(`margin`), Holm-adjusted too; **undecided** otherwise, and always with fewer than two paired seeds. "
        "Measured: false better/worse at most 1.4% at 2, 3 and 5 seeds in 2,000 simulated null studies each, and "
        "the A/A check on the images (docs/verdicts.md).",
        "P(better): the share of paired seeds whose difference favours the first side (ties ½, as rliable), with "
        "Wilson's interval. Seeds to decide: the paired seeds at which the rule would decide, with the spreads as "
        "measured.",
        f"Other intervals: each configuration's 95% percentile interval of a hierarchical bootstrap ({replicates} "
        "replicates, seed 0: the test images drawn with replacement once, shared by every run, then the seeds), "
        "`boot_low/high` and `p_boot` of the comparison tables likewise (descriptive: with one or two seeds the seed "
        "level has almost nothing to redraw, so they never decide); the seed-only Student-t intervals of the "
        "ablation table, clipped to the metric's range, are its `_ci_` columns.",
        f"Default baseline: {BASELINE_RULE}. The best configuration and the best run per network are chosen on the "
        "kept epoch's validation ROC AUC, never on test.",
        "Seed ensembles: the mean test probability over a configuration's seeds; ROC AUC interval and paired "
        "test by DeLong's method (fast midrank form), accuracy by McNemar's exact test: model-level tests, no "
        "verdict.",
        f"Stability: {STABILITY_RULE}.",
        "Failed and killed runs are listed and never averaged in. Of the finished runs with the same configuration "
        "hash (the seed included) and data digest, only the newest counts; the others are listed as duplicates.",
    ]


def _design_summary(tables: Tables) -> list[str]:
    if not _is_designed(tables):
        return []
    lines = [_designed_line(r) for _, r in _designed_rows(tables).iterrows()]
    return [f"**{DESIGNS[tables.design][0]}** (versus the baseline): " + "; ".join(lines) + "."]


def duplicates_line(duplicates: pd.DataFrame) -> str:
    """What the command prints about the duplicates set aside (`Study.duplicates`): '' when none."""
    if not len(duplicates):
        return ""
    ids = ", ".join(duplicates["run_id"][:10]) + (f" and {len(duplicates) - 10} more" if len(duplicates) > 10 else "")
    return (
        f"{len(duplicates)} duplicate run(s) set aside (the same configuration, seed and data as a newer finished "
        f"run, which alone counts; duplicates.csv): {ids}"
    )


def _overview_blocks(study: Study, tables: Tables) -> list:
    """Title, provenance, the answer first, and the ablation table."""
    finished, factors, table = tables.finished, tables.factors, tables.ablation
    source = f"sweep `{study.parent_id}`" if study.parent_id else "all job runs"
    duplicates = f", {len(study.duplicates)} duplicate run(s) set aside" if len(study.duplicates) else ""
    blocks = [
        ("h1", f"Ablation report: {study.experiment}"),
        (
            "meta",
            f"Experiment `{study.experiment}`, {source}: {len(finished)} finished runs in {len(table)} "
            f"configurations, {len(tables.failed)} failed/killed run(s) excluded{duplicates}. Tracking URI "
            f"`{redact(study.tracking_uri)}`; generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        ),
        ("lead", _summary(tables) + _design_summary(tables)),
        ("h2", "Ablation table"),
        (
            "p",
            "Test-set metrics per configuration: mean over seeds [95% interval over seeds and test images, a "
            "hierarchical bootstrap]; ★ = the best configuration, chosen on the kept validation ROC AUC. The seed-only "
            "t-intervals are the `_ci_` columns of `ablation_table.csv`.",
        ),
        ("table", _shown_ablation(table, factors)),
    ]
    single = [label(tuple(r), factors) for r in table.loc[table["n"] == 1, factors].itertuples(index=False)]
    if single:
        blocks.append(("p", f"n = 1: no interval for {'; '.join(single)} (a single finished seed)."))
    return blocks


def _effect_blocks(tables: Tables) -> list:
    """Main effects (when anything varies) and effects versus the baseline (when there is a second config)."""
    factors, blocks = tables.factors, []
    if _is_designed(tables):
        return blocks  # the design's own comparisons (`_design_blocks`) stand in for both
    if factors:
        blocks += [
            ("h2", "Main effects"),
            (
                "p",
                "Each level of a factor pooled over the other factors and seeds, and its difference to the "
                "reference level (the baseline's): per seed, averaged over the other factors' levels where both "
                f"cells ran; {_rule(tables.verdict.alpha)}.",
            ),
            ("table", _shown_main(tables.main)),
        ]
    if len(tables.effects):
        blocks += [
            ("h2", "Effects versus the baseline"),
            (
                "p",
                f"Configuration − baseline ({label(tables.baseline, factors)}), paired on the seed: mean difference "
                f"[95% interval] and the verdict; {_rule(tables.verdict.alpha)} (`effects_table.csv` holds p, "
                "P(better) and the seeds that would decide it).",
            ),
            ("img", "effects.png", "Forest plot of the effects versus the baseline"),
            ("table", _shown_effects(tables.effects, factors)),
        ]
    return blocks


def _best_run_blocks(fetched: Fetched) -> list:
    best = fetched.best
    best_table = pd.DataFrame(
        {
            "network (best run on validation)": [b["title"] for b in best],
            "run": [b["run_id"] for b in best],
            "validation ROC AUC": [_num(b["val_auc"]) for b in best],
            "test ROC AUC": [_num(b["test_auc"]) for b in best],
            "threshold": [_num(b["threshold"], 2) for b in best],
            "predictions": ["logged" if b["predictions"] is not None else "missing" for b in best],
        }
    )
    blocks = [("h2", "Best run per network"), ("table", best_table)]
    if fetched.predicted:
        blocks += [
            ("img", "roc_curves.png", "ROC curves of the best run per network"),
            ("img", "confusion_matrices.png", "Confusion matrices of the best run per network"),
        ]
    blocks += [("img", b["gradcam"].name, f"Grad-CAM on test images, {b['title']}") for b in best if b["gradcam"]]
    return blocks


def _duplicate_blocks(study: Study, tables: Tables) -> list:
    """The finished runs set aside as duplicates of a newer one (`Study.duplicates`), when there are any."""
    duplicates = study.duplicates
    if not len(duplicates):
        return []
    kept = tables.finished.set_index("run_id")
    keys = config_keys(kept, tables.factors)
    shown = pd.DataFrame(
        {
            "run set aside": duplicates["run_id"],
            "started": pd.to_datetime(duplicates["start_time"], unit="ms", utc=True).dt.strftime("%Y-%m-%d %H:%M:%S"),
            "configuration": [
                label(keys[k], tables.factors) if k in keys.index else "—" for k in duplicates["kept_run_id"]
            ],
            "seed": [kept["seed"].get(k, "—") if "seed" in kept else "—" for k in duplicates["kept_run_id"]],
            "kept instead": duplicates["kept_run_id"],
        }
    )
    return [
        ("h2", f"Duplicate runs set aside ({len(duplicates)})"),
        (
            "p",
            "Finished runs with the same configuration hash (`ablation.config_hash`, the seed included) and data "
            "digest (`ablation.data_digest`) as a newer finished run: two sweeps into one store at once, or a re-run "
            "with `tracking.skip_finished=false`. Only the newest of each counts, so that no seed counts twice; "
            "these are in no table (`duplicates.csv`).",
        ),
        ("table", shown),
    ]


def _training_blocks(tables: Tables) -> list:
    """Learning curves and stability, then the failed runs."""
    failed, factors = tables.failed, tables.factors
    blocks = [
        ("h2", "Training"),
        ("img", "learning_curves.png", "Learning curves"),
        ("p", f"Stability: {STABILITY_RULE}."),
        ("table", _shown_stability(tables.stability, factors)),
        ("h2", f"Failed runs ({len(failed)})"),
    ]
    if not len(failed):
        return [*blocks, ("p", "None.")]
    failures = pd.DataFrame(
        {
            "run": failed["run_id"],
            "status": failed["status"],
            "configuration": [label(k, factors) for k in config_keys(failed, factors)],
            "error": failed["error"].fillna("").str.replace(r"\s+", " ", regex=True).str.slice(0, 300),
        }
    )
    return [*blocks, ("table", failures)]


def report_blocks(study: Study, tables: Tables, fetched: Fetched) -> list:
    """The report's content, section by section, as (kind, *args) blocks for `_markdown` and `_html`."""
    return [
        *_overview_blocks(study, tables),
        *_design_blocks(tables),
        *_effect_blocks(tables),
        *_verdict_blocks(tables),
        *_best_run_blocks(fetched),
        *_transfer_blocks(fetched.transfer, tables.finished, tables.factors),
        *_training_blocks(tables),
        *_duplicate_blocks(study, tables),
        ("h2", "Data record"),
        *_data_record_blocks(fetched.record, fetched.top),
        ("h2", "Method"),
        ("ul", _method(tables.aliases, tables.verdict.replicates)),
    ]
