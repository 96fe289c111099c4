#!/usr/bin/env bash
# The CIFAR-10 study at full scale (WRN-28-2, 4,000 labels, all 50,000
# training images) plus the benchmark, in ONE device call of at most 10
# minutes on an H100/H200-class GPU. Run from the repository root:
#
#   bash experiments/gpu_study.sh ARRAY_FILE OUT_DIR
#
# ARRAY_FILE: CIFAR-10 as an array file (experiments/make_array_file.py).
# Writes OUT_DIR/ as experiments/study.py does (runs/*/config.json and
# metrics.jsonl, tables/, figures/, claims.md) plus OUT_DIR/benchmark.json.
#
# The study stops at STUDY_BUDGET_S seconds (default 420) and the runs that
# finished by then are aggregated; rerunning the same command resumes the
# rest. Defaults (EPOCHS=8, SEEDS=0,1, REGIMES=erm,supmix2,mix2,mix3) are an
# estimate of what fits: no GPU run of this script has been made yet (see
# the README). The persistent compilation cache makes the second seed of a
# regime skip its compile.
#
# The CPU smoke path (tests/test_gpu_study.py) runs the same script with
# CONFIG=configs/cifar10_gpu_study.py:smoke, BENCH_ARGS=--tiny and a tiny
# array file.
#
# ml-collections is pure Python: where the machine lacks it, put its wheel
# in .whl/ and this script installs it to /tmp/site first.
set -euo pipefail
ARRAY=${1:?usage: gpu_study.sh ARRAY_FILE OUT_DIR}
OUT=${2:?usage: gpu_study.sh ARRAY_FILE OUT_DIR}
CONFIG=${CONFIG:-configs/cifar10_gpu_study.py}
EPOCHS=${EPOCHS:-8}
SEEDS=${SEEDS:-0,1}
REGIMES=${REGIMES:-erm,supmix2,mix2,mix3}
STUDY_BUDGET_S=${STUDY_BUDGET_S:-420}
BENCH_ARGS=${BENCH_ARGS:---models=wrn28_2 --regimes=erm,supmix2,mix2,mix3 --batch_size=256 --steps=100 --warmup=10 --post_hoc_tuples=10000}

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/mixlin_jax_cache}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true

study=(python3 experiments/study.py "--config=$CONFIG" "--config.data.source=$ARRAY"
       "--config.train.epochs=$EPOCHS" "--regimes=$REGIMES" "--seeds=$SEEDS" "--out=$OUT")
start=$(date +%s)
if ! timeout "$STUDY_BUDGET_S" "${study[@]}"; then
  echo "study stopped after $(( $(date +%s) - start )) s (budget ${STUDY_BUDGET_S} s); aggregating the finished runs"
  python3 experiments/study.py --aggregate_only "--out=$OUT" "--regimes=$REGIMES" "--seeds=$SEEDS" \
    || echo "no run finished within the budget: nothing to aggregate"
fi
echo "study wall time: $(( $(date +%s) - start )) s"
# shellcheck disable=SC2086
python3 experiments/benchmark.py $BENCH_ARGS --out="$OUT/benchmark.json"
