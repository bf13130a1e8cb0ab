#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for benchmarks/gpu.sh on the GPU machine, which has Python 3.12, JAX with CUDA,
# numpy, pandas, scipy, scikit-learn, matplotlib, seaborn and the like, but no Keras, Hydra or MLflow, and no
# network: the wheels of what is missing there (for Python 3.12, manylinux x86-64) and a subset of the real
# images (all 624 test images, $GPU_TRAIN_PER_CLASS training images a class), under the 64 MiB a run may carry.
#   bash benchmarks/gpu_bundle.sh        then, on that machine:   bash benchmarks/gpu.sh   (carry: .gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${DATA_ROOT:-../shared/data/chest_xray}
per_class=${GPU_TRAIN_PER_CLASS:-600}
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/chest_xray

# What the machine lacks of the project's needs (Keras, Hydra and its joblib launcher, MLflow's client with its
# SQLite store), pinned to the versions this project is tested with.
packages=(
  keras==3.15.1 namex==0.1.0 optree==0.20.0
  hydra-core==1.3.8 omegaconf==2.3.1 hydra-joblib-launcher==1.2.0
  mlflow-skinny==3.17.2 sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3 sqlparse==0.6.1
  cachetools==7.3.3 databricks-sdk==0.167.0 google-auth==2.63.0 pyasn1==0.6.5 pyasn1-modules==0.4.2
  cryptography==50.0.2 cffi==2.1.1 pycparser==3.12 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0
  gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3 importlib-metadata==9.1.0 python-dotenv==1.2.4
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
  opentelemetry-semantic-conventions==0.66b2 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 \
  manylinux_2_34_x86_64; do platforms+=(--platform "$p"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .gpu/wheels "${packages[@]}"
# Hydra's parser runtime is published as a source archive only; pure Python, so a wheel built here serves 3.12.
python3 -m pip wheel -q --no-deps -w .gpu/wheels antlr4-python3-runtime==4.9.3

for cls in NORMAL PNEUMONIA; do
  mkdir -p ".gpu/chest_xray/train/$cls" ".gpu/chest_xray/test/$cls"
  find "$data/train/$cls" -maxdepth 1 -type f | sort | sed -n "1,${per_class}p" | xargs -I{} cp {} ".gpu/chest_xray/train/$cls/"
  cp "$data/test/$cls/"* ".gpu/chest_xray/test/$cls/"
done
du -sh .gpu/wheels .gpu/chest_xray
