"""Performance benchmark on the real data: does the data path keep training fed, and what does a job cost?

    python -m benchmarks.bench              # every figure of docs/performance.md, ~7 minutes on 2 CPU cores
    python -m benchmarks.bench --quick      # the same figures from smaller samples, ~4 minutes
    python -m benchmarks.bench --only resnet50 --resnet-steps 10   # one section

Prints progress on stderr, then a table and, last, one JSON line with every figure. Every figure of a
run is measured in that run, side by side, and the two sides of each ratio alternate (A B A B ...)
with medians taken, so that a slowdown of a shared machine hits both sides alike. The load average at
the start and at the end is part of the JSON: compare runs only when it is comparable.

Run it from the project root: it lives outside the runtime package and uses only the public functions
of `ablation`.

Settings follow the project's config (`conf/`): the `xray` augmentation, batch 32, 64 px, and the
trainer's `deterministic` switch applied as `ablation.train.train` applies it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

from benchmarks import PROJECT, compose, log

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("ABLATION_ROOT", str(PROJECT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from tensorflow.python.framework import config as tf_config  # noqa: E402  # as ablation.backend

from ablation import pipeline  # noqa: E402
from ablation.contract import DEFAULT_THRESHOLD, JOB, PARENT, ROLE, SWEEP  # noqa: E402
from ablation.data import ChestXray, load_data  # noqa: E402
from ablation.models import build_model, build_resnet50  # noqa: E402
from ablation.train import Recipe, compile_model  # noqa: E402
from benchmarks.backends import measure_backends  # noqa: E402
from benchmarks.gpu import H200_BF16_TFLOPS, TRAIN_GFLOP_224  # noqa: E402
from benchmarks.seeds import measure_seeds  # noqa: E402

# The accelerator section runs by default only where TensorFlow sees a GPU; seeds (several minutes of sweeps) only
# when asked for (`--only seeds`).
SECTIONS = ("load", "pipeline", "epochs", "eval", "sweep", "resnet50", "backends", "accelerator", "report", "seeds")
# Figure -> (comparison, bound): what the issue asks of this 2-core machine.
TARGETS = {
    "pipeline_over_cnn": (">=", 10.0),
    "warm_over_cold": ("<", 0.05),
    "job_overhead_s": ("<", 10.0),
    "resnet50_ours_over_keras": (">=", 0.95),
    "naive_over_ours": (">", 1.0),
    "report_36_runs_s": ("<", 30.0),
    "seeds_quick_packed_over_lone": (">=", 2.0),
    "seeds_best_packed_over_lone": (">=", 2.0),
}


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def paired_ratio(top: list[float], bottom: list[float]) -> float:
    """Median of the per-round ratios: each pair was measured back to back, under the same load."""
    return median(a / b for a, b in zip(top, bottom, strict=True))


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo")
    names = (
        [line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")] if cpuinfo.exists() else []
    )
    cpu = names[0].split(":", 1)[1].strip() if names else platform.processor() or "unknown"
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "gpus": len(tf.config.list_physical_devices("GPU")),
    }


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


@contextmanager
def op_determinism(on: bool):
    """TensorFlow op determinism on or off inside the block, restored after (train() sets it per run).

    tf.data decides at dataset construction and iteration whether a map may run in parallel, so a
    dataset is both built and iterated inside the block.
    """
    was_on = tf_config.is_op_determinism_enabled()
    (tf.config.experimental.enable_op_determinism if on else tf_config.disable_op_determinism)()
    try:
        yield
    finally:
        (tf.config.experimental.enable_op_determinism if was_on else tf_config.disable_op_determinism)()


# --- cache: cold and warm loads -------------------------------------------------------------------


def measure_load(
    root: str | Path, image_size: int, cold_loads: int = 2, warm_loads: int = 5, cache_dir: Path | None = None
) -> tuple[dict, ChestXray, Path]:
    """Seconds to prepare every split with an empty cache (a fresh folder each time) and a warm one.

    Cold and warm loads alternate: cold, warm x `warm_loads`, cold, warm x ... Returns the figures,
    the data of the last load and the warm cache folder (under `cache_dir`, or a new temp folder).
    """
    base = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="bench-cache-"))
    cold, warm, data, warm_dir = [], [], None, base
    for i in range(max(cold_loads, 1)):
        warm_dir = base / f"cold{i}"
        start = time.perf_counter()
        data = load_data(root, image_size, 0.1, 0, warm_dir)
        cold.append(time.perf_counter() - start)
        for _ in range(warm_loads):
            start = time.perf_counter()
            data = load_data(root, image_size, 0.1, 0, warm_dir)
            warm.append(time.perf_counter() - start)
    figures = {
        "cold_load_s": round(median(cold), 3),
        "warm_load_s": round(median(warm), 4) if warm else None,
        "train_images": int(len(data.train.labels)),
    }
    if warm:
        figures["warm_over_cold"] = round(figures["warm_load_s"] / figures["cold_load_s"], 4)
    return figures, data, warm_dir


# --- the input pipeline against the CNN's training step ------------------------------------------


def clocked(run: Callable[[], int]) -> tuple[float, float]:
    """(images per second, CPU milliseconds per image) of `run`, which returns the images it handled.

    CPU time is this process's, every thread: it moves much less than wall time when other processes
    take a core, so the CPU figures are the steadier ones on a shared machine.
    """
    start, cpu = time.perf_counter(), time.process_time()
    n = run()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return n / wall, 1000 * cpu / n


def epoch_rate(ds: tf.data.Dataset) -> tuple[float, float]:
    """(images/s, CPU ms/image) of one pass over `ds`, nothing else done with the batches."""

    def run() -> int:
        return sum(int(images.shape[0]) for images, _ in ds)

    return clocked(run)


def compiled_cnn(cfg: DictConfig, data: ChestXray) -> keras.Model:
    """The CNN built and compiled exactly as `ablation.train.train` compiles it (`compile_model`)."""
    keras.utils.set_random_seed(cfg.seed)
    model = build_model("cnn", data.train.images.shape[1:], cfg.dropout, cfg.batchnorm)
    compile_model(model, Recipe.of(cfg), len(data.train.labels))
    return model


def step_rate(model: keras.Model, batches: list[tuple[tf.Tensor, tf.Tensor]], steps: int) -> tuple[float, float]:
    """(images/s, CPU ms/image) of `steps` train_on_batch calls on in-memory batches."""

    def run() -> int:
        for i in range(steps):
            x, y = batches[i % len(batches)]
            model.train_on_batch(x, y)  # returns numpy losses: the step has finished when it returns
        return steps * int(batches[0][0].shape[0])

    return clocked(run)


def hidden_fraction(make_ds: Callable[[], tf.data.Dataset], batches: int, repeats: int = 3) -> float:
    """How much of the pipeline's time a training step hides (1: all of it, 0: none, they run in turn).

    The consumer is a simulated accelerator: it sleeps three times the pipeline's own time per batch, as a
    GPU step leaves the CPU free. With working prefetch the pass takes as long as the consumer alone;
    with a serial pipeline the pipeline's time adds to it. Median of `repeats` measurements.
    """
    ds = make_ds().take(batches)
    for _ in ds.take(2):  # start-up: the shuffle buffer, the first map calls
        pass
    fractions = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in ds:
            pass
        producer = time.perf_counter() - start
        step = 3 * producer / batches
        start = time.perf_counter()
        for _ in ds:
            time.sleep(step)
        together = time.perf_counter() - start
        fractions.append((producer + step * batches - together) / producer)
    return float(np.clip(median(fractions), 0.0, 1.0))


def measure_pipeline(
    cfg: DictConfig, data: ChestXray, model: keras.Model, rounds: int = 3, cnn_steps: int = 20
) -> dict:
    """Images/s and CPU per image of the training pipeline alone (full split, `cfg.augmentation`), of the
    CNN's step, of the pipeline without augmentation and of `naive_dataset`; then the hidden fractions.

    Each round runs, in turn: the pipeline as train() runs it (op determinism per
    `cfg.trainer.deterministic`), CNN steps, the plain and the naive pipelines, the pipeline without op
    determinism. Round 0 warms up (tracing) and is not counted.
    """
    deterministic = bool(cfg.trainer.deterministic)
    augment = pipeline.build_augmentation(cfg.augmentation)

    def make_ds() -> tf.data.Dataset:
        return pipeline.train_batches(data.train.images, data.train.labels, cfg.batch_size, cfg.seed, augment=augment)

    with op_determinism(deterministic):
        batches = [(x, y) for x, y in make_ds().take(8)]  # augmented, float32: what the step gets
        step_rate(model, batches, 3)  # tracing and the first, slower steps
    images, labels, files = data.train.images, data.train.labels, data.train.files
    feeds: dict[str, Callable[[], tf.data.Dataset]] = {
        "xray": make_ds,
        "plain": lambda: pipeline.train_batches(images, labels, cfg.batch_size, cfg.seed),
        "naive": lambda: naive_dataset(files, labels, images.shape[1], cfg.batch_size, cfg.seed),
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in (*feeds, "cnn", "xray_free")}
    for r in range(rounds + 1):  # round 0 warms up
        with op_determinism(deterministic):
            runs["xray"].append(epoch_rate(make_ds()))
            runs["cnn"].append(step_rate(model, batches, cnn_steps))
            runs["plain"].append(epoch_rate(feeds["plain"]()))
            runs["naive"].append(epoch_rate(feeds["naive"]()))
        with op_determinism(False):
            runs["xray_free"].append(epoch_rate(make_ds()))
        log(f"pipeline round {r}: " + ", ".join(f"{k} {v[-1][0]:.0f} img/s {v[-1][1]:.2f} ms" for k, v in runs.items()))
    rates = {name: [v[0] for v in values[1:]] for name, values in runs.items()}
    cpus = {name: [v[1] for v in values[1:]] for name, values in runs.items()}
    rate = {name: median(values) for name, values in rates.items()}
    cpu = {name: median(values) for name, values in cpus.items()}
    with op_determinism(deterministic):
        hidden = hidden_fraction(make_ds, 80)
    with op_determinism(False):
        hidden_free = hidden_fraction(make_ds, 80)
    return {
        "pipeline_img_s": round(rate["xray"], 1),
        "cnn_train_img_s": round(rate["cnn"], 1),
        "pipeline_over_cnn": round(paired_ratio(rates["xray"], rates["cnn"]), 2),
        "pipeline_cpu_ms_per_img": round(cpu["xray"], 3),
        "cnn_cpu_ms_per_img": round(cpu["cnn"], 3),
        "pipeline_over_cnn_cpu": round(paired_ratio(cpus["cnn"], cpus["xray"]), 2),
        "pipeline_hidden_fraction": round(hidden, 2),
        "pipeline_nondeterministic_img_s": round(rate["xray_free"], 1),
        "pipeline_nondeterministic_hidden_fraction": round(hidden_free, 2),
        "pipeline_plain_img_s": round(rate["plain"], 1),
        "naive_pipeline_img_s": round(rate["naive"], 1),
        "naive_pipeline_cpu_ms_per_img": round(cpu["naive"], 3),
        "deterministic": deterministic,
    }


# --- one epoch fed by a naive file pipeline and by ours --------------------------------------------


def naive_dataset(files: list[str], labels: np.ndarray, image_size: int, batch_size: int, seed: int = 0):
    """The reference notebook's way: every epoch reads, decodes and resizes every JPEG (parallel map)."""

    def load(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=1)
        return tf.image.resize(image, (image_size, image_size)), label

    ds = tf.data.Dataset.from_tensor_slices((files, labels.reshape(-1, 1).astype(np.float32)))
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def measure_epochs(cfg: DictConfig, data: ChestXray, model: keras.Model, images: int = 0, rounds: int = 2) -> dict:
    """Seconds of one `model.fit` epoch fed by `naive_dataset`, by ours, and by ours with `cfg.augmentation`.

    The naive feed does no augmentation, so `epoch_s` (ours, no augmentation) is the like-for-like
    figure; `epoch_xray_s` is our feed as train() runs it with the `xray` augmentation. All three
    feed the same compiled model; each gets a 5-step warm-up epoch (tracing), then timed epochs
    alternate. `images` caps all to the same first training images (0: the full training split).
    """
    n = len(data.train.labels) if images <= 0 else min(images, len(data.train.labels))
    x, y, files = data.train.images[:n], data.train.labels[:n], data.train.files[:n]
    class_weight = data.class_weights(cfg.class_weighting.name)
    augment = pipeline.build_augmentation(cfg.augmentation)
    times: dict[str, list[float]] = {"naive": [], "ours": [], "ours_xray": []}
    cpu: dict[str, list[float]] = {name: [] for name in times}
    with op_determinism(bool(cfg.trainer.deterministic)):
        feeds = {
            "naive": naive_dataset(files, y, x.shape[1], cfg.batch_size, cfg.seed),
            "ours": pipeline.train_batches(x, y, cfg.batch_size, cfg.seed),
            "ours_xray": pipeline.train_batches(x, y, cfg.batch_size, cfg.seed, augment=augment),
        }
        for ds in feeds.values():
            model.fit(ds, epochs=1, steps_per_epoch=5, class_weight=class_weight, verbose=0)
        for r in range(rounds):
            for name, ds in feeds.items():
                start, cpu_start = time.perf_counter(), time.process_time()
                model.fit(ds, epochs=1, class_weight=class_weight, verbose=0, shuffle=False)
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - cpu_start)
            log(
                f"epoch round {r} ({n} images): "
                + ", ".join(f"{k} {v[-1]:.1f} s ({cpu[k][-1]:.1f} s CPU)" for k, v in times.items())
            )
    naive, ours, xray = (median(times[k]) for k in ("naive", "ours", "ours_xray"))
    return {
        "epoch_images": n,
        "naive_epoch_s": round(naive, 2),
        "epoch_s": round(ours, 2),
        "naive_over_ours": round(paired_ratio(times["naive"], times["ours"]), 3),
        "epoch_img_s": round(n / ours, 1),
        "epoch_xray_s": round(xray, 2),
        "xray_epoch_overhead": round(paired_ratio(times["ours_xray"], times["ours"]) - 1, 3),
        # CPU seconds of this process: what each feed costs, whatever else the machine runs.
        "naive_epoch_cpu_s": round(median(cpu["naive"]), 2),
        "epoch_cpu_s": round(median(cpu["ours"]), 2),
        "naive_over_ours_cpu": round(paired_ratio(cpu["naive"], cpu["ours"]), 3),
        "epoch_xray_cpu_s": round(median(cpu["ours_xray"]), 2),
    }


