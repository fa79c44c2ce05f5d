"""What the ``slurm/`` scripts ask of a config: the job shape a run needs, and paper-table sweeps.

    python -m odelab.utils.slurm shape <overrides>  # "<nodes> <tasks/node> <gpus/node> <exp>"
    python -m odelab.utils.slurm sweep <table>       # one Hydra multirun per line (its overrides)

A sweep file ``slurm/sweeps/<table>.yaml`` names the runs of one paper table::

    paper: lm_resnet
    table: "Table 1: CIFAR-10 test error, ResNet vs LM-ResNet"
    runs:            # each entry is one Hydra multirun: comma lists expand to their product
      - data=cifar10 experiment=resnet20_cifar10,lm_resnet20_cifar10 seed=0,1,2
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from odelab.utils.config import REPO_ROOT, compose_config, gpus_per_node

SWEEPS_DIR = REPO_ROOT / "slurm" / "sweeps"


def job_shape(overrides: list[str]) -> tuple[int, int, int, str]:
    """(nodes, tasks per node, GPUs per node, experiment) of the run ``overrides`` compose:
    one task per device, ``trainer.num_nodes`` nodes."""
    cfg = compose_config(list(overrides), return_hydra_config=True)
    devices = cfg.trainer.devices
    tasks = len(devices) if not isinstance(devices, (int, str)) else devices
    if not isinstance(tasks, int) or tasks < 1:
        raise ValueError(f"trainer.devices={devices!r}: give a number of devices for SLURM")
    gpus = gpus_per_node(cfg.trainer.accelerator, devices) or 0
    return int(cfg.trainer.num_nodes), tasks, gpus, str(cfg.hydra.runtime.choices.experiment)


def sweep_file(table: str) -> Path:
    """``slurm/sweeps/<table>.yaml``, or ``table`` itself when it is a path to a file."""
    path = Path(table)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    path = SWEEPS_DIR / f"{table}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
        raise ValueError(f"no sweep '{table}': tables are {known} (files in {SWEEPS_DIR})")
    return path


def load_sweep(table: str) -> dict:
    """The sweep file, checked: ``paper``, ``table`` and a non-empty ``runs`` list of strings."""
    path = sweep_file(table)
    data = yaml.safe_load(path.read_text()) or {}
    missing = [k for k in ("paper", "table", "runs") if not data.get(k)]
    if missing:
        raise ValueError(f"{path}: missing {missing}; see the format in slurm/README.md")
    bad = [r for r in data["runs"] if not isinstance(r, str) or "experiment=" not in r]
    if bad:
        raise ValueError(f"{path}: every run must be a string naming experiment=...; got {bad}")
    return data


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("shape", "sweep"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        if argv[0] == "shape":
            print(*job_shape(argv[1:]))
        else:
            for run in load_sweep(argv[1])["runs"]:
                print(" ".join(run.split()))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
