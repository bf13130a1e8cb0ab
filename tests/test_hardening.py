"""What a hostile or unlucky user found (docs/reliability.md, "Hardening"): resume that looks at the data and
the code, stale runs reaped by heartbeat from any host, a run the store would not end, misspelt keys.
Real MLflow stores, real images, real threads; no training."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import time

import numpy as np
import pytest
from conftest import DATA_ROOT, compose_config, copy_images
from omegaconf import open_dict
from PIL import Image

from ablation import contract, data, tracking
from ablation.data import data_digest, decode_image
from ablation.job import RunNotEndedError, run_lifecycle
from ablation.outbox import Outbox
from ablation.resume import Identity, already_finished
from ablation.validate import ConfigError, validate


def _small_copy(root, n: int = 3):
    """A data folder of real images: n per class and split."""
    for split in ("train", "test"):
        for name in ("NORMAL", "PNEUMONIA"):
            copy_images(DATA_ROOT / split / name, root / split / name, n)
    return root


@pytest.fixture
def store(tmp_path):
    client = tracking.client(f"sqlite:///{tmp_path}/mlflow.db")
    return client, tracking.ensure_experiment(client, "hardening", None)


def test_the_data_digest_follows_names_and_sizes_not_copies(tmp_path):
    first = _small_copy(tmp_path / "a")
    copied = tmp_path / "b"
    shutil.copytree(first, copied, copy_function=shutil.copy)  # new mtimes, same files
    assert data_digest(first) == data_digest(copied)
    victim = sorted((copied / "train" / "NORMAL").iterdir())[0]
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert data_digest(first) != data_digest(copied)
    os.rename(victim, victim.with_name("renamed.jpeg"))
    assert data_digest(first) != data_digest(copied)


def test_resume_skips_only_a_run_on_the_same_images_and_warns_across_commits(tmp_path, store, caplog):
    client, experiment = store
    other = _small_copy(tmp_path / "other")
    cfg = compose_config("experiment=tiny", f"data.root={DATA_ROOT}", f"paths.runs={tmp_path}")
    identity = Identity.of(cfg)
    done = tracking.create_run(client, experiment, "done", {**identity.tags, contract.GIT_COMMIT: "aaa"})
    client.set_terminated(done, "FINISHED")

    assert already_finished(client, experiment, cfg, identity, "aaa").info.run_id == done
    with open_dict(cfg):
        cfg.data.root = str(other)
    elsewhere = Identity.of(cfg)
    assert elsewhere.config == identity.config and elsewhere.data != identity.data
    assert already_finished(client, experiment, cfg, elsewhere, "aaa") is None  # other images: trains again

    with open_dict(cfg):
        cfg.data.root = str(DATA_ROOT)
    with caplog.at_level(logging.WARNING, logger="ablation.job"):
        assert already_finished(client, experiment, cfg, identity, "bbb").info.run_id == done
    assert f"run {done}, FINISHED for this configuration and data, was trained at commit aaa" in caplog.text
    with open_dict(cfg):
        cfg.tracking.resume_across_commits = False
    assert already_finished(client, experiment, cfg, identity, "bbb") is None


def test_stale_runs_are_reaped_by_heartbeat_from_any_host(store):
    client, experiment = store
    old = str(int(time.time() - 3600))
    here, alive = socket.gethostname(), str(os.getpid())
    runs = {
        "other host, silent": {contract.HOST: "node-17", contract.PID: "4242", contract.HEARTBEAT: old},
        "reused pid, silent": {contract.HOST: here, contract.PID: alive, contract.HEARTBEAT: old},
        "other host, beating": {contract.HOST: "node-17", contract.PID: "4242"},
        "this process, beating": {contract.HOST: here, contract.PID: alive},
    }
    ids = {name: client.create_run(experiment, run_name=name, tags=tags).info.run_id for name, tags in runs.items()}
    reaped = tracking.reap_stale_runs(client, experiment, timeout_s=1800)
    assert sorted(reaped) == sorted([ids["other host, silent"], ids["reused pid, silent"]])
    stale = client.get_run(ids["other host, silent"])
    assert stale.info.status == "KILLED" and "no heartbeat for 60 min" in stale.data.tags["error"]
    assert "node-17" in stale.data.tags["error"]
    assert client.get_run(ids["other host, beating"]).info.status == "RUNNING"


def test_a_running_job_beats_from_a_thread(store):
    client, experiment = store
    run_id = tracking.create_run(client, experiment, "beating", {})
    first = int(client.get_run(run_id).data.tags[contract.HEARTBEAT])
    with tracking.heartbeat(client, [run_id], every_s=0.5):
        time.sleep(1.8)  # long enough for a beat in a later second
    assert int(client.get_run(run_id).data.tags[contract.HEARTBEAT]) > first


def test_a_run_the_store_will_not_end_finished_does_not_count_as_finished(tmp_path):
    files = tmp_path / "out"
    for raise_failures in (True, False):  # a single run, then a sweep's job
        db = tmp_path / f"store-{raise_failures}" / "mlflow.db"
        db.parent.mkdir()
        client = tracking.client(f"sqlite:///{db}")
        run_id = tracking.create_run(client, tracking.ensure_experiment(client, "gone", None), "r", {})
        ended = []
        with pytest.raises(RunNotEndedError) if raise_failures else contextlib.nullcontext():  # noqa: SIM117
            outbox = Outbox(client, f"sqlite:///{db}", run_id, tmp_path / f"runs-{raise_failures}")
            with run_lifecycle(outbox, None, raise_failures, ended.append, "job", files):
                db.unlink()  # trained; then the store goes away before the run is ended
        [outcome] = ended
        assert outcome.status == "FAILED"
        assert f"the store would not end run {run_id} FINISHED" in outcome.error
        assert f"its files stay in {files}" in outcome.error


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+dropuot=0.2", "unknown key 'dropuot': the config has no such key; did you mean dropout"),
        ("+trainer.verbos=1", "unknown key 'trainer.verbos'"),
        ("seed=-1", "seed=-1 is not allowed: an int in [0, 4294967295]"),
    ],
)
def test_a_misspelt_key_or_a_negative_seed_is_refused(override, message):
    with pytest.raises(ConfigError) as refused:
        validate(compose_config(override, f"data.root={DATA_ROOT}"))
    assert str(refused.value).startswith(message)


# ---------------------------------------------------------------- images decoded as they are


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (64, 1))  # a 12-bit detector's range
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert Image.open(tmp_path / "ramp.png").mode.startswith("I;16")
    pixels = decode_image(tmp_path / "ramp.png", 32)
    assert 120 < pixels.mean() < 135 and pixels.min() < 10 and pixels.max() > 245  # was a mean of 247


def test_exif_orientation_is_applied(tmp_path):
    sideways = np.zeros((40, 80), np.uint8)
    sideways[:, 40:] = 255  # stored: dark left, bright right
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    Image.fromarray(sideways).save(tmp_path / "x.jpeg", exif=exif, quality=95)
    upright = decode_image(tmp_path / "x.jpeg", 32).astype(float)
    assert upright[:16].mean() < 40 and upright[16:].mean() > 215  # viewed: dark top, bright bottom


def test_only_jpeg_and_png_are_read_and_huge_images_are_refused(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.jpeg", format="GIF")
    with pytest.raises(ValueError, match="not a JPEG or PNG file"):
        decode_image(tmp_path / "x.jpeg", 8)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(data, "MAX_PIXELS", 399)
    with pytest.raises(ValueError, match="20 x 20 pixels, over the limit of 399"):
        decode_image(tmp_path / "big.png", 8)


def test_the_scan_names_nested_folders_broken_links_and_non_utf8_names(tmp_path, caplog):
    root = _small_copy(tmp_path / "data", n=2)
    normal = root / "train" / "NORMAL"
    (normal / "more").mkdir()
    (normal / "gone.jpeg").symlink_to(tmp_path / "nowhere.jpeg")
    with caplog.at_level(logging.WARNING, logger="ablation.data"):
        paths, _ = data.scan_split(root, "train")
    assert len(paths) == 4
    assert f"ignored 1 nested folder(s) in {normal} (images must sit directly in it): more" in caplog.text
    assert f"ignored 1 broken link(s) in {normal}: gone.jpeg" in caplog.text

    shutil.copy(paths[0], os.fsencode(normal) + b"/caf\xe9.jpeg")  # Latin-1 bytes: not valid UTF-8
    with pytest.raises(data.DataError, match=r"not valid UTF-8.*b'caf\\xe9.jpeg'"):
        data.scan_split(root, "train")


# ---------------------------------------------------------------- a decode cache that checks itself


def test_the_decode_cache_rebuilds_a_file_of_another_size_or_a_corrupt_one(tmp_path, caplog):
    paths = copy_images(DATA_ROOT / "test" / "NORMAL", tmp_path / "images", 4)
    cache = tmp_path / "cache"
    first = data.load_images(paths, 16, cache)
    [file] = cache.glob("16px-*.npz")
    other = data.load_images(paths, 24, tmp_path / "other")
    shutil.copy(next((tmp_path / "other").glob("*.npz")), file)  # 24 px images under the 16 px name
    for broken in ("another size", "corrupt"):
        if broken == "corrupt":
            file.write_bytes(b"PK\x03\x04 not a zip at all")
        with caplog.at_level(logging.WARNING, logger="ablation.data"):
            again = data.load_images(paths, 16, cache)
        assert f"decode cache {file}" in caplog.text and "rebuilding it" in caplog.text
        np.testing.assert_array_equal(again.images, first.images)
        caplog.clear()
    assert other.images.shape[1:] == (24, 24, 1)


def test_a_cache_write_cut_short_leaves_no_temporary_file(tmp_path, monkeypatch):
    paths = copy_images(DATA_ROOT / "test" / "NORMAL", tmp_path / "images", 2)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        data.load_images(paths, 16, tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")) == []
