#!/usr/bin/env bash
# CPU-scale YOPO-5-10 vs PGD-40 on real MNIST: all 60,000 training images; clean and PGD-40
# accuracy on a fixed 200-image subset of the test split every few steps. The same training
# budget for both arms, BUDGET_S seconds of process CPU time spent in training batches
# (evaluation is outside the clock; CPU time, not wall time, because the machine is shared).
# One thread each; the two arms run side by side. Paper recipes (yopo_mnist, pgd40_mnist)
# except, to fit minutes of CPU: SmallCNN at quarter width (8, 16, 50), batch 128, eps 0.1
# (attack and evaluation step 0.01; at 0.3 and 0.2 both arms stayed at chance for the first
# 20-30 CPU-s here), and YOPO's lr 0.1/K = 0.02 (the official value before commit 82c5b90).
# Usage: bash experiments/yopo/cpu_repro.sh [DATA_DIR] [OUT_DIR] [BUDGET_S]
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-${ODELAB_DATA_DIR:-../shared/data}}
OUT=${2:-logs/yopo_cpu_repro}
BUDGET=${3:-50}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT"
common=(paths.data_dir="$DATA" data.verify=off data.test_subset=200 data.eval_batch_size=200
  data.batch_size=128 data.num_workers=0 model.net.width=0.25 model.eps=0.1
  trainer.accelerator=cpu trainer.min_epochs=0 trainer.check_val_every_n_epoch=null
  callbacks.train_clock.max_train_s="$BUDGET" callbacks.train_clock.clock=process logger=csv
  seed=0)
"$PY" run.py experiment=yopo_mnist "${common[@]}" model.optimizer.lr=0.02 \
  +trainer.val_check_interval=10 hydra.run.dir="$OUT/yopo_mnist" > "$OUT/yopo.log" 2>&1 &
"$PY" run.py experiment=pgd40_mnist "${common[@]}" +trainer.val_check_interval=6 \
  hydra.run.dir="$OUT/pgd40_mnist" > "$OUT/pgd40.log" 2>&1 &
wait
