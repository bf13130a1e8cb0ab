"""Statistics behind `python -m analysis report`: pure functions on the runs DataFrame of `analysis.runs`.

Conventions: a configuration is one combination of factor values (a tuple of strings, in `factors`
order); seeds are its replicates. Every interval is a two-sided 95% Student-t interval.
"""

from __future__ import annotations

import gc
import itertools
import math
import warnings

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from ablation.contract import TEST_METRICS, is_configuration_key, same_level
from analysis.runs import AnalysisError

LEVEL = 0.95
REPLICATE = "seed"
UNSET = "(unset)"
OFF = {"none", "false", "off", "no", "null", "0", "0.0", ""}
NAN3 = (math.nan, math.nan, math.nan)
COMPARISON = ["diff", "ci_low", "ci_high", "p_value", "test", "pairs"]


def find_factors(runs: pd.DataFrame, params: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Params that vary across `runs`, one per distinct partition of the runs; with their aliases.

    A param that partitions the runs exactly like `seed` (a split seed, say) is a replicate, not a factor;
    one that is not part of a configuration (`ablation.contract.is_configuration_key`: where things are
    stored, how verbose) is never one.
    """
    groups: dict[tuple, list[str]] = {}
    for name in params:
        if not is_configuration_key(name):
            continue
        values = runs[name].fillna(UNSET).astype(str)
        if values.nunique() > 1:
            groups.setdefault(tuple(pd.factorize(values)[0]), []).append(name)
    chosen = {}
    for names in groups.values():
        if REPLICATE not in names:
            names = sorted(names, key=lambda n: (len(n), n))
            chosen[names[0]] = names[1:]
    factors = sorted(chosen, key=lambda f: (f != "model", f))  # model first: it is the figures' panel axis
    return factors, {f: chosen[f] for f in factors}


def level_key(value: str) -> tuple:
    """Sort key for levels: "off" values (none, False, 0) first, then numbers numerically, then text."""
    text = str(value).strip().lower()
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    numeric = not math.isnan(number)
    return (text not in OFF, not numeric, number if numeric else 0.0, text)


def config_keys(runs: pd.DataFrame, factors: list[str]) -> pd.Series:
    values = runs[factors].fillna(UNSET).astype(str)
    return pd.Series([tuple(row) for row in values.itertuples(index=False)], index=runs.index, dtype=object)


def ordered_configs(runs: pd.DataFrame, factors: list[str]) -> list[tuple]:
    return sorted(set(config_keys(runs, factors)), key=lambda key: [level_key(v) for v in key])


def label(key: tuple, factors: list[str]) -> str:
    return ", ".join(f"{f}={v}" for f, v in zip(factors, key, strict=True)) or "all runs"


def t_interval(values) -> tuple[float, float, float]:
    """(mean, low, high); the bounds are NaN below two values."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return NAN3
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf((1 + LEVEL) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return mean, mean - half, mean + half


def compare(treated: pd.Series, reference: pd.Series, partial: bool = False) -> dict:
    """treated − reference with CI and p-value.

    The index holds the pairing key (seed, or seed plus the other factors' levels). Paired t-test when
    the keys are unique on both sides, at least two are shared and, unless `partial`, both sides hold
    exactly the same keys (with `partial`, runs without a partner are left out); otherwise Welch's
    t-test on all values.
    """
    treated, reference = treated.dropna(), reference.dropna()
    unique = treated.index.is_unique and reference.index.is_unique
    common = treated.index.intersection(reference.index, sort=False) if unique else []
    if len(common) >= 2 and (partial or len(common) == len(treated) == len(reference)):
        treated, reference = treated[common], reference[common]
        diff, low, high = t_interval(treated - reference)
        with warnings.catch_warnings():  # identical pairs: p is NaN, which is the honest answer
            warnings.simplefilter("ignore", RuntimeWarning)
            p = stats.ttest_rel(treated, reference).pvalue
        return dict(diff=diff, ci_low=low, ci_high=high, p_value=float(p), test="paired t-test", pairs=len(common))
    diff = treated.mean() - reference.mean()
    n1, n2 = len(treated), len(reference)
    if min(n1, n2) < 2:
        return dict(diff=diff, ci_low=math.nan, ci_high=math.nan, p_value=math.nan, test="n = 1: no interval", pairs=0)
    v1, v2 = treated.var(ddof=1) / n1, reference.var(ddof=1) / n2
    se = math.sqrt(v1 + v2)
    if se == 0:
        low = high = diff
    else:  # Welch–Satterthwaite degrees of freedom
        df = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))
        half = stats.t.ppf((1 + LEVEL) / 2, df) * se
        low, high = diff - half, diff + half
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = stats.ttest_ind(treated, reference, equal_var=False).pvalue
    return dict(diff=diff, ci_low=low, ci_high=high, p_value=float(p), test="Welch t-test", pairs=0)


