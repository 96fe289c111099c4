#!/usr/bin/env bash
# The CIFAR-10 or CIFAR-100 study at full scale (WRN-28-2, all 50,000
# training images; 4,000 or 10,000 labels) plus the benchmark, in ONE device
# call of at most 10 minutes on an H100/H200-class GPU. From the repository
# root:
#
#   bash experiments/gpu_study.sh DATASET ARRAY_FILE OUT_DIR
#
# DATASET: cifar10 or cifar100 (the config is configs/DATASET_gpu_study.py).
# ARRAY_FILE: that dataset as an array file (../shared/data/cifar10.py,
# cifar100.py, or experiments/make_array_file.py from the public archive).
# Writes OUT_DIR/ as experiments/study.py does (runs/*/config.json and
# metrics.jsonl, tables/, figures/, claims.md) plus OUT_DIR/benchmark.json.
#
# JOBS runs share the GPU at once (study.py --jobs: each gets 80%/JOBS of
# its memory and 1/JOBS of the cores). A WRN-28-2 step at batch 64 + 128
# leaves most of an H100 idle, so several runs at once train several times
# more in the same call.
#
# ESTIMATES, not yet measured on a GPU (no GPU run of this script has been
# made; see docs/scaling.md): JOBS=8 (eight WRN-28-2 runs fit in 80-141 GB
# with room to spare: one needs a few GB), EPOCHS=4 and SEEDS=0,1 (the 8
# runs of 4 regimes x 2 seeds, all at once) within STUDY_BUDGET_S=420 s.
# The study stops at the budget and the runs finished by then are
# aggregated; rerunning the same command resumes the rest from their
# per-epoch checkpoints. The persistent compilation cache (on by default,
# mixlin_jax/jax_cache.py) lets a rerun skip compiling.
#
# The CPU smoke path (tests/test_gpu_study.py) runs the same script with
# CONFIG=configs/cifar10_gpu_study.py:smoke, BENCH_ARGS=--tiny and a tiny
# array file.
#
# ml-collections is pure Python: where the machine lacks it, put its wheel
# in .whl/ and this script installs it to /tmp/site first.
set -euo pipefail
usage="usage: gpu_study.sh DATASET ARRAY_FILE OUT_DIR (DATASET: cifar10 or cifar100)"
DATASET=${1:?$usage}
ARRAY=${2:?$usage}
OUT=${3:?$usage}
case "$DATASET" in
  cifar10|cifar100) ;;
  *) echo "error: DATASET '$DATASET': expected cifar10 or cifar100" >&2; exit 2 ;;
esac
[ -f "$ARRAY" ] || { echo "error: ARRAY_FILE '$ARRAY' does not exist" >&2; exit 2; }
CONFIG=${CONFIG:-configs/${DATASET}_gpu_study.py}
EPOCHS=${EPOCHS:-4}
SEEDS=${SEEDS:-0,1}
REGIMES=${REGIMES:-erm,supmix2,mix2,mix3}
JOBS=${JOBS:-8}
STUDY_BUDGET_S=${STUDY_BUDGET_S:-420}
BENCH_ARGS=${BENCH_ARGS:---models=wrn28_2 --regimes=erm,supmix2,mix2,mix3 --batch_size=256 --steps=100 --warmup=10 --post_hoc_tuples=10000}

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true

study=(python3 experiments/study.py "--config=$CONFIG" "--config.data.source=$ARRAY"
       "--config.train.epochs=$EPOCHS" "--regimes=$REGIMES" "--seeds=$SEEDS"
       "--jobs=$JOBS" "--out=$OUT")
start=$(date +%s)
if ! timeout "$STUDY_BUDGET_S" "${study[@]}"; then
  echo "study stopped after $(( $(date +%s) - start )) s (budget ${STUDY_BUDGET_S} s); aggregating the finished runs"
  python3 experiments/study.py --aggregate_only "--out=$OUT" "--regimes=$REGIMES" "--seeds=$SEEDS" \
    || echo "no run finished within the budget: nothing to aggregate"
fi
echo "study wall time: $(( $(date +%s) - start )) s ($JOBS runs at once)"
# shellcheck disable=SC2086
python3 experiments/benchmark.py $BENCH_ARGS --out="$OUT/benchmark.json"
