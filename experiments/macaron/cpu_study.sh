#!/usr/bin/env bash
# CPU-scale study (spec Sec. 7.2): Macaron vs Transformer on Multi30k De->En at equal
# parameters (d 128, 4 heads, 2+2 layers, FFN 512 vs 2 x 256), 3 seeds each, scaled down to
# fit a 2-core machine shared with ~9 other agents (load average ~30; each niced run gets a
# few % of a core): the first 2,000 training pairs, the first 300 validation and 300 test
# pairs, max-tokens 1024, 3 epochs, warm-up 50 updates; validation loss and greedy BLEU every
# epoch; test: beam 5, lenpen 1.0. The six runs go in parallel, one thread each, niced.
# Usage: bash experiments/macaron/cpu_study.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-${ODELAB_DATA_DIR:-../shared/data}}
OUT=${2:-logs/macaron_cpu_study}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
# prepare (tokenise, BPE) once, so that the parallel runs share the cache
OMP_NUM_THREADS=1 "$PY" -c "
from odelab.data.translation import TranslationDataModule as T
T(corpus='multi30k', data_dir='$DATA', bpe_merges=3000, train_subset=2000, eval_subset=300,
  cache_dir='data/cache/translation').prepare_data()" > "$OUT/prepare.log" 2>&1
for exp in macaron_multi30k transformer_multi30k; do
  for seed in 0 1 2; do
    nohup nice -n 10 env OMP_NUM_THREADS=1 "$PY" run.py experiment=$exp seed=$seed \
      paths.data_dir="$DATA" data.train_subset=2000 data.eval_subset=300 data.max_tokens=1024 \
      model.scheduler.warmup_updates=50 trainer.max_epochs=3 \
      logger=csv +trainer.enable_progress_bar=false \
      hydra.run.dir="$OUT/${exp}_s$seed" > "$OUT/${exp}_s$seed.log" 2>&1 &
  done
done
wait