def ablation_table(runs: pd.DataFrame, factors: list[str], metrics=TEST_METRICS) -> pd.DataFrame:
    keys = config_keys(runs, factors)
    rows = []
    for key in ordered_configs(runs, factors):
        group = runs[keys.map(key.__eq__)]
        row = {**dict(zip(factors, key, strict=True)), "n": len(group)}
        for m in metrics:
            row[f"{m}_mean"], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = t_interval(group[m])
        rows.append(row)
    return pd.DataFrame(rows)


def parse_baseline(spec: str | None) -> dict[str, str]:
    if not spec:
        return {}
    pairs = [item.split("=", 1) for item in spec.split(",") if item.strip()]
    if any(len(p) != 2 for p in pairs):
        raise AnalysisError(f"--baseline {spec!r}: expected K=V,K=V,...")
    return {k.strip(): v.strip() for k, v in pairs}


def choose_baseline(runs: pd.DataFrame, factors: list[str], given: dict[str, str]) -> tuple:
    """The configuration matching `given`; each factor not given takes its first level (`level_key`)
    among the configurations still matching, factor by factor."""
    unknown = sorted(set(given) - set(factors))
    if unknown:
        raise AnalysisError(
            f"--baseline: {', '.join(unknown)} is not a factor; factors: {', '.join(factors) or 'none'}"
        )
    configs = ordered_configs(runs, factors)
    candidates = [c for c in configs if all(same_level(c[factors.index(f)], v) for f, v in given.items())]
    if not candidates:
        levels = "; ".join(
            f"{f}: {', '.join(sorted({c[i] for c in configs}, key=level_key))}" for i, f in enumerate(factors)
        )
        raise AnalysisError(
            f"--baseline {','.join(f'{k}={v}' for k, v in given.items())} matches no configuration; "
            f"available values: {levels}"
        )
    for i, f in enumerate(factors):
        if f not in given:
            first = min((c[i] for c in candidates), key=level_key)
            candidates = [c for c in candidates if c[i] == first]
    return candidates[0]


