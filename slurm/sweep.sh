#!/usr/bin/env bash
# A whole paper table on SLURM, one command (from the repository root):
#
#   slurm/sweep.sh lm_resnet_cifar10_table              # slurm/sweeps/<table>.yaml
#   slurm/sweep.sh lm_resnet_cifar10_table hydra.launcher.partition=gpu   # extra overrides
#   slurm/sweep.sh --dry-run lm_resnet_cifar10_table    # check every job, print the commands
#   slurm/sweep.sh --list
#
# First every job of every entry is composed and checked (odelab.preflight: values, unknown keys,
# data, checkpoints, GPUs in the partition; an extra override may not repeat a key the table
# sets): nothing is submitted unless all pass. Then every entry of the table's `runs` becomes `python run.py -m hydra/launcher=slurm <entry>
# <extra overrides>` (one SLURM job per point of the entry's product), all entries submitted at
# once. Each launcher waits for its jobs and prints their results, so run this in tmux/screen or
# with nohup; stopping it does not cancel jobs already submitted. Outputs go to
# $ODELAB_LOG_DIR/sweeps/<table>/<time>/<entry>/<job>_<experiment>/ (results.json per job).
# Set ODELAB_SWEEP_DIR to an earlier sweep's <time> dir to rerun it in place: finished jobs say
# so and are skipped (retest=true tests them again), unfinished ones resume from their
# checkpoints (auto_resume).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${ODELAB_PYTHON:-$ROOT/.venv/bin/python}
cd "$ROOT"

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
if [ "${1:-}" = "--list" ] || [ -z "${1:-}" ]; then
  echo "usage: slurm/sweep.sh [--dry-run] <table | path/to/sweep.yaml> [overrides...]; tables:"
  for f in slurm/sweeps/*.yaml; do echo "  $(basename "$f" .yaml)"; done
  [ -n "${1:-}" ]; exit $?
fi
TABLE=$1; shift
"$PY" -m odelab.utils.slurm check "$TABLE" "$@" || exit 2
mapfile -t RUNS < <("$PY" -m odelab.utils.slurm sweep "$TABLE")
[ ${#RUNS[@]} -gt 0 ] || exit 2
NAME=$(basename "$TABLE" .yaml)
DIR=${ODELAB_SWEEP_DIR:-${ODELAB_LOG_DIR:-$ROOT/logs}/sweeps/$NAME/$(date +%Y-%m-%d_%H-%M-%S)}

pids=()
for i in "${!RUNS[@]}"; do
  read -ra ARGS <<< "${RUNS[$i]}"
  CMD=("$PY" run.py -m hydra/launcher=slurm "${ARGS[@]}" "hydra.sweep.dir=$DIR/$i" "$@")
  echo "sweep $NAME [$i]: ${CMD[*]}"
  [ $DRY = 1 ] && continue
  mkdir -p "$DIR/$i"
  "${CMD[@]}" > "$DIR/$i/launcher.log" 2>&1 &
  pids+=($!)
done
[ $DRY = 1 ] && exit 0
echo "sweep $NAME: ${#pids[@]} launcher(s) running; logs in $DIR/*/launcher.log"
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
echo "sweep $NAME: done (exit $rc); results: $DIR/*/*/results.json"
exit $rc
