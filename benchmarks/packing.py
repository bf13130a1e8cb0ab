"""Seeds packed on one accelerator, two ways, side by side (benchmarks/gpu.sh runs this under JAX):

- `vmapped`: one XLA program trains N seeds at once: the training step (Keras' `stateless_call` and the optimizer's
  `stateless_apply`) vmapped over the seeds' stacked variables, each seed with its own initialisation, batches and
  dropout draws;
- `processes`: N processes, each training one seed with the same jitted step, all at once on the card (what
  `hydra.sweeper.pack_seeds=N pack.workers=N` does on a GPU).

For the quickstart's configuration and the recipe's (`benchmarks.seeds.PRESETS`), N in `--seeds`: the training
steps per second summed over the seeds, the seeds per hour that gives (a run's training steps only: epochs x steps
per epoch; evaluation and files not included), the first step's time (compilation), and the card's peak memory.

    KERAS_BACKEND=jax python -m benchmarks.packing --data-root .gpu/chest_xray --seeds 1 4 16 --out packing.json
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

from benchmarks import compose  # noqa: E402
from benchmarks.seeds import PRESETS  # noqa: E402


def _setup(preset: str, data_root: str, cache_dir: str, image_size: int | None):
    """The preset's recipe, its network builder and real training images (the cached arrays)."""
    from ablation.data import load_data
    from ablation.train import Recipe

    overrides = [*PRESETS[preset], *([f"data.image_size={image_size}"] if image_size else [])]
    recipe = Recipe.of(compose(*overrides))
    size = image_size or recipe.data["image_size"]
    data = load_data(data_root, size, 0.1, 0, cache_dir)
    return recipe, data.train.images.astype("float32"), data.train.labels.astype("float32").reshape(-1, 1)


def _seed_state(recipe, shape, seed: int, steps_per_epoch: int):
    import keras

    from ablation import backend
    from ablation.models import build_model
    from ablation.train import build_optimizer

    backend.seed(seed)
    model = build_model(input_shape=shape, **recipe.network)
    optimizer = build_optimizer(recipe, steps_per_epoch)
    optimizer.build(model.trainable_variables)
    loss = keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=recipe.label_smoothing)
    values = lambda variables: [v.value for v in variables]  # noqa: E731
    state = (values(model.trainable_variables), values(model.non_trainable_variables), values(optimizer.variables))
    return model, optimizer, loss, state


def _step_function(model, optimizer, loss):
    import jax

    def loss_of(trainable, non_trainable, x, y):
        logits, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss(y, logits), non_trainable

    gradient = jax.value_and_grad(loss_of, has_aux=True)

    def step(state, x, y):
        trainable, non_trainable, optimizer_variables = state
        (value, non_trainable), grads = gradient(trainable, non_trainable, x, y)
        trainable, optimizer_variables = optimizer.stateless_apply(optimizer_variables, grads, trainable)
        return (trainable, non_trainable, optimizer_variables), value

    return step


def _peak_memory_mb() -> float | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return round(peak / 2**20, 1) if peak else None


def _time_steps(step, state, batches, steps: int) -> tuple[float, float]:
    """(first step's seconds: compilation included, seconds per step after it)."""
    import jax

    start = time.perf_counter()
    state, value = step(state, *batches(0))
    jax.block_until_ready(value)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(1, steps + 1):
        state, value = step(state, *batches(i))
    jax.block_until_ready(value)
    if not bool(jax.numpy.all(jax.numpy.isfinite(value))):
        raise FloatingPointError("a packed seed's loss is not finite")
    return first, (time.perf_counter() - start) / steps


def vmapped(preset: str, n: int, steps: int, data_root: str, cache_dir: str, image_size: int | None) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    recipe, images, labels = _setup(preset, data_root, cache_dir, image_size)
    per_epoch = math.ceil(len(labels) / recipe.batch_size)
    states = []
    for seed in range(n):
        model, optimizer, loss, state = _seed_state(recipe, images.shape[1:], seed, per_epoch)
        states.append(state)
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *states)
    step = jax.jit(jax.vmap(_step_function(model, optimizer, loss)))
    orders = [np.random.default_rng(seed).permutation(len(labels)) for seed in range(n)]
    b = recipe.batch_size

    def batches(i):
        rows = np.stack([order[(i * b + np.arange(b)) % len(order)] for order in orders])  # (n, batch)
        return jnp.asarray(images[rows]), jnp.asarray(labels[rows])

    first, per_step = _time_steps(step, stacked, batches, steps)
    return {
        "first_step_s": round(first, 2),
        "seed_steps_per_s": round(n / per_step, 1),
        "peak_memory_mb": _peak_memory_mb(),
    }


