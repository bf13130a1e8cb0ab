"""The GPU check's figures (benchmarks/gpu.sh runs this): training images/s of ResNet-50 and ResNet-18 on the
real X-rays, float32 and mixed_bfloat16, under whatever Keras backend runs (JAX on the GPU machine), and that as a
fraction of the card's arithmetic ceiling. No TensorFlow needed.

    python -m benchmarks.gpu --data-root .gpu/chest_xray --out gpu.json [--image-size 224 --batch-size 128 --steps 30]

Each variant is built and compiled as a run compiles it (`ablation.train.compile_model`), fed as a run is fed
(`ablation.pipeline.train_batches`, the cached arrays), warmed up by one epoch (compilation), then timed over
`--rounds` epochs of `--steps` steps; the median is reported. Keras' fit returns only when the epoch's last step has
finished on the device, so wall time over the epoch is device time plus whatever the feed fails to hide.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks import PROJECT, compose

# Training FLOPs per image at 224 px (forward + backward, about 3x the forward's 2 x multiply-adds).
TRAIN_GFLOP_224 = {"resnet50": 24.5, "resnet18": 10.9}
H200_BF16_TFLOPS = 790.0  # dense bf16 matrix products as measured on the project's H200 (datasheet: 990)
PUBLISHED = {  # ResNet-50 training, mixed precision, images/s: what others report, for docs/performance.md
    "a100_tensorflow_nvidia_ngc": 2400,
    "h100_mlperf_per_gpu": 7000,
}


def measure(
    models,
    precisions,
    data_root,
    cache_dir,
    image_size: int,
    batch_size: int,
    steps: int,
    rounds: int,
    out: str | None = None,
    figures: dict | None = None,
) -> dict:
    """Each variant's figures, added to `figures` and written to `out` (JSON) as soon as it is measured: a time limit
    then keeps what was done."""
    import keras

    from ablation import backend, pipeline
    from ablation.data import load_data
    from ablation.models import build_model
    from ablation.train import Recipe, compile_model

    data = None
    figures = {} if figures is None else figures
    figures["backend"] = keras.backend.backend()
    for precision in precisions:
        cfg = compose(f"data.image_size={image_size}", f"batch_size={batch_size}", f"trainer.precision={precision}")
        for name in models:
            backend.set_up(cfg.seed, str(cfg.trainer.precision))
            if data is None:
                start = time.perf_counter()
                data = load_data(data_root, image_size, 0.1, 0, cache_dir)
                figures["decode_s"] = round(time.perf_counter() - start, 1)
            n = min(len(data.train.labels), batch_size * steps)
            # Real images, cycled when the subset is smaller than the epoch: `steps` full batches every epoch.
            rows = np.arange(batch_size * steps) % n
            images, labels = data.train.images[rows], data.train.labels[rows]
            feed = pipeline.train_batches(images, labels, batch_size, cfg.seed)
            model = build_model(name, images.shape[1:], cfg.dropout, cfg.batchnorm)
            compile_model(model, Recipe.of(cfg), len(labels))
            start = time.perf_counter()
            model.fit(feed, epochs=1, verbose=0)
            compile_s = time.perf_counter() - start
            rates = []
            for _ in range(rounds):
                start = time.perf_counter()
                model.fit(feed, epochs=1, verbose=0)
                rates.append(len(labels) / (time.perf_counter() - start))
            rate = statistics.median(rates)
            key = f"{name}_{image_size}px_b{batch_size}_{'bf16' if 'bfloat16' in precision else 'fp32'}"
            figures[f"{key}_img_s"] = round(rate, 1)
            figures[f"{key}_first_epoch_s"] = round(compile_s, 1)
            gflop = TRAIN_GFLOP_224.get(name, 0) * (image_size / 224) ** 2
            if gflop:
                figures[f"{key}_tflop_s"] = round(rate * gflop / 1e3, 1)
                figures[f"{key}_of_h200_bf16_ceiling"] = round(rate * gflop / 1e3 / H200_BF16_TFLOPS, 3)
            print(f"[gpu] {key}: {rate:.1f} images/s (first epoch {compile_s:.1f} s)", flush=True)
            if out:
                Path(out).write_text(json.dumps(figures, indent=2))
            del model
            keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    return figures


def check_store(uri: str, experiment: str) -> dict:
    """The sweep's MLflow record: each job run FINISHED under JAX, with its epochs, test metrics, system metrics (GPU
    ones where there is a GPU) and its MLflow model; and whether the jobs ran at once (sharing the card)."""
    import mlflow

    from ablation.contract import JOB, ROLE

    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    jobs = [r for r in runs if r.data.tags.get(ROLE) == JOB]
    figures: dict = {"sweep_jobs": len(jobs), "sweep_problems": []}
    for run in jobs:
        name, metrics = run.data.params.get("model.name", run.info.run_name), run.data.metrics
        problems = []
        if run.info.status != "FINISHED":
            problems.append(f"status {run.info.status}: {run.data.tags.get('error', '')[:300]}")
        if run.data.params.get("trainer.backend") != "jax":
            problems.append(f"backend {run.data.params.get('trainer.backend')}")
        epochs = [m.step for m in client.get_metric_history(run.info.run_id, "val_auc")]
        if epochs != list(range(1, int(run.data.params.get("epochs", 0)) + 1)):
            problems.append(f"val_auc logged at epochs {epochs}")
        if "model/MLmodel" not in {a.path for a in client.list_artifacts(run.info.run_id, "model")}:
            problems.append("no MLflow model")
        gpu_metrics = sorted(k for k in metrics if k.startswith("system/gpu"))
        figures[f"sweep_{name}"] = {
            "status": run.info.status,
            "test_auc": metrics.get("test_auc"),
            "test_accuracy": metrics.get("test_accuracy"),
            "fit_seconds": metrics.get("fit_seconds"),
            "gpu_system_metrics": gpu_metrics[:6],
            "peak_gpu_memory_mb": max(
                (metrics[k] for k in gpu_metrics if k.endswith("memory_usage_megabytes")), default=None
            ),
        }
        figures["sweep_problems"] += [f"{name}: {p}" for p in problems]
    spans = sorted((r.info.start_time, r.info.end_time or 0) for r in jobs)
    figures["sweep_jobs_overlapped"] = len(spans) == 2 and spans[1][0] < spans[0][1]
    figures["sweep_ok"] = len(jobs) == 2 and not figures["sweep_problems"]
    return figures


def devices() -> list[str]:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    return []


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(PROJECT / ".gpu" / "chest_xray"))
    parser.add_argument("--cache-dir", default="/tmp/ablation-gpu-cache")
    parser.add_argument("--models", nargs="+", default=["resnet50", "resnet18"])
    parser.add_argument("--precisions", nargs="+", default=["mixed_bfloat16", "float32"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="training steps per timed epoch")
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per variant (median)")
    parser.add_argument("--out", help="write the figures here as JSON")
    parser.add_argument("--check-store", metavar="URI", help="check a sweep's MLflow record instead of timing")
    parser.add_argument("--experiment", default="gpu-check")
    parser.add_argument("--sweep-seconds", type=float)
    parser.add_argument("--merge", help="a JSON file of figures to include (the throughput's)")
    args = parser.parse_args(argv)
    if args.check_store:
        merged = Path(args.merge)
        figures = json.loads(merged.read_text()) if args.merge and merged.exists() else {}
        figures |= check_store(args.check_store, args.experiment) | {"sweep_seconds": args.sweep_seconds}
        if args.out:
            Path(args.out).write_text(json.dumps(figures, indent=2))
        print(json.dumps(figures))
        return figures
    figures = {"python": platform.python_version(), "devices": devices()}
    figures["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    sizes = (args.image_size, args.batch_size, args.steps, args.rounds)
    measure(args.models, args.precisions, args.data_root, args.cache_dir, *sizes, out=args.out, figures=figures)
    figures["published_resnet50_mixed_img_s"] = PUBLISHED
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
