"""Shared fixtures: the real root config, composed once and shrunk; real chest X-rays from ../shared."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from ablation.config import register

PROJECT = Path(__file__).resolve().parents[1]
DATA_ROOT = PROJECT.parent / "shared" / "data" / "chest_xray"
# What two computations of one trained model's output may differ by on one machine (a saved and a loaded copy, another
# batch size, per-image against per-class calls): oneDNN picks its kernels, and so its summation order, by CPU and
# shape. Measured: about 1e-7 on this Intel Xeon, 2e-5 relative between two such paths on an AMD EPYC. 1e-4 allows
# five times the worst seen, while a wrong weight, input or preprocessing step moves these outputs by 1e-2 or more.
ROUND_OFF = 1e-4
os.environ.setdefault("ABLATION_ROOT", str(PROJECT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # as `ablation.console` sets it
# The suite runs Keras on TensorFlow in its own process and in the runs it starts (a KERAS_BACKEND=jax in the
# shell would change every run's configuration); tests/test_backends.py starts its JAX processes itself.
os.environ["KERAS_BACKEND"] = "tensorflow"
register()

CHROMIUM = "/usr/bin/chromium"
# Headless Debian Chromium on a closed network: no background connections, no first-run, no sandbox as root.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def backbone(model):
    """The part of `model` from its input up to the `features` map (no pooling, no head)."""
    import keras

    return keras.Model(model.input, model.get_layer("features").output, name=f"{model.name}_backbone")


def compose_config(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=return_hydra_config)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One decoded-image cache for the whole session, so the real data is decoded once per size."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_cfg(tmp_path, cache_dir) -> DictConfig:
    cfg = compose_config("experiment=tiny", f"paths.runs={tmp_path / 'runs'}", f"data.root={DATA_ROOT}")
    with open_dict(cfg):
        cfg.data.cache_dir = str(cache_dir)
    return cfg


def copy_images(src: Path, dst: Path, n: int) -> list[Path]:
    """The first `n` real images of a class folder, copied."""
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(src.iterdir())[:n]
    return [Path(shutil.copy(f, dst / f.name)) for f in files]


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))  # Debian's postgresql package
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture
def postgres(request, tmp_path) -> dict[str, str]:
    """A PostgreSQL database for MLflow: $ABLATION_POSTGRES_URI, else a throwaway cluster on a free loopback port.

    Without PostgreSQL the test is skipped, unless ABLATION_REQUIRE_POSTGRES (or CI) is set: then it fails.
    """
    from processes import free_port, kill_group, spawn, wait_for

    if os.environ.get("ABLATION_POSTGRES_URI"):
        return {"uri": os.environ["ABLATION_POSTGRES_URI"], "env": {}, "psql": ""}
    bindir = _postgres_bin()
    if bindir is None:
        message = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("ABLATION_REQUIRE_POSTGRES") or os.environ.get("CI"):
            pytest.fail(f"{message}, and ABLATION_REQUIRE_POSTGRES/CI says this test must run")
        pytest.skip(f"{message}; set ABLATION_REQUIRE_POSTGRES=1 to make this a failure")

    user = "postgres" if os.geteuid() == 0 else None  # the server refuses to run as root
    base = Path(tempfile.mkdtemp(prefix="ablation-pg-"))  # not under tmp_path: the postgres user must reach it
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    password = "pg-" + os.urandom(8).hex()
    (base / "pwfile").write_text(password + "\n")
    if user:
        for path in (base, base / "pwfile"):
            shutil.chown(path, user)
    subprocess.run(
        [bindir / "initdb", "-D", base / "data", "-U", "mlflow", f"--pwfile={base / 'pwfile'}"]
        + ["--auth=scram-sha-256", "--encoding=UTF8", "--no-sync"],
        user=user,
        check=True,
        capture_output=True,
        timeout=180,
    )
    port = free_port()
    log = tmp_path / "postgres.log"
    command = [bindir / "postgres", "-D", base / "data", "-h", "127.0.0.1", "-p", str(port), "-k", str(base)]
    proc = spawn(request, [str(c) for c in command] + ["-c", "fsync=off"], log, user=user)
    request.addfinalizer(lambda: kill_group(proc, signal.SIGINT))  # fast shutdown first, SIGKILL after (spawn)
    env = {"PGPASSWORD": password}

    def ready() -> bool:
        probe = [bindir / "pg_isready", "-h", "127.0.0.1", "-p", str(port), "-q"]
        return subprocess.run(probe, timeout=30).returncode == 0

    wait_for(ready, 60, "PostgreSQL accepting connections", log, proc)
    subprocess.run(
        [bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        timeout=60,
    )
    # No password in the URI (ps shows it): libpq reads PGPASSWORD, as it would ~/.pgpass.
    psql = [str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "-d", "mlflow", "-tAc"]
    return {"uri": f"postgresql://mlflow@127.0.0.1:{port}/mlflow", "env": env, "psql": json.dumps(psql)}


TEST_STUDIES = PROJECT / "tests" / "conf"  # study files of the tests' own (conf/study/ beside the shipped ones)


def study_args(name: str) -> list[str]:
    return ["-m", f"hydra.searchpath=[file://{TEST_STUDIES}]", f"study={name}"]


@pytest.fixture(scope="session")
def loco_study(tmp_path_factory, cache_dir) -> dict:
    """One leave-one-component-out study on the real images at tiny settings (3 components, 2 seeds: 8 runs),
    with its end-of-sweep report: the sweep tests and the MLflow UI test read it."""
    from processes import run_ablation

    runs = tmp_path_factory.mktemp("loco") / "runs"
    done = run_ablation(*study_args("loco_tiny"), runs=runs, cache=cache_dir, report=True)
    return {"runs": runs, "done": done, "uri": f"sqlite:///{runs}/mlflow.db", "experiment": "loco"}
