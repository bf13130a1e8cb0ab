#!/usr/bin/env bash
# The GPU check, one command on the GPU machine (one H200; Python 3.12 with JAX and CUDA, no TensorFlow, Keras,
# Hydra or MLflow; no network), from the repository and .gpu/, which `bash benchmarks/gpu_bundle.sh` prepares
# here (carry: .gpu). Its steps are capped at 140 s, 110 s and 190 s (at most 8 minutes with the wheels' install;
# not yet timed on a GPU). Writes gpu.json and packing.json into $OUT (or gpu-out/):
#   1. training images/s of ResNet-50 and ResNet-18 at 224 px, batch 128, float32 and mixed_bfloat16, under JAX,
#      and their fraction of the card's bf16 ceiling (python -m benchmarks.gpu);
#   2. a short real sweep: ResNet-18 and ResNet-50 as two jobs at once on the one card (joblib, two processes,
#      JAX memory on demand), 3 epochs on the subset, into a local SQLite MLflow store, whose record is checked;
#   3. packed seeds: 1, 4 and 16 seeds of the quickstart's and the recipe's configurations on the one card, as one
#      vmapped program and as N processes, with seeds per hour and the card's peak memory (python -m benchmarks.packing).
# Rehearse on a CPU (JAX is slow there: XLA's CPU convolutions) with small sizes and a subset:
#   PYTHON=.venv/bin/python GPU_SIZE=32 GPU_BATCH=16 GPU_STEPS=2 GPU_ROUNDS=1 \
#     GPU_SWEEP_ARGS="data.max_train_per_class=48 epochs=2" GPU_PACK_ARGS="--image-size 32 --seeds 1 2 --steps 2" \
#     bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 KERAS_BACKEND=jax ABLATION_ROOT=$PWD
python=${PYTHON:-python3}
if ! "$python" -c "import keras, hydra, mlflow, omegaconf" 2>/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu/wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
size=${GPU_SIZE:-224} batch=${GPU_BATCH:-128}

timeout "${GPU_BENCH_TIMEOUT:-140}" "$python" -m benchmarks.gpu --data-root .gpu/chest_xray --image-size "$size" \
  --batch-size "$batch" --steps "${GPU_STEPS:-30}" --rounds "${GPU_ROUNDS:-3}" --out "$out/throughput.json"
echo "[gpu] throughput exit $?"

runs=/tmp/ablation-gpu-runs
rm -rf "$runs"
start=$(date +%s)
timeout "${GPU_SWEEP_TIMEOUT:-110}" "$python" -m ablation -m model=resnet18,resnet50 hydra/launcher=joblib \
  hydra.launcher.n_jobs=2 data.root=.gpu/chest_xray data.image_size="$size" batch_size="$batch" epochs=3 \
  trainer.precision=mixed_bfloat16 trainer.verbose=2 tracking.system_metrics_s=2 tracking.report=false \
  tracking.experiment=gpu-check paths.runs="$runs" ${GPU_SWEEP_ARGS:-} > "$out/sweep.log" 2>&1
echo "[gpu] sweep exit $? after $(( $(date +%s) - start )) s"
tail -n 5 "$out/sweep.log"
"$python" -m benchmarks.gpu --check-store "sqlite:///$runs/mlflow.db" --experiment gpu-check \
  --sweep-seconds "$(( $(date +%s) - start ))" --merge "$out/throughput.json" --out "$out/gpu.json"

timeout "${GPU_PACK_TIMEOUT:-190}" "$python" -m benchmarks.packing --data-root .gpu/chest_xray --out "$out/packing.json" \
  ${GPU_PACK_ARGS:-}
echo "[gpu] packing exit $?"
