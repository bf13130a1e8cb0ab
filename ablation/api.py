"""The framework from Python, for a notebook: compose a config, train one run, run a sweep.

    from ablation import api
    cfg = api.compose(["experiment=quick", "model=resnet18"])        # the config `python -m ablation` would run
    run = api.train(["experiment=tiny"])                             # one run: its id, status and test metrics
    study = api.sweep(["dropout=0,0.5"], study="quickstart")         # a sweep: the parent run, the jobs, the report

`train` and `sweep` run `python -m ablation` itself in a child process, with the same sweeper, launcher, resume,
parent run and end-of-sweep report as the command line, and print its console lines as they come: one code path,
the same MLflow store, runs that cannot be told from the command line's. A child process also keeps TensorFlow and
its threads out of the notebook's kernel. `analysis.api.load(sweep=done.parent_run_id,
tracking_uri=done.tracking_uri)` reads what a sweep left: its tables, figures and report.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from ablation import contract

PROJECT = Path(__file__).resolve().parents[1]
CONF = PROJECT / "conf"


class RunError(RuntimeError):
    """`python -m ablation` ended with an error; the message holds its last lines."""


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config `python -m ablation OVERRIDES` runs, composed by Hydra's compose API (resolved paths included).

    >>> compose(["experiment=tiny"]).data.image_size
    32
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ablation.config import register

    register()
    os.environ.setdefault("ABLATION_ROOT", str(PROJECT))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


@dataclass
class Run:
    """One run `train` made: its MLflow id, status and test metrics (`test_auc`, ...)."""

    run_id: str | None
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    tracking_uri: str = ""


@dataclass
class Sweep:
    """What `sweep` ran: the sweep folder, its parent run and store, and one row per job and seed."""

    folder: Path
    parent_run_id: str | None
    tracking_uri: str
    jobs: object  # pandas.DataFrame: job, seed, status, run_id, test_auc, overrides

    @property
    def ui_link(self) -> str:
        """The MLflow UI's runs table of the sweep's experiment (`mlflow ui --backend-store-uri TRACKING_URI`)."""
        from mlflow import MlflowClient

        from ablation.tracking import ui_link

        experiment_id = MlflowClient(self.tracking_uri).get_run(self.parent_run_id).info.experiment_id
        return ui_link(self.tracking_uri, experiment_id)


def _run_ablation(arguments: list[str], echo: bool) -> list[str]:
    """`python -m ablation ARGUMENTS` in the project folder; its output lines, printed as they come when `echo`."""
    env = {**os.environ, "ABLATION_ROOT": os.environ.get("ABLATION_ROOT", str(PROJECT)), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "ablation", *arguments]
    lines: list[str] = []
    with subprocess.Popen(
        command, cwd=env["ABLATION_ROOT"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        try:
            for line in process.stdout:
                lines.append(line.rstrip("\n"))
                if echo:
                    print(line, end="", flush=True)
            process.wait()
        except KeyboardInterrupt:  # the notebook's stop button: the child ends its runs KILLED, as on Ctrl-C
            process.send_signal(2)
            process.wait(120)
            raise
    if process.returncode != 0:
        tail = "\n".join(lines[-30:])
        raise RunError(f"python -m ablation {' '.join(arguments)} exited {process.returncode}:\n{tail}")
    return lines


RUN_LINE = re.compile(r"(?:MLflow run|already FINISHED as run) ([0-9a-f]{32})")  # trained, or skipped (resume)
SWEEP_LINE = re.compile(r"^Sweep (\S.*):$")


def train(overrides: Iterable[str] = (), echo: bool = True) -> Run:
    """One run of `python -m ablation OVERRIDES`; its id, status and test metrics. A configuration that already
    FINISHED is skipped (resume) and its run returned.

    >>> run = train(["experiment=tiny"])     # doctest: +SKIP
    >>> run.status, round(run.metrics["test_auc"], 2)
    ('FINISHED', 0.87)
    """
    overrides = list(overrides)
    lines = _run_ablation(overrides, echo)
    found = [match.group(1) for line in lines if (match := RUN_LINE.search(line))]
    uri = compose(overrides).tracking.uri
    if not found:
        return Run(None, "UNKNOWN", tracking_uri=uri)
    from mlflow import MlflowClient

    run = MlflowClient(uri).get_run(found[-1])
    metrics = {k: v for k, v in run.data.metrics.items() if k in contract.TEST_METRICS}
    return Run(run.info.run_id, run.info.status, metrics, uri)


def sweep(overrides: Iterable[str] = (), study: str | None = None, echo: bool = True) -> Sweep:
    """A sweep, `python -m ablation -m [study=STUDY] OVERRIDES`: the study sweeper, the launcher, resume, the parent
    run and the end-of-sweep report, as on the command line. A second call with the same arguments trains nothing
    that already FINISHED.

    >>> done = sweep(["experiment=tiny", "dropout=0,0.5", "hydra.sweeper.seeds=2"])    # doctest: +SKIP
    >>> done.jobs[["seed", "status", "test_auc"]]
    """
    import json

    from ablation.sweep import read_jobs

    overrides = list(overrides)
    arguments = ["-m", *([f"study={study}"] if study else []), *overrides]
    lines = _run_ablation(arguments, echo)
    folders = [m.group(1) for line in lines if (m := SWEEP_LINE.match(line))]
    if not folders:
        raise RunError(f"python -m ablation {' '.join(arguments)} printed no sweep table: nothing ran")
    folder = Path(folders[-1])
    parent = folder / contract.PARENT_FILE
    record = json.loads(parent.read_text()) if parent.exists() else {}
    # Every job skipped (resume): no parent run, so the store is the config's (the keys that say where it is).
    where = [o for o in overrides if o.lstrip("+~").startswith(("tracking", "paths"))]
    uri = record.get("tracking_uri") or compose([*([f"study={study}"] if study else []), *where]).tracking.uri
    return Sweep(folder, record.get("run_id"), uri, read_jobs(folder))
