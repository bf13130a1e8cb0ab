"""`python -m analysis report`: the tables (CSV), figures (PNG) and report (Markdown + one
self-contained HTML file) of one ablation study, logged back to the sweep run under `report/` (not with
`--no-log`)."""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ablation import interrupts
from ablation.contract import DEFAULT_THRESHOLD, REPORT_ARTIFACT, first_line
from analysis import comparisons, figures, render
from analysis.bootstrap import REPLICATES, Bootstrap, align
from analysis.compare import ALPHA
from analysis.runs import AnalysisError, NotLogged, Study
from analysis.sections import BEST_ON, headline, report_blocks, top_index
from analysis.stats import (
    ablation_table,
    choose_baseline,
    config_keys,
    find_factors,
    label,
    ordered_configs,
    parse_baseline,
    run_stability,
    stability,
)
from analysis.tables import Fetched, Tables
from analysis.transfer import transfer_runs
from analysis.verdict import HALFWIDTH, verdict


def default_out(study: Study, runs: Path | None = None) -> Path:
    """`<runs>/reports/<experiment>-<sweep id[:8] | all>`; `runs` defaults to ./runs."""
    name = re.sub(r"[^\w.-]+", "_", study.experiment)
    return (runs or Path.cwd() / "runs") / "reports" / f"{name}-{study.parent_id[:8] if study.parent_id else 'all'}"


def designed_cells(
    design: dict | None, finished: pd.DataFrame, factors: list[str], kept_for: dict[str, str] | None = None
) -> tuple[list, tuple | None]:
    """From a sweep's design record (loco, one_at_a_time): each compared cell as (label, configuration,
    its reference's configuration), and the first reference's configuration (the report's baseline). `kept_for`:
    a duplicate run's id -> the run kept in its place (`Study.duplicates`), for a design that names a duplicate."""
    if not design or design.get("design") == "grid":
        return [], None
    keys = dict(zip(finished["run_id"], config_keys(finished, factors), strict=True))
    keys |= {aside: keys[kept] for aside, kept in (kept_for or {}).items() if kept in keys}
    key_of = {}
    for cell in design["cells"]:
        found = [keys[job["run_id"]] for job in cell["jobs"] if job.get("run_id") in keys]
        if found:
            key_of[cell["label"]] = found[0]
    compared = [
        (cell["label"], key_of[cell["label"]], key_of[cell["reference"]])
        for cell in design["cells"]
        if cell.get("reference") and cell["label"] in key_of and cell["reference"] in key_of
    ]
    references = [key_of[c["reference"]] for c in design["cells"] if c.get("reference") in key_of]
    return compared, references[0] if references else None


def _best_per_network(
    study: Study, finished: pd.DataFrame, factors: list[str], predictions: dict, tmp: Path
) -> list[dict]:
    by = [figures.NETWORK] if figures.NETWORK in factors else []
    others = [f for f in factors if f not in by]
    ranked = finished.sort_values(BEST_ON, ascending=False, na_position="last", kind="stable")  # on validation
    best = []
    for key in ordered_configs(finished, by):
        run = ranked[config_keys(ranked, by).map(key.__eq__)].iloc[0]
        network = key[0] if by else "best run"
        gradcam = study.artifact(run["run_id"], "gradcam_panel.png", tmp / run["run_id"])
        rest = label(config_keys(run.to_frame().T, others).iloc[0], others)
        seed = run.get("seed", "?")
        best.append(
            {
                "network": network,
                "config": rest,
                "seed": seed,
                "title": f"{network} ({rest}, seed {seed})",
                "run_id": run["run_id"],
                "test_auc": run["test_auc"],
                "val_auc": run.get(BEST_ON, math.nan),
                "threshold": DEFAULT_THRESHOLD if math.isnan(run["threshold"]) else float(run["threshold"]),
                "predictions": predictions.get(run["run_id"], {}).get("test"),
                "gradcam": gradcam,
            }
        )
    return best


def fetch_predictions(study: Study, finished: pd.DataFrame, tmp: Path) -> dict[str, dict[str, pd.DataFrame]]:
    """Each finished run's logged predictions: run id -> split ("val", "test") -> file, label, probability."""
    logged = {}
    for run_id in finished["run_id"]:
        files = {s: study.artifact(run_id, f"{s}_predictions.csv", tmp / run_id) for s in ("val", "test")}
        logged[run_id] = {split: pd.read_csv(path) for split, path in files.items() if path}
    return logged


