"""Command line: `python -m analysis report [--experiment NAME] [--tracking-uri URI] [--out DIR]
[--baseline K=V,...] [--sweep RUN_ID | --all-runs] [--replicates N] [--halfwidth H]`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ablation.contract import redact
from analysis.runs import AnalysisError, load_study, tracking_uri


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="ablation-report", description=__doc__.split(":")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser(
        "report", help="ablation tables, figures and an HTML/Markdown report of one sweep or experiment"
    )
    report.add_argument("--experiment", help="MLflow experiment (default: the one with the latest sweep)")
    report.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/runs/mlflow.db)",
    )
    report.add_argument(
        "--out", type=Path, help="output folder (default: runs/reports/<experiment>-<sweep id[:8]|all>)"
    )
    report.add_argument("--baseline", help="baseline configuration as K=V,... (default: first level of each factor)")
    report.add_argument(
        "--replicates", type=int, default=2000, help="bootstrap replicates over seeds and test images (default 2000)"
    )
    report.add_argument(
        "--halfwidth", type=float, default=0.01, help="target half-width for 'seeds needed' (default 0.01)"
    )
    which = report.add_mutually_exclusive_group()
    which.add_argument("--sweep", metavar="RUN_ID", help="sweep parent run to analyse (default: the latest)")
    which.add_argument("--all-runs", action="store_true", help="every job run of the experiment, not one sweep")
    args = parser.parse_args(argv)
    if args.replicates < 100 or not 0 < args.halfwidth < 1:
        parser.error(f"--replicates {args.replicates} (an int >= 100) or --halfwidth {args.halfwidth} (in (0, 1))")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Imported late so that `--help` and argument errors answer without loading matplotlib.
    from analysis.report import build_report, default_out

    try:
        study = load_study(tracking_uri(args.tracking_uri), args.experiment, args.sweep, args.all_runs)
        out = args.out or default_out(study)
        written = build_report(study, out, args.baseline, args.replicates, args.halfwidth)
    except AnalysisError as error:
        print(f"analysis report: error: {redact(str(error))}", file=sys.stderr)
        return 2
    print(f"{len(written.files)} files written to {out}")
    if study.parent_id:
        print(f"logged to run {study.parent_id} under artifact path report/")
    print(f"report: {out / 'report.html'}\n{written.headline}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
