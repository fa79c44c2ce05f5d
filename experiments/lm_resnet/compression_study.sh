#!/usr/bin/env bash
# CPU-scale parameter-compression study: LM-ResNet vs ResNet at depths 14 and 20 (widths
# 8/16/32) on a 5,000-image subset of the real CIFAR-10 training images, 4 epochs with cosine
# decay, tested on a fixed 2,000-image subset of the test split; seed 0; one thread, niced.
# Usage: bash experiments/lm_resnet/compression_study.sh [DATA_DIR] [SWEEP_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-${ODELAB_DATA_DIR:-../shared/data}}
OUT=${2:-logs/lm_resnet_compression}
PY=${PYTHON:-.venv/bin/python}
OMP_NUM_THREADS=1 "$PY" run.py -m experiment=${EXPERIMENTS:-lm_resnet20_cifar10,resnet20_cifar10} \
  model.net.depth=14,20 seed=0 data=cifar10 \
  paths.data_dir="$DATA" 'data.train_files=[data_batch_1,data_batch_2]' data.verify=off \
  data.train_subset=5000 data.test_subset=2000 \
  'model.net.widths=[8,16,32]' scheduler=cosine trainer.max_epochs=4 \
  trainer.accelerator=cpu data.num_workers=0 logger=csv hydra.sweep.dir="$OUT"
