#!/usr/bin/env bash
# CPU-scale study: LM-ResNet-20 vs ResNet-20 at widths 8/16/32 on the real CIFAR-10 subset
# (20,000 training images, the full 10,000-image test split), 15 epochs with cosine decay,
# 3 seeds each, on the paper's code path and recipe otherwise. About 55 min on 2 CPU cores.
# Usage: bash experiments/lm_resnet/cpu_study.sh [DATA_DIR] [SWEEP_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-${ODELAB_DATA_DIR:-../shared/data}}
OUT=${2:-logs/lm_resnet_cpu_study}
PY=${PYTHON:-.venv/bin/python}
"$PY" run.py -m experiment=lm_resnet20_cifar10,resnet20_cifar10 seed=0,1,2 data=cifar10 \
  paths.data_dir="$DATA" 'data.train_files=[data_batch_1,data_batch_2]' data.verify=off \
  'model.net.widths=[8,16,32]' scheduler=cosine trainer.max_epochs=15 \
  trainer.accelerator=cpu data.num_workers=0 logger=csv hydra.sweep.dir="$OUT"
