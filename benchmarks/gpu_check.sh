#!/usr/bin/env bash
# GPU checks for the foundation (one script, one lease): CUDA runs of the real run path in fp32 and
# bf16-mixed, LM-step overhead, and LM-ResNet epoch time on full-size CIFAR-10-format data
# (synthetic pixels in the canonical pickle format: timing only, no accuracy claims).
# Usage on a GPU machine: OUT=<dir> bash benchmarks/gpu_check.sh
# (expects torch, lightning, hydra-core, omegaconf importable; see benchmarks/README.md).
set -uo pipefail
OUT=${OUT:-/tmp/odelab-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, lightning, hydra; print('torch', torch.__version__, 'lightning', lightning.__version__, 'hydra', hydra.__version__)" | tee -a "$OUT/gpu.txt"
D=/tmp/odelab-cifar
python3 -c "import sys; sys.path.insert(0, 'tests'); from canonical_data import write_cifar10; write_cifar10('$D', n_per_batch=10000)"
python3 benchmarks/lm_step_overhead.py --depths 20 56 110 --steps 30 --warmup 10 | tee "$OUT/bench.txt"
python3 benchmarks/lm_step_overhead.py --depths 56 --steps 30 --warmup 10 --precision bf16 --channels-last | tee -a "$OUT/bench.txt"
for prec in 32-true bf16-mixed; do
  python3 run.py experiment=lm_resnet56_cifar10 trainer=gpu trainer.precision=$prec \
    trainer.max_epochs=3 logger=csv paths.data_dir=$D data.num_workers=8 \
    hydra.run.dir="$OUT/r56_$prec" > "$OUT/r56_$prec.log" 2>&1
  echo "lm_resnet56 $prec rc=$?"
  python3 - "$OUT/r56_$prec/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(r["status"], r["hardware"].get("gpu"), r["hardware"]["precision"],
      "epoch_s(last)=%.2f" % r["metrics"]["time/train_epoch_s"],
      "test/acc=%.4f" % r["metrics"]["test/acc"], "train_time_s=%.1f" % r["train_time_s"])
PY
done | tee -a "$OUT/summary.txt"
python3 run.py trainer=gpu logger=csv hydra.run.dir="$OUT/default" > "$OUT/default.log" 2>&1
echo "default experiment rc=$?" | tee -a "$OUT/summary.txt"
python3 -c "import json; r=json.load(open('$OUT/default/results.json')); print('default', r['status'], r['metrics']['test/acc'], r['train_time_s'])" | tee -a "$OUT/summary.txt"
