#!/usr/bin/env bash
# CPU-scale study of DURR's claims (experiments/durr/README.md), one seed (0):
#   durr_denoise_lite  (7,265-parameter recurrent restorer, 400 stage-1 + 600 DQN batches),
#   a DnCNN of the same size (5 layers x 16 channels with BN, 7,313 parameters, 400 batches on
#   the same patches, the same lr schedule), and BM3D (true sigma),
# all tested on the same 10 BSD68 96x96 centre crops at sigma 15, 25, 35, 45, 55.
# Measured: about 23 min wall on a 2-core CPU shared with ~9 other jobs (nice 10, 1 thread):
# DURR lite 17 min, DnCNN 1 min, BM3D 4 min, plus start-up.
# Usage: bash experiments/durr/cpu_study.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-${ODELAB_DATA_DIR:-../shared/data}}
OUT=${2:-logs/durr_cpu_study}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=${WANDB_MODE:-offline}
COMMON=(paths.data_dir="$DATA" logger=csv trainer.accelerator=cpu seed=0)
SAME_DATA=(data.train_levels=[10,35] data.patch_size=32 data.batch_size=16
  data.patches_per_epoch=3200 data.test_sets=[BSD68] data.test_levels=[15,25,35,45,55]
  data.test_subset=10 data.test_crop=96 data.eval_batch_size=10 data.val_levels=[15,35]
  data.val_subset=2 data.val_crop=64 data.num_workers=0)
"$PY" run.py experiment=durr_denoise_lite "${COMMON[@]}" hydra.run.dir="$OUT/durr_denoise_lite"
"$PY" run.py experiment=dncnn_denoise "${COMMON[@]}" "${SAME_DATA[@]}" model.net.depth=5 \
  model.net.channels=16 model.optimizer.lr=2e-3 'model.scheduler.milestones=[1]' \
  trainer.max_epochs=2 hydra.run.dir="$OUT/dncnn_denoise_small"
"$PY" run.py experiment=bm3d_denoise "${COMMON[@]}" "${SAME_DATA[@]}" hydra.run.dir="$OUT/bm3d_denoise"
mkdir -p experiments/durr/runs/cpu_study
for r in durr_denoise_lite dncnn_denoise_small bm3d_denoise; do
  cp "$OUT/$r/results.json" "experiments/durr/runs/cpu_study/$r.json"
done
"$PY" experiments/durr/cpu_study_table.py experiments/durr/runs/cpu_study