def measure_eval(cfg: DictConfig, data: ChestXray, model: keras.Model, rounds: int = 3) -> dict:
    """Images/s of the per-epoch validation pass (`model.evaluate` on `eval_batches`)."""
    with op_determinism(bool(cfg.trainer.deterministic)):
        ds = pipeline.eval_batches(data.val.images, data.val.labels, cfg.batch_size)
        model.evaluate(ds, verbose=0)  # tracing
        rates = []
        for _ in range(rounds):
            start = time.perf_counter()
            model.evaluate(ds, verbose=0)
            rates.append(len(data.val.labels) / (time.perf_counter() - start))
    return {"val_eval_img_s": round(median(rates), 1)}


# --- what a sweep job costs besides fitting and evaluating ------------------------------------------


def job_overhead(wall_s: float, jobs: list[dict]) -> dict:
    """Per-job overhead of a sweep from its wall time and each job's MLflow record.

    `jobs`: one dict per job with `start_ms`, `end_ms` (the MLflow run's), `fit_seconds`,
    `eval_seconds` and `data_seconds`, in any order.
    """
    jobs = sorted(jobs, key=lambda j: j["start_ms"])
    work = [j["fit_seconds"] + j["eval_seconds"] for j in jobs]
    in_run = [(j["end_ms"] - j["start_ms"]) / 1000 for j in jobs]
    return {
        "sweep_jobs": len(jobs),
        "sweep_wall_s": round(wall_s, 2),
        "job_overhead_s": round((wall_s - sum(work)) / len(jobs), 2),
        "job_inprocess_overhead_s": [round(r - w, 2) for r, w in zip(in_run, work, strict=True)],
        "job_data_s": [round(j["data_seconds"], 2) for j in jobs],
        "sweep_outside_runs_s": round(wall_s - sum(in_run), 2),
        # A sweep of N jobs pays about sweep_outside_runs_s / N + this per job.
        "job_inprocess_overhead_mean_s": round(sum(r - w for r, w in zip(in_run, work, strict=True)) / len(jobs), 2),
    }


