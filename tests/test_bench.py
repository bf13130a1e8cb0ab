"""The benchmark's building blocks at a tiny scale, on a few real X-rays (the full run: python -m benchmarks.bench)."""

from __future__ import annotations

import numpy as np
from conftest import DATA_ROOT, copy_images

from benchmarks import bench


def _tiny_root(root):
    for split, n in (("train", 12), ("test", 4)):
        for cls in ("NORMAL", "PNEUMONIA"):
            copy_images(DATA_ROOT / split / cls, root / split / cls, n)
    return root


def test_cold_and_warm_loads_are_timed_from_one_cache(tmp_path):
    root = _tiny_root(tmp_path / "xray")
    figures, data, cache = bench.measure_load(root, 32, cold_loads=1, warm_loads=2, cache_dir=tmp_path / "cache")
    assert {"cold_load_s", "warm_load_s", "warm_over_cold", "train_images"} <= set(figures)
    assert all(figures[k] > 0 for k in ("cold_load_s", "warm_load_s", "warm_over_cold", "train_images"))
    assert figures["train_images"] == len(data.train.labels)
    assert len(list(cache.glob("32px-*.npz"))) == 2  # the pool and the test split, decoded once


def test_naive_feed_decodes_the_same_files(tmp_path):
    root = _tiny_root(tmp_path / "xray")
    _, data, _ = bench.measure_load(root, 32, cold_loads=1, warm_loads=0, cache_dir=tmp_path / "cache")
    ds = bench.naive_dataset(data.train.files, data.train.labels, 32, batch_size=8)
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    images, labels = np.concatenate(images), np.concatenate(labels)
    assert images.shape == (len(data.train.files), 32, 32, 1) and images.dtype == np.float32
    assert sorted(labels.ravel().tolist()) == sorted(data.train.labels.astype(float).tolist())


def test_job_overhead_is_wall_time_minus_fit_and_eval():
    jobs = [  # listed out of order: the figures follow the runs' start times
        {"start_ms": 30_000, "end_ms": 40_000, "fit_seconds": 6.0, "eval_seconds": 1.0, "data_seconds": 0.2},
        {"start_ms": 10_000, "end_ms": 25_000, "fit_seconds": 8.0, "eval_seconds": 2.0, "data_seconds": 3.0},
    ]
    figures = bench.job_overhead(45.0, jobs)
    assert figures["job_overhead_s"] == (45.0 - 17.0) / 2
    assert figures["job_inprocess_overhead_s"] == [5.0, 3.0] and figures["job_inprocess_overhead_mean_s"] == 4.0
    assert figures["job_data_s"] == [3.0, 0.2]
    assert figures["sweep_outside_runs_s"] == 45.0 - 25.0


def test_targets_and_table():
    figures = {"pipeline_over_cnn": 12.0, "warm_over_cold": 0.2, "job_inprocess_overhead_s": [1.5, 2.0]}
    met = bench.check_targets(figures)
    assert met == {"pipeline_over_cnn": True, "warm_over_cold": False}
    text = bench.table(figures, met)
    assert "MISSED" in text and "1.5, 2" in text


def test_packed_against_lone_runs_is_judged_by_the_verdict_rule():
    """The seeds section's A/A check: identical runs differ by 0 and make no claim; a packed side 0.05 better on every
    seed (with some spread) is called better."""
    from ablation.contract import TEST_METRICS
    from benchmarks.seeds import same_results

    lone = {seed: {m: 0.9 + 0.01 * seed for m in TEST_METRICS} for seed in range(4)}
    same = same_results(lone, lone, "k")
    assert same["k_max_abs_diff"] == 0
    assert not {"better", "worse"} & set(same["k_verdicts"].values())
    shifted = {seed: {m: v + 0.05 + 0.002 * seed for m, v in metrics.items()} for seed, metrics in lone.items()}
    assert set(same_results(lone, shifted, "k")["k_verdicts"].values()) == {"better"}
