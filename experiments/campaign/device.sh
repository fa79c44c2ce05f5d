#!/usr/bin/env bash
# On a lent GPU machine, in the repository root (the device tool's copy of the working tree):
# install the carried wheels, unpack the carried data parts, run a campaign plan.
#   bash experiments/campaign/device.sh unpack                       # data parts only
#   bash experiments/campaign/device.sh PLAN [odelab.campaign run options, e.g. --budget-min 9]
# The recipe (what to carry in which call): experiments/campaign/README.md.
set -uo pipefail
export PYTHONUNBUFFERED=1 WANDB_MODE=offline
OUT=${OUT:-/tmp/campaign-out}
SITE=/tmp/odelab-site
if [ -d .device/wheels ] && [ ! -f "$SITE/.done" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .device/wheels/*.whl && touch "$SITE/.done" || { echo "wheels failed"; exit 3; }
fi
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
MANIFEST=$(ls .device/*/manifest.json 2>/dev/null | head -1)
if [ -n "$MANIFEST" ]; then  # no .git travels: the commit the parts were made at
  ODELAB_GIT_COMMIT=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['commit'])" "$MANIFEST")
  export ODELAB_GIT_COMMIT
  python3 -m odelab.campaign unpack .device || exit 4
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, lightning, hydra; print('torch', torch.__version__, 'lightning', lightning.__version__, 'hydra', hydra.__version__)"
[ "${1:-}" = unpack ] && exit 0
PLAN=$1
shift
exec python3 -m odelab.campaign run "$PLAN" --out "$OUT" --skip-missing-data \
  --resume-from .device/resume "$@"