def measure_sweep(root: str | Path, cache_dir: Path, runs_dir: Path, seeds: int = 4) -> dict:
    """Runs a tiny CNN sweep as a user types it and splits its wall time into work and overhead.

    The decoded-image cache is the warm one of `measure_load` and the MLflow store exists already: a
    sweep into a fresh `paths.runs` pays the decoding (`cold_load_s`) and the store's creation
    (`mlflow_store_init_s`) once, on top; we measure what every sweep pays.
    """
    from mlflow import MlflowClient

    # A store's first opening creates its tables (seconds): done here, timed, so that the sweep measures
    # what every sweep into an existing store pays.
    runs_dir.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{runs_dir}/mlflow.db"
    start = time.perf_counter()
    MlflowClient(uri).search_experiments()
    store_init = time.perf_counter() - start
    log(f"sweep: {seeds} CNN jobs in a subprocess")
    command = [
        sys.executable,
        "-m",
        "ablation",
        "-m",
        "model=cnn",
        f"seed={','.join(str(s) for s in range(seeds))}",
        "data.image_size=64",
        "data.max_train_per_class=64",
        "epochs=1",
        f"paths.runs={runs_dir}",
        "tracking.experiment=bench",
        f"data.root={root}",
        f"data.cache_dir={cache_dir}",
        "trainer.verbose=0",
    ]
    env = {**os.environ, "ABLATION_ROOT": str(PROJECT)}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=1200)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"the sweep failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bench")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get(ROLE) == JOB]
    jobs = [
        {
            "start_ms": r.info.start_time,
            "end_ms": r.info.end_time,
            **{k: r.data.metrics[k] for k in ("fit_seconds", "eval_seconds", "data_seconds")},
        }
        for r in runs
    ]
    return {**job_overhead(wall, jobs), "mlflow_store_init_s": round(store_init, 2)}


