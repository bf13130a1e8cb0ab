"""Shared fixtures: the real root config, composed once and shrunk; real chest X-rays from ../shared."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from ablation.config import register

PROJECT = Path(__file__).resolve().parents[1]
DATA_ROOT = PROJECT.parent / "shared" / "data" / "chest_xray"
os.environ.setdefault("ABLATION_ROOT", str(PROJECT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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

# Tiny but real: small images, a few dozen per class, two epochs.
TINY = ["data.image_size=32", "data.max_train_per_class=32", "epochs=2", "batch_size=16", "trainer.verbose=0"]


def compose_config(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=return_hydra_config)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One decoded-image cache for the whole session, so the real data is decoded once per size."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_cfg(tmp_path, cache_dir) -> DictConfig:
    cfg = compose_config(*TINY, f"paths.runs={tmp_path / 'runs'}", f"data.root={DATA_ROOT}")
    with open_dict(cfg):
        cfg.data.cache_dir = str(cache_dir)
    return cfg


def copy_images(src: Path, dst: Path, n: int) -> list[Path]:
    """The first `n` real images of a class folder, copied."""
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(src.iterdir())[:n]
    return [Path(shutil.copy(f, dst / f.name)) for f in files]


def run_ablation(*args: str, runs: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m ablation ARGS` as a user types it, writing under `runs`."""
    env = {**os.environ, "ABLATION_ROOT": str(PROJECT)}
    defaults = [f"paths.runs={runs}"] + ([] if any("data.root=" in a for a in args) else [f"data.root={DATA_ROOT}"])
    command = [sys.executable, "-m", "ablation", *args, *defaults]
    return subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=timeout)
