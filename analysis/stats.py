"""Statistics behind `python -m analysis report`: pure functions on the runs DataFrame of `analysis.runs`.

Conventions: a configuration is one combination of factor values (a tuple of strings, in `factors`
order); seeds are its replicates. A configuration's interval is a two-sided 95% Student-t interval over its seeds,
clipped to the metric's range; the comparisons between configurations are `analysis.comparisons`'.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.power import TTestPower

from ablation.contract import KEPT_METRICS, TEST_METRICS, is_configuration_key, same_level
from analysis.compare import holm
from analysis.runs import AnalysisError

LEVEL = 0.95
REPLICATE = "seed"
UNSET = "(unset)"
OFF = {"none", "false", "off", "no", "null", "0", "0.0", ""}
NAN3 = (math.nan, math.nan, math.nan)


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


def t_interval(values, bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float, float]:
    """(mean, low, high) of a metric over seeds, clipped to its range `bounds` (the truth lies in it, so clipping
    loses no coverage); the interval is NaN below two values."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return NAN3
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf((1 + LEVEL) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return mean, max(mean - half, bounds[0]), min(mean + half, bounds[1])


def ablation_table(runs: pd.DataFrame, factors: list[str], metrics=TEST_METRICS) -> pd.DataFrame:
    """One row per configuration: the seeds, each test metric's mean and t-interval, and the kept epoch's
    validation metrics (`kept_val_auc_mean`: what "the best configuration" is chosen on)."""
    keys = config_keys(runs, factors)
    rows = []
    for key in ordered_configs(runs, factors):
        group = runs[keys.map(key.__eq__)]
        row = {**dict(zip(factors, key, strict=True)), "n": len(group)}
        for m in metrics:
            row[f"{m}_mean"], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = t_interval(group[m])
        for m in KEPT_METRICS:
            row[f"{m}_mean"] = float(group[m].mean()) if m in group else math.nan
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