# --- our ResNet-50 against keras.applications.ResNet50 -------------------------------------------

DROPOUT = 0.5


def _keras_resnet50(input_shape: tuple[int, int, int]) -> keras.Model:
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=input_shape, pooling="avg")
    x = layers.Dropout(DROPOUT, name="head_dropout")(base.output)
    outputs = layers.Dense(1, dtype="float32", name="logit")(x)
    return keras.Model(base.input, outputs, name="resnet50_keras")


def resnet50_vs_keras(
    image_size: int = 64, batch_size: int = 32, steps: int = 10, rounds: int = 3, channels: int = 1
) -> dict:
    """Training images per second of both ResNet-50s (median over rounds) and ours / Keras'.

    Both train in one process on the same data, batch, optimizer and loss; their timed rounds alternate.
    """
    log("resnet50: ours vs keras.applications")
    keras.utils.set_random_seed(0)
    shape = (image_size, image_size, channels)
    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(rng.integers(0, 256, (batch_size, *shape)).astype("float32"))
    y = keras.ops.convert_to_tensor(rng.integers(0, 2, (batch_size, 1)).astype("float32"))
    models = {
        "ours": build_resnet50(shape, DROPOUT, batchnorm=True),
        # Keras' ResNet50 takes no rescaling of its own; ours does it in-graph, a negligible cost.
        "keras": _keras_resnet50(shape),
    }
    batches = [(x, y)]
    for model in models.values():
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.BinaryCrossentropy(from_logits=True),
            jit_compile=False,
        )
        step_rate(model, batches, 3)  # tracing and the first, slower steps
    rates: dict[str, list[float]] = {name: [] for name in models}
    cpus: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            rate, cpu = step_rate(model, batches, steps)
            rates[name].append(rate)
            cpus[name].append(cpu)
    ours, theirs = median(rates["ours"]), median(rates["keras"])
    return {
        "resnet50_ours_img_s": round(ours, 2),
        "resnet50_keras_img_s": round(theirs, 2),
        "resnet50_ours_over_keras": round(paired_ratio(rates["ours"], rates["keras"]), 3),
        "resnet50_ours_over_keras_cpu": round(paired_ratio(cpus["keras"], cpus["ours"]), 3),
    }


