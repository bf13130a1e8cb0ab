"""The contract between training (`python -m ablation`) and the analysis (`python -m analysis`): every name one
side writes and the other reads, and the defaults both assume.

Tag names, sweep-folder and artifact names, metric names, the default threshold, the class names, what is not
part of a configuration, where the default MLflow store is, and `redact`. Neither side imports the other's
internals; both import this. No Keras, no MLflow, no pandas here: the study sweeper and the report load it cheaply.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

from ablation.metrics import METRICS

# --- run tags -------------------------------------------------------------------------------------------------
ROLE = "ablation.role"  # SWEEP on a parent run, JOB on a child run
SWEEP, JOB = "sweep", "job"
CONFIG_HASH = "ablation.config_hash"  # with the data digest, what resume matches (ablation.resume)
DATA_DIGEST = "ablation.data_digest"
GIT_COMMIT = "git_commit"
HOST, PID = "ablation.host", "ablation.pid"
HEARTBEAT = "ablation.heartbeat"  # unix seconds, refreshed while a run is alive
SWEEP_DIR = "ablation.sweep_dir"  # on a parent run: the sweep folder its jobs meet in
DEVICES = "ablation.cuda_visible_devices"  # the GPUs a job was pinned to
OVERRIDES = "hydra.overrides"  # a job's command-line overrides, secrets redacted
ERROR = "error"  # why a run ended FAILED or KILLED
LATE = "ablation.sent_late"  # on a run whose records a later command sent (`ablation.outbox`): the outage, and when
PARENT = "mlflow.parentRunId"
PACK = "ablation.pack"  # on a run trained in a pack: the seeds its job trained together (`pack.seeds`), e.g. "0,1,2,3"

# --- files ----------------------------------------------------------------------------------------------------
PARENT_FILE = "mlflow_parent.json"  # in the sweep folder: the parent run every job attaches to
DRIVER_FILE = "sweep_driver.json"  # host and pid of the process that launched the sweep
JOBS_FILE = "jobs.jsonl"  # one line per finished, failed, refused, killed or skipped job
DESIGN_FILE = "design.json"  # the study's cells and their jobs (hydra_plugins/study_sweeper), also on the parent
DESIGN_ARTIFACT = "design"  # its artifact folder on the parent run
REPORT_ARTIFACT = "report"  # the report's artifact folder on the parent run
MODEL_ARTIFACT = "model"  # a run's MLflow model
TEST_PREDICTIONS, VAL_PREDICTIONS = "test_predictions.csv", "val_predictions.csv"  # file, label, probability
DATA_RECORD = "data_record.json"  # what a run's data split held

# --- metrics --------------------------------------------------------------------------------------------------
TEST_METRICS = tuple(f"test_{name}" for name in METRICS)  # once per run, on the test split
ONCE_METRICS = ("num_params", "best_epoch", "threshold", "fit_seconds")
KEPT_METRICS = ("kept_val_auc", "kept_val_loss")  # the kept epoch's validation metrics: "the best" is chosen on these
CURVE_METRICS = ("loss", "val_loss", "accuracy", "val_accuracy", "val_auc")  # one value per epoch
DEFAULT_THRESHOLD = 0.5  # on the pneumonia probability; what a run without a logged threshold used
# The report's practical margin per test metric (`verdict.margins`, `--margin`): a difference inside +-margin is too
# small to matter, so an interval inside it says "equivalent". Half a point of ROC and PR AUC, a point of the rest
# (one test image is 0.0016 of accuracy).
MARGINS = {f"test_{name}": 0.005 if name in ("auc", "pr_auc") else 0.01 for name in METRICS}
CLASSES = ("NORMAL", "PNEUMONIA")  # label 0 and label 1: the folder names

# --- the console -----------------------------------------------------------------------------------------------
# The frameworks' chatter, off unless the user asks (`hydra.verbose`): environment variables read when TensorFlow or
# MLflow starts, so set before either is imported; a value the user set is kept (`ablation.console`, the report).
QUIET = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow's C++ log: start-up notes, the CUDA probe's "failed call to cuInit"
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a bar for every file the report downloads
}


def quiet_environment() -> None:
    """`QUIET` into this process's environment, where the user has not set a value."""
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)


# --- configurations -------------------------------------------------------------------------------------------
# Keys that locate, label or display things rather than define the training: two runs that differ only in them are
# one configuration (resume skips the second; analysis never takes them for a factor).
NOT_CONFIGURATION = (
    *("tracking", "paths", "hydra", "verdict", "pack"),
    *("data.root", "data.cache_dir", "trainer.verbose"),
)


def is_configuration_key(key: str) -> bool:
    """Whether a dotted key (a config leaf, an MLflow param) is part of what defines a configuration."""
    return not any(key == part or key.startswith(f"{part}.") for part in NOT_CONFIGURATION)


# Keys merged into `trainer.threshold` (a probability or a rule's name) after runs were logged with them. Resume maps
# today's configurations back onto them (`ablation.resume`); the analysis reads those runs' params as today's.
MERGED_KEYS = ("trainer.tune_threshold", "trainer.threshold_rule")