def _prepared(study: Study, baseline_spec: str | None, predictions: dict):
    """The finished runs, the factors and their aliases, a design's compared cells, the baseline, and the runs'
    test predictions on their shared images."""
    finished = study.finished.reset_index(drop=True)
    factors, aliases = find_factors(finished, study.params)
    kept_for = dict(zip(study.duplicates["run_id"], study.duplicates["kept_run_id"], strict=True))
    compared, reference = designed_cells(study.design, finished, factors, kept_for)
    given = parse_baseline(baseline_spec)
    if reference is not None and not given:  # a designed study's baseline is its design's
        given = dict(zip(factors, reference, strict=True))
    baseline = choose_baseline(finished, factors, given)
    thresholds = dict(zip(finished["run_id"], finished["threshold"].fillna(DEFAULT_THRESHOLD), strict=True))
    test = align({r: p["test"] for r, p in predictions.items() if "test" in p}, thresholds)
    return finished, factors, aliases, compared, baseline, test


def decisions(study: Study, alpha: float, metric: str) -> pd.DataFrame:
    """The verdicts the headline speaks of (a design's cells, else the main effects) on `metric` at level `alpha`:
    what `hydra.sweeper.seeds=auto` decides each round on. One row per comparison."""
    with tempfile.TemporaryDirectory() as tmp:
        predictions = fetch_predictions(study, study.finished, Path(tmp))
    finished, factors, _, compared, baseline, test = _prepared(study, None, predictions)
    boot = Bootstrap(test) if test else None
    if compared:
        built = comparisons.designed(finished, factors, compared)
    else:
        built = comparisons.main_effects(finished, factors, baseline)
    judged = comparisons.judge_all(built, finished, boot, metrics=(metric,), alpha=alpha, factors=factors)
    if judged.empty:
        return pd.DataFrame(columns=["comparison", "seeds", "diff", "ci_low", "ci_high", "verdict"])
    names = judged["cell"] if "cell" in judged else judged["factor"] + "=" + judged["level"]
    shown = judged[["pairs", "diff", "ci_low", "ci_high", "verdict"]].rename(columns={"pairs": "seeds"})
    return shown.assign(comparison=list(names))[["comparison", "seeds", "diff", "ci_low", "ci_high", "verdict"]]


def compute_tables(
    study: Study,
    baseline_spec: str | None,
    predictions: dict,
    replicates: int = REPLICATES,
    halfwidth=HALFWIDTH,
    margins: dict[str, float] | None = None,
) -> Tables:
    finished, factors, aliases, compared, baseline, test = _prepared(study, baseline_spec, predictions)
    history = study.histories(finished["run_id"])
    table = ablation_table(finished, factors)
    alpha = (study.design or {}).get("alpha") or ALPHA  # seeds=auto: each look's level (`AutoSeeds.alpha`)
    judged = verdict(finished, factors, baseline, table, test, compared, halfwidth, margins, replicates, alpha)
    return Tables(
        finished=finished,
        failed=study.failed,
        factors=factors,
        aliases=aliases,
        baseline=baseline,
        history=history,
        ablation=judged.ablation,
        effects=judged.effects,
        main=judged.main,
        stability=stability(finished, factors, run_stability(history)),
        verdict=judged,
        design=(study.design or {}).get("design", "grid"),
        designed=judged.designed,
    )


def fetch_artifacts(study: Study, tables: Tables, out: Path, predictions: dict) -> Fetched:
    """Download what else the report needs from the runs; the Grad-CAM panels it shows are copied into `out`."""
    finished = tables.finished
    top = finished.loc[top_index(finished[BEST_ON]), "run_id"]
    with tempfile.TemporaryDirectory() as tmp:
        best = _best_per_network(study, finished, tables.factors, predictions, Path(tmp))
        transfer = transfer_runs(finished, tables.factors, predictions)
        record = study.data_record(top, Path(tmp) / "record")
        for b in best:
            if b["gradcam"]:
                b["gradcam"] = Path(shutil.copy(b["gradcam"], out / f"gradcam_{b['network'].replace(' ', '_')}.png"))
    return Fetched(best, transfer, top, record)


DUPLICATES_CSV = "duplicates.csv"