def keyed_by_seed(runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """runs indexed by the pairing key: `columns` plus seed (the run id when there is no seed)."""
    key = [*columns, REPLICATE] if REPLICATE in runs else ["run_id"]
    values = runs[key].fillna(UNSET).astype(str).itertuples(index=False)
    return runs.set_axis(["|".join(v) for v in values], axis=0)


def effects(runs: pd.DataFrame, factors: list[str], baseline: tuple, metrics=TEST_METRICS) -> pd.DataFrame:
    """Every other configuration minus the baseline, per metric (long format)."""
    keys = config_keys(runs, factors)
    base = keyed_by_seed(runs[keys.map(baseline.__eq__)], [])
    rows = []
    for key in ordered_configs(runs, factors):
        if key == baseline:
            continue
        group = keyed_by_seed(runs[keys.map(key.__eq__)], [])
        for m in metrics:
            rows.append(
                {
                    **dict(zip(factors, key, strict=True)),
                    "metric": m,
                    "n": len(group),
                    "n_baseline": len(base),
                    **compare(group[m], base[m]),
                }
            )
    return pd.DataFrame(rows, columns=[*factors, "metric", "n", "n_baseline", *COMPARISON])


def main_effects(runs: pd.DataFrame, factors: list[str], baseline: tuple, metrics=TEST_METRICS) -> pd.DataFrame:
    """Per factor and level: mean and t-interval over all finished runs at that level (the other
    factors and seeds pooled), and the difference to the baseline's level of that factor, paired on
    (other factors' levels, seed) over the runs that have such a partner."""
    rows = []
    for i, f in enumerate(factors):
        values = runs[f].fillna(UNSET).astype(str)
        keyed = keyed_by_seed(runs, [g for g in factors if g != f])
        reference = keyed[(values == baseline[i]).to_numpy()]
        for level in sorted(values.unique(), key=level_key):
            at = keyed[(values == level).to_numpy()]
            for m in metrics:
                mean, low, high = t_interval(at[m])
                row = {"factor": f, "level": level, "reference": baseline[i], "metric": m, "n": len(at)}
                row.update(mean=mean, ci_low=low, ci_high=high)
                if level == baseline[i]:
                    row.update(diff=math.nan, diff_ci_low=math.nan, diff_ci_high=math.nan, p_value=math.nan)
                    row.update(test="reference", pairs=0)
                else:
                    c = compare(at[m], reference[m], partial=True)
                    row.update(diff=c["diff"], diff_ci_low=c["ci_low"], diff_ci_high=c["ci_high"])
                    row.update(p_value=c["p_value"], test=c["test"], pairs=c["pairs"])
                rows.append(row)
    columns = ["factor", "level", "reference", "metric", "n", "mean", "ci_low", "ci_high", "diff"]
    return pd.DataFrame(rows, columns=[*columns, "diff_ci_low", "diff_ci_high", "p_value", "test", "pairs"])


def matters(low, high, p):
    """A difference is called real when its 95% CI excludes zero or its p-value is below 0.05
    (elementwise on Series)."""
    return (low > 0) | (high < 0) | (p < 0.05)


def run_stability(histories: pd.DataFrame) -> pd.DataFrame:
    """Per run: jitter = mean |v(e) − v(e−1)| over the epochs e > E/2 (E = last logged epoch), for
    val_accuracy and val_loss; the (first) epoch of the highest val_auc; E as `epochs_logged` (`epochs` may
    be a factor)."""
    rows = []
    for run_id, hist in histories.groupby("run_id"):
        row = {"run_id": run_id, "epochs_logged": hist["step"].max()}
        for key in ("val_accuracy", "val_loss"):
            series = hist[hist["key"] == key].set_index("step")["value"].sort_index()
            jumps = series.diff().abs()
            row[f"{key}_jitter"] = jumps[jumps.index > series.index.max() / 2].mean()
        auc = hist[hist["key"] == "val_auc"].set_index("step")["value"].sort_index().dropna()
        row["best_val_auc_epoch"] = auc.idxmax() if len(auc) else math.nan
        rows.append(row)
    return pd.DataFrame(
        rows, columns=["run_id", "epochs_logged", "val_accuracy_jitter", "val_loss_jitter", "best_val_auc_epoch"]
    )


def stability(runs: pd.DataFrame, factors: list[str], per_run: pd.DataFrame) -> pd.DataFrame:
    """run_stability averaged over the seeds of each configuration."""
    merged = runs[["run_id", *factors]].merge(per_run, on="run_id", how="left")
    keys = config_keys(merged, factors)
    rows = []
    for key in ordered_configs(merged, factors):
        group = merged[keys.map(key.__eq__)]
        row = {**dict(zip(factors, key, strict=True)), "n": len(group)}
        for col in ("epochs_logged", "val_accuracy_jitter", "val_loss_jitter", "best_val_auc_epoch"):
            row[col] = group[col].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels' `multipletests`), NaN where the raw one is NaN."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        # statsmodels' Holm branch calls gc.collect(): about a second in a process holding MLflow and pandas.
        # Frozen objects are left out of that scan, so it costs nothing; they are unfrozen right after.
        gc.freeze()
        try:
            adjusted[finite] = multipletests(p[finite], method="holm")[1]
        finally:
            gc.unfreeze()
    return adjusted


def holm_by_metric(table: pd.DataFrame, p_column: str, rows=None) -> pd.Series:
    """`p_holm`: Holm over the rows of each metric (all of them, or the `rows` mask), NaN elsewhere."""
    adjusted = pd.Series(np.nan, index=table.index)
    mask = pd.Series(True, index=table.index) if rows is None else rows
    for _, group in table[mask].groupby("metric", sort=False):
        adjusted[group.index] = holm(group[p_column])
    return adjusted


def detectable_difference(sd_diff: float, n: int, power: float = 0.8) -> float:
    """The smallest true difference a two-sided paired t-test at 5% finds with `power`, at n pairs of spread sd."""
    if n < 2 or not np.isfinite(sd_diff):
        return math.nan
    d = TTestPower().solve_power(nobs=n, alpha=1 - LEVEL, power=power, alternative="two-sided")
    return float(d * sd_diff)


def seeds_for_halfwidth(sd_diff: float, halfwidth: float, cap: int = 100_000) -> float:
    """The smallest n >= 2 whose t-interval of a mean difference of spread sd has half-width <= `halfwidth`."""
    if not np.isfinite(sd_diff):
        return math.nan
    z = stats.norm.ppf((1 + LEVEL) / 2)
    n = max(2, math.ceil((z * sd_diff / halfwidth) ** 2))  # t > z: the answer is at least this
    while stats.t.ppf((1 + LEVEL) / 2, n - 1) * sd_diff / math.sqrt(n) > halfwidth:
        n += 1
        if n > cap:
            return math.nan
    return float(n)


def full_factorial(runs: pd.DataFrame, factors: list[str]) -> bool:
    """Two or more factors, and every combination of their levels has a finished run."""
    if len(factors) < 2:
        return False
    levels = [runs[f].fillna(UNSET).astype(str).nunique() for f in factors]
    return len(set(config_keys(runs, factors))) == math.prod(levels)


def interaction_units(
    runs: pd.DataFrame, factors: list[str], baseline: tuple, a: str, b: str, level_a: str, level_b: str
) -> list[dict]:
    """The blocks (other factors' levels and seed) that hold all four cells of the a x b contrast, with the
    run id of each cell: (level_a, level_b), (ref_a, level_b), (level_a, ref_b), (ref_a, ref_b)."""
    ia, ib = factors.index(a), factors.index(b)
    cells = [(level_a, level_b), (baseline[ia], level_b), (level_a, baseline[ib]), (baseline[ia], baseline[ib])]
    keyed = keyed_by_seed(runs, [f for f in factors if f not in (a, b)])
    va, vb = (runs[f].fillna(UNSET).astype(str).to_numpy() for f in (a, b))
    units: dict[str, list] = {}
    for j, (x, y) in enumerate(cells):
        cell = (va == x) & (vb == y)
        for unit, run_id in zip(keyed.index[cell], keyed["run_id"][cell], strict=True):
            units.setdefault(unit, [None] * 4)[j] = run_id
    return [{"unit": u, "runs": r} for u, r in units.items() if None not in r]


INTERACTION = (1.0, -1.0, -1.0, 1.0)  # (a, b) − (a0, b) − (a, b0) + (a0, b0): a difference of differences


def interactions(runs: pd.DataFrame, factors: list[str], baseline: tuple, metrics=TEST_METRICS) -> pd.DataFrame:
    """Two-way interaction contrasts in a full factorial: for each pair of factors and each pair of non-reference
    levels, how much the effect of one changes with the other, with a t-interval over the blocks."""
    rows = []
    by_id = runs.set_index("run_id")
    for a, b in itertools.combinations(factors, 2):
        ia, ib = factors.index(a), factors.index(b)
        levels_a = [x for x in sorted(runs[a].fillna(UNSET).astype(str).unique(), key=level_key) if x != baseline[ia]]
        levels_b = [x for x in sorted(runs[b].fillna(UNSET).astype(str).unique(), key=level_key) if x != baseline[ib]]
        for level_a, level_b in itertools.product(levels_a, levels_b):
            units = interaction_units(runs, factors, baseline, a, b, level_a, level_b)
            for m in metrics:
                values = [sum(c * by_id.at[r, m] for c, r in zip(INTERACTION, u["runs"], strict=True)) for u in units]
                mean, low, high = t_interval(values)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    p = stats.ttest_1samp(values, 0.0).pvalue if len(values) >= 2 else math.nan
                rows.append(
                    {
                        "factor_a": a,
                        "level_a": level_a,
                        "reference_a": baseline[ia],
                        "factor_b": b,
                        "level_b": level_b,
                        "reference_b": baseline[ib],
                        "metric": m,
                        "n": len(values),
                        "diff": mean,
                        "ci_low": low,
                        "ci_high": high,
                        "p_value": float(p),
                        "units": [u["runs"] for u in units],
                    }
                )
    return pd.DataFrame(rows)


def anova(runs: pd.DataFrame, factors: list[str], metric: str = "test_auc") -> pd.DataFrame | None:
    """ANOVA of `metric` on the factors and all their interactions, with the seed as a block (statsmodels, type
    II sums of squares); None without a full factorial of two factors or more, seeds, or residual degrees of
    freedom (a leave-one-out or one-at-a-time design has no interactions to estimate)."""
    if len(factors) < 2 or REPLICATE not in runs or runs[REPLICATE].nunique() < 2 or not full_factorial(runs, factors):
        return None
    names = {f: f"f{i}" for i, f in enumerate(factors)}  # formula-safe names for dotted params
    data = runs[[*factors, REPLICATE, metric]].rename(columns=names).astype({v: str for v in names.values()})
    data = data.assign(block=runs[REPLICATE].astype(str), y=runs[metric].astype(float)).dropna(subset=["y"])
    formula = "y ~ " + " * ".join(f"C({v})" for v in names.values()) + " + C(block)"
    fit = smf.ols(formula, data=data).fit()
    if fit.df_resid < 1:
        return None
    table = anova_lm(fit, typ=2).reset_index(names="source")
    back = {f"C({v})": f for f, v in names.items()} | {"C(block)": "seed (block)"}
    table["source"] = [":".join(back.get(part, part) for part in s.split(":")) for s in table["source"]]
    table.insert(1, "metric", metric)
    return table.rename(columns={"sum_sq": "sum_sq", "df": "df", "F": "F", "PR(>F)": "p_value"})
