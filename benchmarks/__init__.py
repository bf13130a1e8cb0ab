"""Benchmarks of the framework (developers): `python -m benchmarks.bench`, `.backends`, `.gpu`.

Shared here, free of any framework import: the project's config as `python -m ablation` composes it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import DictConfig

PROJECT = Path(__file__).resolve().parents[1]


def compose(*overrides: str) -> DictConfig:
    """The project's root config with `overrides`, composed as `python -m ablation` would (`ablation.api.compose`)."""
    from ablation.api import compose as api_compose

    return api_compose(overrides)


def log(message: str) -> None:
    """A benchmark's progress line, on stderr (stdout carries its figures)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