def _one_seed(preset, seed, steps, data_root, cache_dir, image_size, start_at, results) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    recipe, images, labels = _setup(preset, data_root, cache_dir, image_size)
    model, optimizer, loss, state = _seed_state(
        recipe, images.shape[1:], seed, math.ceil(len(labels) / recipe.batch_size)
    )
    step = jax.jit(_step_function(model, optimizer, loss))
    order, b = np.random.default_rng(seed).permutation(len(labels)), recipe.batch_size

    def batches(i):
        rows = order[(i * b + np.arange(b)) % len(order)]
        return jnp.asarray(images[rows]), jnp.asarray(labels[rows])

    first, _ = _time_steps(step, state, batches, 1)  # compiled, before the timed steps start together
    start_at.wait()
    began = time.perf_counter()
    _time_steps(step, state, batches, steps)
    results.put({"first_step_s": first, "seconds": time.perf_counter() - began, "peak_memory_mb": _peak_memory_mb()})


def processes(preset: str, n: int, steps: int, data_root: str, cache_dir: str, image_size: int | None) -> dict:
    context = multiprocessing.get_context("spawn")
    start_at, results = context.Barrier(n), context.Queue()
    sizes = (steps, data_root, cache_dir, image_size, start_at, results)
    workers = [context.Process(target=_one_seed, args=(preset, seed, *sizes)) for seed in range(n)]
    for worker in workers:
        worker.start()
    done = [results.get(timeout=900) for _ in workers]
    for worker in workers:
        worker.join(60)
    wall = max(d["seconds"] for d in done)
    return {
        "first_step_s": round(max(d["first_step_s"] for d in done), 2),
        "seed_steps_per_s": round(n * (steps + 1) / wall, 1),
        "peak_memory_mb": round(sum(d["peak_memory_mb"] or 0 for d in done), 1) or None,
    }


TRAIN_IMAGES = 4695  # train/ less its 10 % validation split: a recipe run's epoch (the quickstart caps it)


def run_steps(preset: str) -> int:
    """A run's training steps for the preset (epochs x steps per epoch), on the full data set, not the GPU subset."""
    from ablation.train import Recipe

    recipe = Recipe.of(compose(*PRESETS[preset]))
    cap = recipe.data["max_train_per_class"]
    return recipe.epochs * math.ceil((2 * cap if cap else TRAIN_IMAGES) / recipe.batch_size)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--cache-dir", default="/tmp/ablation-gpu-cache")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--ways", nargs="+", default=["vmapped", "processes"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps after the first")
    parser.add_argument("--image-size", type=int, help="override the presets' (a CPU rehearsal's small images)")
    parser.add_argument("--out", help="write the figures here as JSON, each as soon as it is measured")
    args = parser.parse_args(argv)
    figures: dict = {}
    for preset in args.presets:
        steps_per_run = run_steps(preset)
        figures[f"{preset}_run_steps"] = steps_per_run
        for n in args.seeds:
            for way in args.ways:
                sizes = (preset, n, args.steps, args.data_root, args.cache_dir, args.image_size)
                # Each in processes of its own: each measurement's compilation and peak memory are its own.
                result = _in_child(*sizes) if way == "vmapped" else processes(*sizes)
                result["seeds_per_hour"] = round(result["seed_steps_per_s"] * 3600 / steps_per_run, 1)
                figures[f"{preset}_{way}_{n}"] = result
                print(f"[packing] {preset} {way} x{n}: {json.dumps(result)}", flush=True)
                if args.out:
                    Path(args.out).write_text(json.dumps(figures, indent=2))
    return figures


def _vmapped_child(results, *sizes) -> None:
    results.put(vmapped(*sizes))


def _in_child(*sizes) -> dict:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_vmapped_child, args=(results, *sizes))
    child.start()
    result = results.get(timeout=900)
    child.join(60)
    return result


if __name__ == "__main__":
    main()
