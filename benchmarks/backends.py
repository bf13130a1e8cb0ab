"""TensorFlow against JAX: training images per second of the same networks, fed and compiled as a run does.

    python -m benchmarks.bench --only backends      # as a section of the benchmark (docs/performance.md)
    python -m benchmarks.backends                   # alone: prints the figures as one JSON line

A Keras backend is fixed when Keras starts, so each backend trains in a worker process of its own
(`python -m benchmarks.backends --worker`), started once: it loads the real images, builds and compiles each
network (`ablation.train.compile_model`, the run's defaults) and trains one warm-up epoch, then waits. The parent
then asks the two workers in turn (TF, JAX, JAX, TF, ...) for one timed epoch each, so that both sides of each
ratio are measured back to back under the same load, and only one worker computes at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import PROJECT, compose

BACKENDS = ("tensorflow", "jax")


def worker(settings: dict) -> None:
    """Under the backend KERAS_BACKEND names: answer each model name on stdin with one timed epoch's images/s."""
    import keras

    from ablation import backend, pipeline
    from ablation.data import load_data
    from ablation.models import build_model
    from ablation.train import Recipe, compile_model

    cfg = compose(f"data.image_size={settings['image_size']}", f"batch_size={settings['batch_size']}")
    backend.set_up(cfg.seed)
    data = load_data(settings["data_root"], cfg.data.image_size, 0.1, 0, settings["cache_dir"])
    images, labels = data.train.images[: settings["images"]], data.train.labels[: settings["images"]]
    feed = pipeline.train_batches(images, labels, cfg.batch_size, cfg.seed)
    models = {}
    for name in settings["models"]:
        model = build_model(name, images.shape[1:], cfg.dropout, cfg.batchnorm)
        compile_model(model, Recipe.of(cfg), len(labels))
        model.fit(feed, epochs=1, verbose=0)  # compiles
        models[name] = model
    print(json.dumps({"ready": keras.backend.backend()}), flush=True)
    for line in sys.stdin:
        start = time.perf_counter()
        models[line.strip()].fit(feed, epochs=1, verbose=0)
        print(json.dumps({"images_per_s": len(labels) / (time.perf_counter() - start)}), flush=True)


def _start(name: str, settings: dict) -> subprocess.Popen:
    env = {**os.environ, "KERAS_BACKEND": name, "TF_CPP_MIN_LOG_LEVEL": "2", "ABLATION_ROOT": str(PROJECT)}
    command = [sys.executable, "-m", "benchmarks.backends", "--worker", json.dumps(settings)]
    return subprocess.Popen(command, cwd=PROJECT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _answer(process: subprocess.Popen) -> dict:
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"the {process.args[-1]} worker ended (exit {process.wait()}); its stderr says why")
    return json.loads(line)


def measure_backends(
    data_root: str,
    cache_dir: str | Path,
    models: tuple[str, ...] = ("cnn", "resnet18"),
    image_size: int = 64,
    batch_size: int = 32,
    images: int = 512,
    rounds: int = 3,
) -> dict:
    """Training images/s of each model under TensorFlow and JAX (median of `rounds` epochs of `images` real
    X-rays, no augmentation), and JAX over TensorFlow as the median of the back-to-back pairs."""
    settings = {"data_root": str(data_root), "cache_dir": str(cache_dir), "models": list(models)}
    settings |= {"image_size": image_size, "batch_size": batch_size, "images": images}
    workers = {name: _start(name, settings) for name in BACKENDS}
    try:
        for name, process in workers.items():
            assert _answer(process) == {"ready": name}
        rates: dict[tuple[str, str], list[float]] = {(b, m): [] for b in BACKENDS for m in models}
        for round_ in range(rounds):
            for model in models:
                for name in BACKENDS if round_ % 2 == 0 else BACKENDS[::-1]:
                    workers[name].stdin.write(model + "\n")
                    workers[name].stdin.flush()
                    rates[name, model].append(_answer(workers[name])["images_per_s"])
    finally:
        for process in workers.values():
            process.kill()
            process.wait()
    figures: dict = {}
    for model in models:
        tf_rates, jax_rates = rates["tensorflow", model], rates["jax", model]
        figures[f"backends_{model}_{image_size}px_tensorflow_img_s"] = round(statistics.median(tf_rates), 1)
        figures[f"backends_{model}_{image_size}px_jax_img_s"] = round(statistics.median(jax_rates), 1)
        pairs = [j / t for j, t in zip(jax_rates, tf_rates, strict=True)]
        figures[f"backends_{model}_jax_over_tensorflow"] = round(statistics.median(pairs), 2)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data-root", default=str(PROJECT.parent / "shared" / "data" / "chest_xray"))
    parser.add_argument("--cache-dir", default=str(PROJECT / "runs" / "cache"))
    parser.add_argument("--images", type=int, default=512, help="images per timed epoch")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    print(json.dumps(measure_backends(args.data_root, args.cache_dir, images=args.images, rounds=args.rounds)))


if __name__ == "__main__":
    main()
