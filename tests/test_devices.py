"""GPU pinning happens before any framework starts: the modules a launcher, a job and the sweep callback import
load no TensorFlow, and a job takes its card round-robin from `nvidia-smi -L` (a fake one here)."""

from __future__ import annotations

import sys

import pytest
from processes import run_command

from ablation import devices

FOUR_GPUS = "\n".join(f"GPU {i}: NVIDIA H200 (UUID: GPU-{i})" for i in range(4))


@pytest.mark.slow
def test_the_entry_point_job_sweep_and_tracking_import_no_framework():
    """In a fresh interpreter: the bug this prevents is TensorFlow started before `pin_gpu` could act."""
    modules = ["ablation.__main__", "ablation.job", "ablation.sweep", "ablation.tracking", "ablation.devices"]
    frameworks = ("tensorflow", "keras", "jax", "torch")
    probe = f"import sys\nfor m in {modules!r}: __import__(m)\nprint([n for n in {frameworks!r} if n in sys.modules])"
    done = run_command([sys.executable, "-c", probe], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"


@pytest.fixture
def four_gpus(monkeypatch):
    """A process with four GPUs listed, no framework started yet, and no scheduler's choice set."""
    monkeypatch.setattr(devices, "nvidia_gpus", lambda: FOUR_GPUS.splitlines())
    monkeypatch.setattr(devices, "framework_started", lambda: False)
    monkeypatch.delenv(devices.VISIBLE, raising=False)
    monkeypatch.delenv(devices.PINNED_BY_US, raising=False)


@pytest.mark.parametrize(("job", "card"), [(0, "0"), (1, "1"), (3, "3"), (4, "0"), (6, "2")])
def test_jobs_take_cards_round_robin(four_gpus, monkeypatch, job, card):
    assert devices.pin_gpu(job) == card
    assert devices.os.environ[devices.VISIBLE] == card


def test_a_schedulers_choice_is_kept(four_gpus, monkeypatch):
    monkeypatch.setenv(devices.VISIBLE, "7")  # SLURM's or Ray's
    assert devices.pin_gpu(2) == "7"


def test_a_reused_worker_keeps_the_card_its_framework_started_on(four_gpus, monkeypatch):
    assert devices.pin_gpu(1) == "1"
    monkeypatch.setattr(devices, "framework_started", lambda: True)
    assert devices.pin_gpu(2) == "1"  # TensorFlow already runs on card 1 in this process


def test_one_gpu_or_none_pins_nothing(monkeypatch):
    monkeypatch.delenv(devices.VISIBLE, raising=False)
    monkeypatch.delenv(devices.PINNED_BY_US, raising=False)
    monkeypatch.setattr(devices, "framework_started", lambda: False)
    for listing in ([], ["GPU 0: NVIDIA H200 (UUID: GPU-0)"]):
        monkeypatch.setattr(devices, "nvidia_gpus", lambda listing=listing: listing)
        assert devices.pin_gpu(3) is None
