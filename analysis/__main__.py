"""Command line: `python -m analysis report [--experiment NAME] [--tracking-uri URI] [--out DIR]
[--baseline K=V,...] [--margin METRIC=X,...] [--sweep RUN_ID | --all-runs] [--replicates N] [--halfwidth H]
[--no-log]` and `python -m analysis calibrate --experiment NAME [--tracking-uri URI] [--out DIR] [--splits N]`.

Exit status: 0 done, 2 an error (one line on stderr), 130 interrupted (Ctrl-C, SIGTERM, SIGHUP: one line; the
report is logged whole or not at all)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ablation import interrupts
from ablation.contract import MARGINS, quiet_environment, redact
from analysis.runs import AnalysisError, NotLogged, load_study, tracking_uri


def margins(spec: str) -> dict[str, float]:
    """`test_auc=0.01,test_accuracy=0.02` (or `auc=0.01`): the practical margin per test metric."""
    given = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = item.partition("=")
        metric = name.strip() if name.strip().startswith("test_") else f"test_{name.strip()}"
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if metric not in MARGINS or not 0 < number < 1:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected METRIC=X with METRIC one of {', '.join(MARGINS)} and X in (0, 1)"
            )
        given[metric] = number
    return given


def _common(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/runs/mlflow.db)",
    )
    command.add_argument(
        "--out", type=Path, help="output folder (default: runs/reports/<experiment>-<sweep id[:8]|all>)"
    )


def main(argv: list[str] | None = None) -> int:
    quiet_environment()  # no download bar for every file the report reads
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="ablation-report", description=__doc__.split(":")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser(
        "report", help="ablation tables, verdicts, figures and an HTML/Markdown report of one sweep or experiment"
    )
    report.add_argument("--experiment", help="MLflow experiment (default: the one with the latest sweep)")
    _common(report)
    report.add_argument("--baseline", help="baseline configuration as K=V,... (default: first level of each factor)")
    report.add_argument(
        "--margin",
        type=margins,
        default={},
        help="practical margin for 'equivalent' per metric, METRIC=X,... (default test_auc=0.005, "
        "test_accuracy=0.01; README: verdicts)",
    )
    report.add_argument(
        "--replicates", type=int, default=2000, help="bootstrap replicates over seeds and test images (default 2000)"
    )
    report.add_argument(
        "--halfwidth", type=float, default=0.01, help="target half-width for 'seeds needed' (default 0.01)"
    )
    which = report.add_mutually_exclusive_group()
    which.add_argument("--sweep", metavar="RUN_ID", help="sweep parent run to analyse (default: the latest)")
    which.add_argument("--all-runs", action="store_true", help="every job run of the experiment, not one sweep")
    report.add_argument(
        "--no-log",
        action="store_true",
        help="write the report without logging it to the sweep's parent run (a read-only store)",
    )
    calibrate = commands.add_parser(
        "calibrate", help="the A/A check: the verdict rule's false better/worse rate on random splits of seeds"
    )
    calibrate.add_argument("--experiment", required=True, help="MLflow experiment whose job runs to split")
    _common(calibrate)
    calibrate.add_argument("--splits", type=int, default=500, help="random splits per arm size (default 500)")
    args = parser.parse_args(argv)
    if args.command == "report" and (args.replicates < 100 or not 0 < args.halfwidth < 1):
        parser.error(f"--replicates {args.replicates} (an int >= 100) or --halfwidth {args.halfwidth} (in (0, 1))")
    if args.command == "calibrate" and args.splits < 10:
        parser.error(f"--splits {args.splits}: an int >= 10")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with interrupts.installed():  # Ctrl-C, SIGTERM, SIGHUP: after the store call they land in; one line, exit 130
            return _calibrate(args) if args.command == "calibrate" else _report(args)
    except AnalysisError as error:
        hint = "; pass --no-log to write it without logging it" if isinstance(error, NotLogged) else ""
        print(f"analysis {args.command}: error: {redact(str(error))}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        interrupts.take()
        interrupts.forget()
        why = str(interrupt) or "Ctrl-C"  # SIGTERM and SIGHUP say their name
        print(f"analysis {args.command}: interrupted ({why}); {_left(interrupt)}", file=sys.stderr)
        return interrupts.EXIT_STATUS


def _left(interrupt: KeyboardInterrupt) -> str:
    """What an interrupted command left on the parent run (`analysis.report.log_to_parent` says), in a few words."""
    done, total, parent_id = getattr(interrupt, "logged", (0, 0, None))
    if done == 0:
        return "nothing was logged"
    if done == total:
        return f"the report had been written and logged whole to run {parent_id}"
    return f"{done} of the report's {total} files were logged to run {parent_id} (a second interrupt): run it again"


def _report(args) -> int:
    # Imported late so that `--help` and argument errors answer without loading matplotlib.
    from analysis.report import build_report, default_out
    from analysis.sections import duplicates_line

    uri = tracking_uri(args.tracking_uri)
    study = load_study(uri, args.experiment, args.sweep, args.all_runs, send_journals=not args.no_log)
    out = args.out or default_out(study)
    what = f"sweep {study.parent_id}" if study.parent_id else f"all job runs of experiment {study.experiment!r}"
    print(f"building the report of {what} ({len(study.finished)} finished runs) in {out}", flush=True)
    if line := duplicates_line(study.duplicates):
        print(line, flush=True)
    log = not args.no_log
    written = build_report(study, out, args.baseline, args.replicates, args.halfwidth, args.margin, log=log)
    print(f"{len(written.files)} files written to {out}")
    if written.logged:
        print(f"logged to run {study.parent_id} under artifact path report/")
    elif study.parent_id:
        print(f"not logged to run {study.parent_id} (--no-log)")
    print(f"report: {out / 'report.html'}\n{written.headline}")
    return 0


def _calibrate(args) -> int:
    """The A/A table of every configuration of the experiment with enough seeds, printed and written as CSV."""
    from analysis.report import calibration

    study = load_study(tracking_uri(args.tracking_uri), args.experiment, all_runs=True)
    table = calibration(study, args.splits)
    out = args.out or Path.cwd() / "runs" / "reports" / f"{study.experiment}-calibration"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "calibration.csv", index=False)
    shown = table.assign(false_rate=table["false_rate"].round(3), false_low=table["false_low"].round(3))
    shown = shown.assign(false_high=table["false_high"].round(3), equivalent_rate=table["equivalent_rate"].round(3))
    print(shown.to_string(index=False))
    print(f"written: {out / 'calibration.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
