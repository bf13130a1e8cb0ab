"""Keras 3's backends: a sweep trains under JAX (`KERAS_BACKEND=jax`) as it does under TensorFlow, without ever
importing TensorFlow, into the same MLflow record; a model saved under one backend gives the same logits under the
other, and the augmentation the same geometry for the same parameters."""

from __future__ import annotations

import json
import re
import sys

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import DATA_ROOT, PROJECT, compose_config
from omegaconf import OmegaConf
from processes import ablation, run_command

from ablation import devices
from ablation.contract import JOB, ROLE
from ablation.data import decode_image
from ablation.models import network_of
from ablation.pipeline import Augmentation

JAX = {"KERAS_BACKEND": "jax"}
# A module TensorFlow itself (not one merely named after it) in `python -X importtime`'s listing.
TENSORFLOW_IMPORT = re.compile(r"^import time:.*\|\s+tensorflow(\.|$)", re.MULTILINE)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def _job_runs(uri: str, experiment: str) -> tuple[mlflow.MlflowClient, list]:
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, [r for r in runs if r.data.tags.get(ROLE) == JOB]


@pytest.fixture(scope="module")
def jax_sweep(tmp_path_factory, cache_dir) -> dict:
    """Two jobs of one configuration under JAX (tracking.skip_finished=false runs both), with the augmentation on
    the device, every import listed (`-X importtime`)."""
    runs = tmp_path_factory.mktemp("jax") / "runs"
    args = ["-m", "experiment=tiny", "model=cnn", "augmentation=xray"]
    args += ["trainer.verbose=0,1", "tracking.skip_finished=false", "tracking.experiment=jax"]
    args += ["tracking.system_metrics_s=1"]
    command = ablation(*args, runs=runs, cache=cache_dir)
    done = run_command([command[0], "-X", "importtime", *command[1:]], timeout=600, env=JAX)
    return {"done": done, "uri": f"sqlite:///{runs}/mlflow.db"}


def _shape(client: mlflow.MlflowClient, run) -> dict:
    """What a run's record holds, without the values."""
    return {
        "params": set(run.data.params),
        "metrics": {key for key in run.data.metrics if not key.startswith("system/")},
        "system metrics": any(key.startswith("system/") for key in run.data.metrics),
        "tags": {key for key in run.data.tags if key != "ablation.cuda_visible_devices"},
        "artifacts": {a.path for a in client.list_artifacts(run.info.run_id)},
        "model": {a.path for a in client.list_artifacts(run.info.run_id, "model")},
        "datasets": {i.dataset.name for i in run.inputs.dataset_inputs},
    }


