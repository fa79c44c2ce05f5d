#!/usr/bin/env bash
# CPU-scale study of the mean-field ResNet theory (experiments/meanfield/README.md):
#   A  depth sweep L = 4, 16, 64 on digits: mean field (3 seeds), standard 1-scaled at the same
#      lr and at lr/10 (seed 0)
#   B  width sweep M = 4, 32, 128 at L = 16 (mean field, seed 0)
#   C  block order: fixed vs shuffle at L = 16, 3 seeds, mean field and standard (lr/10)
#   D  CIFAR-10 (real local subset), ResNet-20 layout at widths 8/16/32, M = 2, 2,000 training
#      images, 1,000 test images, 3 epochs: mean field vs standard, 3 seeds
# One thread per process, nice 10. About 25 min on a 2-core CPU shared with other jobs.
# Usage: [PARTS="A B C D"] [SEEDS="0 1 2"] bash experiments/meanfield/study.sh [DATA_DIR] [OUT_DIR]
# A sweep with a failed job (the diverging standard runs) does not stop the others.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-${ODELAB_DATA_DIR:-../shared/data}}
OUT=${2:-logs/meanfield_study}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1
PARTS=${PARTS:-A B C D}
run() { nice -n 10 "$PY" run.py -m logger=csv trainer.accelerator=cpu "$@" || echo "failed: $*"; }
part() { [[ " $PARTS " == *" $1 "* ]]; }
part A && run experiment=meanfield_digits_depth model.net.depth=4,16,64 seed=0,1,2 \
  hydra.sweep.dir="$OUT/A_mean_field"
part A && run experiment=meanfield_digits_depth model.net.depth=4,16,64 model.net.scaling=standard \
  model.optimizer.lr=0.05,0.005 hydra.sweep.dir="$OUT/A_standard"
# (rerun of A_standard's two diverging jobs after a fix to the test diagnostics)
part A2 && run experiment=meanfield_digits_depth model.net.depth=16,64 model.net.scaling=standard \
  model.optimizer.lr=0.05 hydra.sweep.dir="$OUT/A_standard_diverged"
part B && run experiment=meanfield_digits_depth model.net.units=4,128 hydra.sweep.dir="$OUT/B_width"
part C && run experiment=meanfield_digits_depth model.net.block_order=shuffle seed=0,1,2 \
  hydra.sweep.dir="$OUT/C_shuffle_mean_field"
part C && run experiment=meanfield_digits_depth model.net.scaling=standard model.optimizer.lr=0.005 \
  model.net.block_order=fixed,shuffle seed=0,1,2 hydra.sweep.dir="$OUT/C_standard"
# D: the six CIFAR runs in parallel, one seed each (a fairer CPU share on a busy machine);
# validation only at the end (it does not change training: the test uses the last weights)
cifar=(data=cifar10 model=meanfield_resnet paths.data_dir="$DATA"
  'data.train_files=[data_batch_1,data_batch_2]' data.verify=off data.train_subset=2000
  data.test_subset=1000 data.num_workers=0 'model.net.widths=[8,16,32]' model.net.units=2
  model.eval_permutations=5 scheduler=cosine trainer.max_epochs=3
  trainer.check_val_every_n_epoch=3)
if part D; then
  for exp in meanfield_resnet20_cifar10 meanfield_resnet20_cifar10_standard; do
    for seed in ${SEEDS:-0 1 2}; do
      run experiment=$exp seed=$seed "${cifar[@]}" hydra.sweep.dir="$OUT/D_${exp}_s$seed" &
    done
  done
  wait
fi