# --- on an accelerator: precision and XLA (planned; see docs/performance.md) ------------------------

# Training FLOPs per 224 px image: forward 8.2 (ResNet-50) and 3.6 (ResNet-18) GFLOP, backward ~2x that.


def measure_accelerator(
    models: Iterable[str] = ("resnet50", "resnet18"),
    image_size: int = 224,
    batch_size: int = 128,
    steps: int = 20,
    rounds: int = 3,
) -> dict:
    """Training images/s of each model at float32 and mixed_bfloat16, XLA off and on, rounds interleaved.

    Meant for a GPU (`--only accelerator`); on a CPU it runs, slowly, with small settings.
    """
    log("accelerator: resnet50/resnet18, float32 vs mixed_bfloat16, XLA off/on")
    rng = np.random.default_rng(0)
    shape = (image_size, image_size, 1)
    x = tf.constant(rng.integers(0, 256, (batch_size, *shape)).astype("float32"))
    y = tf.constant(rng.integers(0, 2, (batch_size, 1)).astype("float32"))
    variants: dict[str, keras.Model] = {}
    for name in models:
        for precision in ("float32", "mixed_bfloat16"):
            for xla in (False, True):
                keras.mixed_precision.set_global_policy(precision)
                model = build_model(name, shape, 0.5, True)
                model.compile(
                    optimizer=keras.optimizers.Adam(1e-3),
                    loss=keras.losses.BinaryCrossentropy(from_logits=True),
                    jit_compile=xla,
                )
                key = f"{name}_{'bf16' if precision != 'float32' else 'fp32'}_{'xla' if xla else 'noxla'}"
                step_rate(model, [(x, y)], 3)  # tracing / compiling
                variants[key] = model
                log(f"accelerator: {key} compiled")
    keras.mixed_precision.set_global_policy("float32")
    rates: dict[str, list[float]] = {key: [] for key in variants}
    for _ in range(rounds):
        for key, model in variants.items():
            rates[key].append(step_rate(model, [(x, y)], steps)[0])
    figures = {f"{key}_img_s": round(median(r), 1) for key, r in rates.items()}
    for name in models:  # the arithmetic ceiling on an H200, for comparison with the bf16 figures
        if name in TRAIN_GFLOP_224:
            gflop = TRAIN_GFLOP_224[name] * (image_size / 224) ** 2
            figures[f"{name}_h200_bf16_ceiling_img_s"] = round(H200_BF16_TFLOPS * 1e3 / gflop)
    return figures


# --- the command ---------------------------------------------------------------------------------


