#!/usr/bin/env bash
# DURR's two CPU-scale studies over three seeds (experiments/durr/README.md, "CPU-scale studies"):
#   jpeg:    durr_jpeg_lite and dncnn_jpeg_lite (a DnCNN of the same size), seeds 0 1 2;
#   denoise: durr_denoise_lite and dncnn_denoise_lite, seeds 0 1 2, and bm3d_denoise_lite once
#            (BM3D is deterministic given the noise, which data.eval_seed fixes for every seed).
# One run at a time, one thread. A run whose record is already kept is skipped (the queue
# resumes); each finished run's results.json is copied to
# experiments/durr/runs/lite_seeds/<experiment>_s<seed>/results.json, then the tables print.
# Measured (2-core CPU shared with other jobs, nice 5, 1 thread): see the README's Cost.
# Usage: bash experiments/durr/lite_seeds.sh [DATA_DIR] [OUT_DIR] [SEEDS] [STUDIES]
#   e.g. bash experiments/durr/lite_seeds.sh ../shared/data logs/durr_lite_seeds "0 1 2" "jpeg denoise"
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-${ODELAB_DATA_DIR:-../shared/data}}
OUT=${2:-logs/durr_lite_seeds}
SEEDS=${3:-0 1 2}
STUDIES=${4:-jpeg denoise}
PY=${PYTHON:-.venv/bin/python}
KEEP=${KEEP:-experiments/durr/runs/lite_seeds}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=${WANDB_MODE:-offline}

one() {  # one() EXPERIMENT SEED
  local name="$1_s$2"
  if [[ -f "$KEEP/$name/results.json" ]]; then
    echo "kept already: $KEEP/$name (delete it to rerun)"
    return
  fi
  echo "$(date -u +%FT%TZ) start $name"
  "$PY" run.py experiment="$1" seed="$2" paths.data_dir="$DATA" logger=csv \
    hydra.run.dir="$OUT/$name"
  mkdir -p "$KEEP/$name"
  cp "$OUT/$name/results.json" "$KEEP/$name/results.json"
  echo "$(date -u +%FT%TZ) kept $KEEP/$name"
}

for study in $STUDIES; do
  for seed in $SEEDS; do
    one "durr_${study}_lite" "$seed"
    one "dncnn_${study}_lite" "$seed"
  done
  if [[ $study == denoise ]]; then
    one bm3d_denoise_lite 0
  fi
done
"$PY" -m odelab.report durr --view=lite_study --from "$KEEP"
