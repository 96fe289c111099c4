#!/usr/bin/env bash
# (ResNet-18 only, to fit a 10-minute device call; add wrn28_2 to --models
# when there is time.)
# The GPU measurement of docs/performance.md, in ONE call so the
# PyTorch reference and ours share the device. Run from the repository root:
#
#   bash experiments/gpu_benchmark.sh [PATH/TO/torch_resnet18_mixup.py] [OUT_DIR]
#
# Needs jax[cuda], flax, optax, orbax-checkpoint, ml-collections, absl-py and
# torch. ml-collections is pure Python: where the machine lacks it, put its
# wheel in .whl/ (pip download --no-deps ml-collections -d .whl) and this
# script installs it to /tmp/site first.
set -euo pipefail
REF=${1:-../shared/bench/torch_resnet18_mixup.py}
OUT=${2:-${OUT:-.}}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 experiments/benchmark.py --models=preact_resnet18 \
  --regimes=erm,supmix2,mix2,mix3 --batch_size=512 --steps=200 --warmup=20 \
  --torch_reference="$REF" --out="$OUT/benchmark_b512.json" 2>&1 | tee "$OUT/benchmark_b512.log"