def as_current(params: dict[str, str]) -> dict[str, str]:
    """A run's logged params in today's keys, so that a run logged before a merge and one after it, of the same
    configuration, never look like two levels of a factor."""
    if MERGED_KEYS[0] not in params:
        return params
    current = {key: value for key, value in params.items() if key not in MERGED_KEYS}
    if params[MERGED_KEYS[0]] == "True":  # the rule picked the threshold
        current["trainer.threshold"] = params.get(MERGED_KEYS[1], "youden")
    if current.get("trainer.augment_on") == "data":  # before `auto`, `data` meant the backend's own place
        current["trainer.augment_on"] = "auto"
    return current


def same_level(a: object, b: object) -> bool:
    """Whether two levels of a key are one value: `0` and `0.0`, `True` and `true`, `1e-3` and `0.001`."""
    a, b = str(a).strip(), str(b).strip()
    if a.lower() == b.lower():
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return False


# --- the store ------------------------------------------------------------------------------------------------
SQLITE = "sqlite:///"
RUNS_DIR, STORE_FILE = "runs", "mlflow.db"  # conf/paths: `runs: ${paths.root}/runs`; conf/tracking/local.yaml


def default_tracking_uri(root: Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI, else the SQLite store `python -m ablation` writes: runs/mlflow.db under `root` (the
    working directory, where `python -m ablation` sets `paths.root`)."""
    store = (root or Path.cwd()) / RUNS_DIR / STORE_FILE
    return os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE}{store}"


def default_data_root(root: Path | None = None) -> Path:
    """$CHEST_XRAY_ROOT, else the 224 px copy beside the project (`root`: the working directory), as conf/data says."""
    return Path(os.environ.get("CHEST_XRAY_ROOT") or (root or Path.cwd()) / ".." / "shared" / "data" / "chest_xray")


# A run's prediction files (`<split>_predictions.csv`) name each image by its path under data.root
# (`test/NORMAL/x.jpeg`), never the user's home layout. Runs logged before named the absolute path, which ends the same.
IMAGE_KEY_PARTS = 3  # split/CLASS/name


def image_key(file: str) -> str:
    """A prediction file's image as its path under data.root, whichever way its run wrote it."""
    path = Path(file)
    return "/".join(path.parts[-IMAGE_KEY_PARTS:]) if path.is_absolute() else path.as_posix()


def sqlite_path(uri: str) -> Path:
    """The file of a `sqlite:///` URI (four slashes: an absolute path, as in SQLAlchemy), %-escapes decoded."""
    return Path(urllib.parse.unquote(uri.removeprefix(SQLITE).split("?")[0]))


def missing_sqlite_store(uri: str) -> Path | None:
    """The SQLite file `uri` names when that file does not exist, else None (other URIs: None).

    MLflow silently creates an empty database for a missing SQLite file, and would then report every
    experiment and run as missing instead of naming the real problem.
    """
    if not uri.startswith(SQLITE):
        return None
    path = sqlite_path(uri)
    return None if path.is_file() else path


# `scheme://userinfo@`: everything up to the last @ of the token is userinfo (a password may hold / or @).
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)(\S*)@")
_SECRET_PARAMETER = re.compile(
    r"([?&;](?:password|passwd|pwd|secret|token|access_token|api_key|apikey)=)[^&;#\s'\"`<>)\]]*", re.IGNORECASE
)


def _userinfo(match: re.Match) -> str:
    scheme, info = match.groups()
    if "/" in info.split(":", 1)[0]:  # no userinfo: an @ further along the path (`http://h/a@b`)
        return match.group(0)
    user = info.split(":", 1)[0]
    return f"{scheme}{user}:***@" if ":" in info else f"{scheme}***@"  # `https://TOKEN@host`: all of it


def first_line(error: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message` (SQLAlchemy and requests append statements and retries), secrets masked."""
    return redact(f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:limit]}")


def redact(text: str) -> str:
    """`text` with the password or token of every URI in it masked (`scheme://user:***@`, `scheme://***@`,
    `?password=***`): no secret reaches a param, a tag, a log line, an error message or a report."""
    return _SECRET_PARAMETER.sub(r"\1***", _USERINFO.sub(_userinfo, text))


QUIET_URL = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"  # MLflow's "View run ... at URL" line, printed as a run ends


def hide_credentials(uri: str) -> None:
    """Keep a tracking URI that carries credentials (`http://user:PASSWORD@host`) off stdout: MLflow prints the URI,
    password and all, for every run it ends. Called by `ablation.store.check`, which every command passes."""
    if redact(uri) != uri:
        os.environ[QUIET_URL] = "true"


# --- where a new experiment keeps its artifacts ------------------------------------------------------------------
ARTIFACTS_RESOLVER = "ablation.artifacts"  # conf/tracking/local.yaml: ${ablation.artifacts:${.uri},'file://...'}


def artifact_location(uri: str, local: str) -> str | None:
    """`tracking.artifact_location` by default: on a tracking server (http, https), the server's own artifact root
    (None), so that no run's files stay on the client's disk; else `local`, the folder beside the store."""
    return None if str(uri).startswith(("http://", "https://")) else local


def _register_resolver() -> None:
    """Registered as this module loads: every process that composes or resolves the config has loaded it (through
    `ablation.config`)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(ARTIFACTS_RESOLVER):
        OmegaConf.register_new_resolver(ARTIFACTS_RESOLVER, artifact_location)


_register_resolver()