@pytest.mark.slow
def test_a_jax_sweep_never_imports_tensorflow_repeats_its_metrics_and_records_like_tensorflow(jax_sweep, loco_study):
    done = jax_sweep["done"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert "import time:" in done.stderr and not TENSORFLOW_IMPORT.search(done.stderr)
    client, runs = _job_runs(jax_sweep["uri"], "jax")
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert {r.data.params["trainer.backend"] for r in runs} == {"jax"}
    # The same seed gives the same metrics twice, augmentation and shuffling included.
    first, second = (
        {k: v for k, v in r.data.metrics.items() if not k.startswith("system/") and not k.endswith("_seconds")}
        for r in runs
    )
    assert first == second and first["test_auc"] > 0

    tf_client, tf_runs = _job_runs(loco_study["uri"], loco_study["experiment"])
    assert tf_runs[0].data.params["trainer.backend"] == "tensorflow"
    assert _shape(client, runs[0]) == _shape(tf_client, tf_runs[0])


@pytest.mark.slow
def test_a_model_trained_under_jax_gives_its_logged_probabilities_under_tensorflow(jax_sweep, tmp_path):
    assert keras.backend.backend() == "tensorflow"
    client, runs = _job_runs(jax_sweep["uri"], "jax")
    run_id = runs[0].info.run_id
    logged = pd.read_csv(client.download_artifacts(run_id, "test_predictions.csv", str(tmp_path)))[:16]
    model_file = client.download_artifacts(run_id, "model/data/model.keras", str(tmp_path))
    network = network_of(keras.models.load_model(model_file, safe_mode=True, compile=False))
    images = np.stack([decode_image(DATA_ROOT / f, 32) for f in logged.file])[..., None].astype(np.float32)
    logits = keras.ops.convert_to_numpy(network(images, training=False)).ravel()
    np.testing.assert_allclose(logits, _logit(logged.probability.to_numpy()), atol=1e-4)


def _fixed_parameters(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    uniform = lambda low, high: rng.uniform(low, high, n).astype(np.float32)  # noqa: E731
    return {
        "mirror": np.where(np.arange(n) % 2 == 0, -1.0, 1.0).astype(np.float32),
        "angle": uniform(-0.3, 0.3),
        "scale": uniform(0.85, 1.15),
        "shift_x": uniform(-0.1, 0.1),
        "shift_y": uniform(-0.1, 0.1),
        "stretch": np.exp(uniform(-0.13, 0.13)),
        "brightness": uniform(-20, 20),
        "contrast": uniform(0.8, 1.2),
    }


@pytest.mark.slow
def test_a_model_trained_under_tensorflow_and_the_augmentation_give_the_same_results_under_jax(loco_study, tmp_path):
    client, runs = _job_runs(loco_study["uri"], loco_study["experiment"])
    run_id = runs[0].info.run_id
    model_file = client.download_artifacts(run_id, "model/data/model.keras", str(tmp_path))
    logged = pd.read_csv(client.download_artifacts(run_id, "test_predictions.csv", str(tmp_path)))[:8]
    images = np.stack([decode_image(DATA_ROOT / f, 32) for f in logged.file])[..., None].astype(np.float32)
    parameters = _fixed_parameters(len(images))
    settings = OmegaConf.to_container(compose_config("augmentation=none").augmentation)  # every key of the schema
    settings |= {"flip": True, "rotation_deg": 15, "shift": 0.1, "zoom": 0.15, "aspect": 0.3}
    settings |= {"brightness": 0.1, "contrast": 0.2}
    np.save(tmp_path / "images.npy", images)
    np.savez(tmp_path / "parameters.npz", **parameters)
    (tmp_path / "augmentation.json").write_text(json.dumps(settings))

    probe = [sys.executable, PROJECT / "tests" / "backend_probe.py", model_file]
    probe += [tmp_path / "images.npy", tmp_path / "parameters.npz", tmp_path / "augmentation.json", tmp_path]
    done = run_command(probe, timeout=300, env=JAX)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "probe.json").read_text()) == {"backend": "jax", "tensorflow_imported": False}

    network = network_of(keras.models.load_model(model_file, safe_mode=True, compile=False))
    logits = keras.ops.convert_to_numpy(network(images, training=False))
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), logits, atol=1e-4)

    augmentation = Augmentation(OmegaConf.create(settings))
    ours = keras.ops.convert_to_numpy(
        augmentation.apply(images, {k: keras.ops.convert_to_tensor(v) for k, v in parameters.items()})
    )
    theirs = np.load(tmp_path / "augmented.npy")
    assert not np.allclose(ours, images, atol=1)  # the parameters do move the pixels
    # Bilinear resampling of the same map: equal up to interpolation round-off, away from nothing at all.
    assert np.abs(ours - theirs).mean() < 0.05 and np.abs(ours - theirs).max() < 2.0


def test_a_job_cannot_switch_the_backend_keras_already_runs(monkeypatch):
    with pytest.raises(devices.BackendError, match="trainer.backend=jax, but this process already runs Keras on"):
        devices.select_backend("jax", deterministic=True)
    devices.select_backend("tensorflow", deterministic=True)  # the one running: nothing to do


def test_jax_is_chosen_before_keras_starts_with_shared_memory_and_deterministic_kernels(monkeypatch):
    monkeypatch.delitem(sys.modules, "keras")  # as in a job's fresh process; restored after the test
    for key in ("KERAS_BACKEND", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_FLAGS"):
        monkeypatch.setenv(key, "")  # recorded, so that what select_backend sets is undone after the test
        monkeypatch.delenv(key)
    devices.select_backend("jax", deterministic=True)
    env = devices.os.environ
    assert env["KERAS_BACKEND"] == "jax" and env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert env["XLA_FLAGS"] == "--xla_gpu_deterministic_ops=true"
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    devices.select_backend("jax", deterministic=False)
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"


def test_the_backend_is_a_config_key_from_keras_backend(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "")
    monkeypatch.delenv("KERAS_BACKEND")
    assert compose_config().trainer.backend == "tensorflow"
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert compose_config().trainer.backend == "jax"
    assert compose_config("trainer.backend=tensorflow").trainer.backend == "tensorflow"
    with pytest.raises(Exception, match="torch"):
        compose_config("trainer.backend=torch").trainer.backend  # noqa: B018