def write_tables(tables: Tables, fetched: Fetched, out: Path, duplicates: pd.DataFrame | None = None) -> list[Path]:
    csvs = tables.csvs()
    if not fetched.transfer.empty:
        csvs["threshold_transfer.csv"] = fetched.transfer
    if duplicates is not None and len(duplicates):
        csvs[DUPLICATES_CSV] = duplicates
    for name, frame in csvs.items():
        frame.to_csv(out / name, index=False)
    return [out / name for name in csvs]


def draw_figures(tables: Tables, fetched: Fetched, out: Path) -> list[Path]:
    finished, factors = tables.finished, tables.factors
    pngs = [figures.learning_curves(finished, factors, tables.history, out / "learning_curves.png")]
    if fetched.predicted:
        pngs.append(figures.roc_curves(fetched.predicted, out / "roc_curves.png"))
        pngs.append(figures.confusion_matrices(fetched.predicted, out / "confusion_matrices.png"))
    if len(tables.effects):
        baseline = label(tables.baseline, factors)
        pngs.append(figures.effects_plot(tables.effects, factors, baseline, out / "effects.png"))
    return pngs


def write_documents(blocks: list, out: Path, title: str) -> list[Path]:
    (out / "report.md").write_text(render.markdown(blocks))
    (out / "report.html").write_text(render.html_document(blocks, out, title))
    return [out / "report.md", out / "report.html"]


def log_to_parent(study: Study, files: list[Path]) -> None:
    """Upload the report's files to the sweep parent run, under `report/`; nothing without a parent. A Ctrl-C (or
    SIGTERM) waits until every file is logged, so an interrupted report is logged whole or not at all; a second one
    stops at once."""
    if study.parent_id:
        logged = 0
        try:
            with interrupts.held():
                for path in files:
                    study.client.log_artifact(study.parent_id, str(path), REPORT_ARTIFACT)
                    logged += 1
        except KeyboardInterrupt as interrupt:
            interrupt.logged = (logged, len(files), study.parent_id)  # what it left (`python -m analysis` says)
            raise
        except Exception as error:
            raise NotLogged(
                f"the report was written, but not logged to run {study.parent_id} ({first_line(error)})"
            ) from error


@dataclass
class Written:
    files: list[Path]
    headline: str  # the report's first line: the best configuration, or what a designed study found
    logged: bool = False  # uploaded to the sweep's parent run


def build_report(
    study: Study,
    out: Path,
    baseline_spec: str | None = None,
    replicates: int = REPLICATES,
    halfwidth=HALFWIDTH,
    margins: dict[str, float] | None = None,
    log: bool = True,
) -> Written:
    """Write every output file into `out`; log them to the sweep run when there is one and `log`. `margins`: the
    practical margin per test metric for "equivalent" (`ablation.contract.MARGINS` by default). Raises `NotLogged`
    when the files are written but the store will not take them."""
    with tempfile.TemporaryDirectory() as tmp:
        predictions = fetch_predictions(study, study.finished, Path(tmp))
    tables = compute_tables(study, baseline_spec, predictions, replicates, halfwidth, margins)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AnalysisError(f"cannot write the report to {out}: {error.strerror or error}") from None
    fetched = fetch_artifacts(study, tables, out, predictions)
    files = write_tables(tables, fetched, out, study.duplicates) + draw_figures(tables, fetched, out)
    files += fetched.gradcams + write_documents(report_blocks(study, tables, fetched), out, study.experiment)
    if log:
        log_to_parent(study, files)
    return Written(files, headline(tables), logged=bool(log and study.parent_id))


def calibration(study: Study, splits: int) -> pd.DataFrame:
    """`ablation-report calibrate`: the A/A table of the study's configurations with enough seeds."""
    from analysis.calibrate import MIN_SEEDS, calibrate

    with tempfile.TemporaryDirectory() as tmp:
        predictions = fetch_predictions(study, study.finished, Path(tmp))
    finished, factors, _, _, _, test = _prepared(study, None, predictions)
    table = calibrate(finished, factors, Bootstrap(test) if test else None, splits)
    if table.empty:
        raise AnalysisError(
            f"experiment {study.experiment!r} has no configuration with {MIN_SEEDS} or more finished seeds that logged "
            "their test predictions (python -m ablation -m study=calibration trains 16)"
        )
    return table