def report_store(root: Path, seeds: int = 3, epochs: int = 4) -> tuple[str, str]:
    """An MLflow store holding a 3 x 2 x 2 study (network, dropout, augmentation) x `seeds` seeds: every run with its
    params, epoch curves, test metrics and the two prediction CSVs of a real run, on 624 test images (234 NORMAL)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from ablation.metrics import binary_metrics

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiment = client.create_experiment("report-bench", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(experiment, tags={ROLE: SWEEP}).info.run_id
    labels = np.r_[np.zeros(234, int), np.ones(390, int)]
    files = [f"test/{'NORMAL' if y == 0 else 'PNEUMONIA'}/img{i}.jpeg" for i, y in enumerate(labels)]
    for i, (network, dropout, augmentation, seed) in enumerate(
        (n, d, a, s)
        for n in ("cnn", "resnet18", "resnet50")
        for d in ("0.0", "0.5")
        for a in ("none", "flip")
        for s in range(seeds)
    ):
        rng = np.random.default_rng(i)
        skill = 1.2 + 0.4 * (network != "cnn") + 0.2 * (augmentation == "flip")
        logits = rng.normal(0, 1.3, len(labels)) + skill * (2 * labels - 1)
        tags = {ROLE: JOB, PARENT: parent}
        run = client.create_run(experiment, tags=tags).info.run_id
        params = {"model": network, "dropout": dropout, "augmentation": augmentation, "seed": str(seed), "epochs": "4"}
        test = 1 / (1 + np.exp(-logits))
        once = {f"test_{k}": float(v) for k, v in binary_metrics(labels, test, DEFAULT_THRESHOLD).items()}
        once.update(threshold=DEFAULT_THRESHOLD, best_epoch=epochs, num_params=1e6)
        curves = [
            Metric(key, float(value), 0, epoch)
            for epoch in range(1, epochs + 1)
            for key, value in (("loss", 1 / epoch), ("val_loss", 1.1 / epoch), ("accuracy", 0.8), ("val_auc", 0.9))
        ]
        metrics = [Metric(k, v, 0, 0) for k, v in once.items()] + curves
        client.log_batch(run, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
        folder = root / "files" / run
        folder.mkdir(parents=True)
        for split, p in (("test", test), ("val", 1 / (1 + np.exp(-(logits + rng.normal(0, 0.5, len(logits))))))):
            frame = {"file": files, "label": labels, "probability": np.round(p, 6)}
            pd.DataFrame(frame).to_csv(folder / f"{split}_predictions.csv", index=False)
        client.log_artifacts(run, str(folder))
        client.set_terminated(run, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return f"sqlite:///{root}/mlflow.db", "report-bench"


def measure_report(work: Path, replicates: int = 2000) -> dict:
    """`python -m analysis report`'s whole build (tables, bootstrap, ensembles, figures, documents, upload) on a
    36-run study, and the statistics alone (the tables step)."""
    from analysis.report import build_report, compute_tables, fetch_predictions
    from analysis.runs import load_study

    uri, name = report_store(work / "report-store")
    study = load_study(uri, name)
    start = time.perf_counter()
    build_report(study, work / "report", replicates=replicates)
    whole = time.perf_counter() - start
    predictions = fetch_predictions(study, study.finished, work / "predictions")
    start = time.perf_counter()
    compute_tables(study, None, predictions, replicates)
    return {
        "report_runs": len(study.finished),
        "report_replicates": replicates,
        "report_36_runs_s": round(whole, 2),
        "report_statistics_s": round(time.perf_counter() - start, 2),
    }


def check_targets(figures: dict) -> dict[str, bool]:
    met = {}
    for key, (op, bound) in TARGETS.items():
        value = figures.get(key)
        if value is not None:
            met[key] = {">=": value >= bound, ">": value > bound, "<": value < bound}[op]
    return met


ROWS = (  # (figure, unit, what it is)
    ("cold_load_s", "s", "prepare all splits, empty cache (decode every JPEG)"),
    ("warm_load_s", "s", "prepare all splits, warm cache"),
    ("warm_over_cold", "", "warm / cold"),
    ("pipeline_img_s", "img/s", "training pipeline alone, xray augmentation, as train() runs it"),
    ("cnn_train_img_s", "img/s", "CNN training step, in-memory batches"),
    ("pipeline_over_cnn", "x", "pipeline / CNN (median of per-round ratios)"),
    ("pipeline_cpu_ms_per_img", "ms", "CPU time per image of that pipeline"),
    ("cnn_cpu_ms_per_img", "ms", "CPU time per image of the CNN step"),
    ("pipeline_over_cnn_cpu", "x", "CNN / pipeline, CPU time per image"),
    ("pipeline_hidden_fraction", "", "pipeline time hidden by prefetch behind a step (1 = all)"),
    ("pipeline_nondeterministic_img_s", "img/s", "pipeline alone, op determinism off"),
    ("pipeline_nondeterministic_hidden_fraction", "", "hidden fraction, op determinism off"),
    ("pipeline_plain_img_s", "img/s", "pipeline alone, no augmentation"),
    ("naive_pipeline_img_s", "img/s", "naive pipeline alone: read+decode+resize per file"),
    ("naive_pipeline_cpu_ms_per_img", "ms", "CPU time per image of the naive pipeline"),
    ("naive_epoch_s", "s", "one CNN epoch fed by read+decode+resize per file"),
    ("epoch_s", "s", "one CNN epoch fed by our pipeline, no augmentation"),
    ("naive_over_ours", "x", "naive / ours"),
    ("epoch_xray_s", "s", "one CNN epoch fed by our pipeline, xray augmentation"),
    ("epoch_img_s", "img/s", "training images/s of that epoch (ours, no augmentation)"),
    ("xray_epoch_overhead", "", "xray / plain - 1: what augmenting adds to an epoch"),
    ("naive_epoch_cpu_s", "s", "CPU seconds of the naive epoch (this process, all threads)"),
    ("epoch_cpu_s", "s", "CPU seconds of our epoch, no augmentation"),
    ("naive_over_ours_cpu", "x", "naive / ours, CPU seconds"),
    ("epoch_xray_cpu_s", "s", "CPU seconds of our epoch, xray augmentation"),
    ("val_eval_img_s", "img/s", "validation pass (model.evaluate)"),
    ("job_overhead_s", "s", "per sweep job: wall time minus fit and evaluation"),
    ("job_inprocess_overhead_s", "s", "per job inside its MLflow run: run time minus fit and eval"),
    ("job_inprocess_overhead_mean_s", "s", "their mean"),
    ("sweep_outside_runs_s", "s", "sweep wall time outside every run (process start, imports)"),
    ("job_data_s", "s", "per job: loading the data from the warm cache"),
    ("mlflow_store_init_s", "s", "creating a fresh MLflow SQLite store (once per paths.runs)"),
    ("resnet50_ours_img_s", "img/s", "our ResNet-50 training step"),
    ("resnet50_keras_img_s", "img/s", "keras.applications ResNet-50 training step"),
    ("resnet50_ours_over_keras", "x", "ours / Keras'"),
    ("resnet50_ours_over_keras_cpu", "x", "Keras' / ours, CPU time per image"),
    ("report_36_runs_s", "s", "python -m analysis report, 36 runs, 2,000 bootstrap replicates, everything"),
    ("report_statistics_s", "s", "its tables alone (t, bootstrap, ensembles, planning, interactions)"),
    *(
        row
        for preset in ("quick", "best")
        for mechanism, how in (
            ("lone", "a job per seed"),
            ("packed", "pack_seeds, one worker a core"),
            ("packed_in_turn", "pack_seeds, pack.workers=1"),
        )
        for row in (
            (f"seeds_{preset}_{mechanism}_per_hour", "/h", f"{preset}: seeds per hour, {how}"),
            (f"seeds_{preset}_{mechanism}_over_lone", "x", f"{preset}: {how} / a job per seed"),
            (f"seeds_{preset}_{mechanism}_vs_lone_max_abs_diff", "", f"{preset}: largest test-metric difference"),
        )
    ),
)


def table(figures: dict, met: dict[str, bool]) -> str:
    lines = [f"{'figure':<42}{'value':>16}  {'target':<14}{'what'}"]
    for key, unit, what in ROWS:
        if key not in figures:
            continue
        value = figures[key]
        if value is None:
            continue
        shown = ", ".join(f"{v:g}" for v in value) if isinstance(value, list) else f"{value:g}"
        target = ""
        if key in TARGETS:
            op, bound = TARGETS[key]
            target = f"{op}{bound:g} " + ("ok" if met.get(key) else "MISSED")
        lines.append(f"{key:<42}{shown + (' ' + unit if unit else ''):>16}  {target:<14}{what}")
    known = {row[0] for row in ROWS}
    for key, value in figures.items():  # the accelerator section's figures; the seeds section's A/A verdicts
        if key.endswith("_img_s") and key not in known:
            lines.append(f"{key:<42}{value:>12.1f} img/s")
        if key.endswith("_verdicts"):
            lines.append(f"{key}: " + ", ".join(f"{metric} {verdict}" for metric, verdict in value.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="default: the config's data.root (../shared/data/chest_xray)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="timed, interleaved rounds of pipeline vs CNN")
    parser.add_argument("--cnn-steps", type=int, default=20, help="CNN training steps per round")
    parser.add_argument("--cold-loads", type=int, default=2)
    parser.add_argument("--warm-loads", type=int, default=5, help="warm loads after each cold one")
    parser.add_argument("--epoch-images", type=int, default=0, help="cap of the timed epochs (0: full split)")
    parser.add_argument("--epoch-rounds", type=int, default=3, help="timed epochs of each feed, interleaved")
    parser.add_argument("--resnet-steps", type=int, default=3, help="ResNet-50 steps per timed round")
    parser.add_argument("--resnet-rounds", type=int, default=5)
    parser.add_argument("--sweep-jobs", type=int, default=4, help="jobs of the timed sweep (the README's smallest: 6)")
    parser.add_argument("--backend-rounds", type=int, default=3, help="timed epochs of TF vs JAX, interleaved")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="sections to run (default: all)")
    parser.add_argument("--accel-batch", type=int, default=128, help="batch of the accelerator section")
    parser.add_argument("--accel-size", type=int, default=224, help="image side of the accelerator section")
    parser.add_argument("--accel-steps", type=int, default=20)
    parser.add_argument("--seeds-preset", choices=["quick", "best"], default="quick", help="the seeds section's config")
    parser.add_argument("--seeds", type=int, default=4, help="seeds of each sweep of the seeds section")
    parser.add_argument(
        "--seeds-mechanisms", nargs="+", default=["lone", "packed", "packed_in_turn"], help="the seeds section's sweeps"
    )
    parser.add_argument("--quick", action="store_true", help="smaller samples: 1024-image epochs, fewer rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.cnn_steps, args.cold_loads, args.warm_loads = 2, 10, 1, 3
        args.epoch_images, args.epoch_rounds, args.resnet_steps, args.resnet_rounds = 1024, 1, 2, 2

    if args.only is None:
        gpu = bool(tf.config.list_physical_devices("GPU"))
        args.only = [s for s in SECTIONS if (s != "accelerator" or gpu) and s != "seeds"]
    began = time.perf_counter()
    cfg = compose("augmentation=xray", f"data.image_size={args.image_size}", "batch_size=32")
    root = args.data_root or cfg.data.root
    command = " ".join(["python -m benchmarks.bench", *(sys.argv[1:] if argv is None else argv)])
    figures: dict = {"command": command, **machine(), "loadavg_start": loadavg()}
    work = Path(tempfile.mkdtemp(prefix="ablation-bench-"))
    errors: dict[str, str] = {}

    def section(name: str, run: Callable[[], dict | None]) -> None:
        """Runs one section; a failure is recorded and the others still run."""
        if name not in args.only:
            return
        try:
            figures.update(run() or {})
        except Exception as error:  # a benchmark reports what it could measure
            errors[name] = f"{type(error).__name__}: {error}"[:2000]
            log(f"{name} failed: {errors[name]}")

    state: dict = {}

    def load() -> dict:
        if "load" in args.only:
            loads, state["data"], state["cache"] = measure_load(
                root, args.image_size, args.cold_loads, args.warm_loads, work / "cache"
            )
            log(f"cold {loads['cold_load_s']} s, warm {loads['warm_load_s']} s")
            return loads
        state["cache"] = work / "cache"
        state["data"] = load_data(root, args.image_size, 0.1, 0, state["cache"])
        return {}

    def model() -> keras.Model:
        if "model" not in state:
            state["model"] = compiled_cnn(cfg, state["data"])
        return state["model"]

    try:
        log(f"data {root}, {args.image_size} px, sections {' '.join(args.only)}, scratch {work}")
        if set(args.only) & {"load", "pipeline", "epochs", "eval", "sweep"}:
            args.only.append("data")
            section("data", load)
        section("pipeline", lambda: measure_pipeline(cfg, state["data"], model(), args.rounds, args.cnn_steps))
        section("epochs", lambda: measure_epochs(cfg, state["data"], model(), args.epoch_images, args.epoch_rounds))
        section("eval", lambda: measure_eval(cfg, state["data"], model()))
        section("sweep", lambda: measure_sweep(root, state["cache"], work / "runs", args.sweep_jobs))
        section(
            "resnet50",
            lambda: resnet50_vs_keras(args.image_size, 32, args.resnet_steps, args.resnet_rounds, channels=1),
        )
        section(
            "backends",
            lambda: measure_backends(root, work / "cache", image_size=args.image_size, rounds=args.backend_rounds),
        )
        section("report", lambda: measure_report(work))
        section(
            "seeds",
            lambda: measure_seeds(
                root, work / "cache", work / "runs", args.seeds_preset, args.seeds, tuple(args.seeds_mechanisms)
            ),
        )
        section(
            "accelerator",
            lambda: measure_accelerator(
                image_size=args.accel_size, batch_size=args.accel_batch, steps=args.accel_steps
            ),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if errors:
        figures["errors"] = errors
    figures["loadavg_end"] = loadavg()
    figures["bench_seconds"] = round(time.perf_counter() - began, 1)
    met = check_targets(figures)
    figures["targets_met"] = met
    print(table(figures, met))
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
