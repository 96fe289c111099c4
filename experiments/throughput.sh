#!/usr/bin/env bash
# Study throughput, in one sitting: what the persistent compilation cache and
# study.py --jobs buy on this machine. Run from the repository root, on an
# otherwise idle machine:
#
#   bash experiments/throughput.sh [OUT_DIR]      # default workdirs/throughput
#
# Rows (each a fresh study folder; a fresh, empty cache folder for the
# sitting, as on a new machine with nothing set by the user):
#   default run, 1st      run.py --config=configs/default.py, empty cache
#   default run, 2nd      the same command into a new workdir (warm cache)
#   12-epoch run, 1st/2nd the same at --config.train.epochs=12 (the default
#                         schedule when the cache was added), empty cache first
#   study, --jobs=1 cold  a reduced digits study (4 regimes x 3 seeds, 12
#                         epochs), cache emptied first (the baseline)
#   study, --jobs=1 warm  the same study again into a new folder
#   study, --jobs=2 warm  the same, two runs at once
#   study, cache off      the same, --jobs=1, MIXLIN_JAX_CACHE=off (how every
#                         study ran before the cache)
# Prints a Markdown table (wall seconds, ratio to the baseline row of its
# group) and writes it to OUT_DIR/throughput.md.
set -euo pipefail
OUT=${1:-workdirs/throughput}
rm -rf "$OUT"
mkdir -p "$OUT"
export XDG_CACHE_HOME=$PWD/$OUT/cache_home   # ~/.cache stays untouched
unset JAX_COMPILATION_CACHE_DIR MIXLIN_JAX_CACHE JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS
study=(python experiments/study.py --config=configs/default.py --config.train.epochs=12
       --regimes=erm,supmix2,mix2,mix3 --seeds=0,1,2)
rows=()
timed() {  # timed NAME COMMAND...: runs it, logs to OUT/NAME.log, records wall seconds
  local name=$1; shift
  local start end
  start=$(date +%s.%N)
  "$@" > "$OUT/$name.log" 2>&1
  end=$(date +%s.%N)
  rows+=("$name $(python -c "print(f'{$end - $start:.1f}')")")
  echo "$name: $(python -c "print(f'{$end - $start:.1f}')") s"
}
timed default_first python experiments/run.py --config=configs/default.py --workdir="$OUT/default_first"
timed default_second python experiments/run.py --config=configs/default.py --workdir="$OUT/default_second"
rm -rf "$XDG_CACHE_HOME"
timed short_first python experiments/run.py --config=configs/default.py --config.train.epochs=12 --workdir="$OUT/short_first"
timed short_second python experiments/run.py --config=configs/default.py --config.train.epochs=12 --workdir="$OUT/short_second"
rm -rf "$XDG_CACHE_HOME"
timed study_jobs1_cold "${study[@]}" --jobs=1 --out="$OUT/study_jobs1_cold"
timed study_jobs1_warm "${study[@]}" --jobs=1 --out="$OUT/study_jobs1_warm"
timed study_jobs2_warm "${study[@]}" --jobs=2 --out="$OUT/study_jobs2_warm"
timed study_cache_off env MIXLIN_JAX_CACHE=off "${study[@]}" --jobs=1 --out="$OUT/study_cache_off"
python - "$OUT" "${rows[@]}" <<'PY'
import sys
out, rows = sys.argv[1], dict(r.split() for r in sys.argv[2:])
labels = {"default_first": ("`run.py --config=configs/default.py`, first (empty cache)", "default_first"),
          "default_second": ("the same, second (new workdir)", "default_first"),
          "short_first": ("the same at `--config.train.epochs=12`, first (empty cache)", "short_first"),
          "short_second": ("the same at 12 epochs, second (new workdir)", "short_first"),
          "study_jobs1_cold": ("digits study (12 runs of 12 epochs), `--jobs=1`, empty cache", "study_jobs1_cold"),
          "study_jobs1_warm": ("the same study, `--jobs=1`, warm cache", "study_jobs1_cold"),
          "study_jobs2_warm": ("the same study, `--jobs=2`, warm cache", "study_jobs1_cold"),
          "study_cache_off": ("the same study, `--jobs=1`, `MIXLIN_JAX_CACHE=off`", "study_jobs1_cold")}
lines = ["| what | wall time, s | vs. first row of its group |", "|---|---|---|"]
for key, (label, base) in labels.items():
  s, b = float(rows[key]), float(rows[base])
  lines.append(f"| {label} | {s:.1f} | {s / b:.2f}x |")
table = "\n".join(lines)
print(table)
open(f"{out}/throughput.md", "w").write(table + "\n")
PY
