"""What the ``slurm/`` scripts ask of a config: the job shape a run needs, and paper-table sweeps.

    python -m odelab.utils.slurm shape <overrides>  # "<nodes> <tasks> <gpus> <exp> <cpus>"
    python -m odelab.utils.slurm sweep <table>       # one Hydra multirun per line (its overrides)
    python -m odelab.utils.slurm check <table> [overrides]  # preflight every job of the table

A sweep file ``slurm/sweeps/<table>.yaml`` names the runs of one paper table::

    paper: lm_resnet
    table: "Table 1: CIFAR-10 test error, ResNet vs LM-ResNet"
    runs:            # each entry is one Hydra multirun: comma lists expand to their product
      - data=cifar10 experiment=resnet20_cifar10,lm_resnet20_cifar10 seed=0,1,2
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import yaml

from odelab.utils.config import REPO_ROOT, compose_config, gpus_per_node

SWEEPS_DIR = REPO_ROOT / "slurm" / "sweeps"


def _shape(overrides: list[str]) -> tuple[int, int, int, str, int]:
    launcher = [] if any(o.startswith("hydra/launcher=") for o in overrides) else [
        "hydra/launcher=slurm"]  # fmt: skip
    cfg = compose_config([*launcher, *overrides], return_hydra_config=True)
    devices = cfg.trainer.devices
    tasks = len(devices) if not isinstance(devices, (int, str)) else devices
    if not isinstance(tasks, int) or tasks < 1:
        raise ValueError(f"trainer.devices={devices!r}: give a number of devices for SLURM")
    partition = os.environ.get("SBATCH_PARTITION") or cfg.hydra.launcher.get("partition")
    gpus = gpus_per_node(cfg.trainer.accelerator, devices, partition) or 0
    cpus = cfg.hydra.launcher.get("cpus_per_task") or 1
    if not isinstance(cpus, int) or cpus < 1:
        raise ValueError(f"hydra.launcher.cpus_per_task={cpus!r}: give a number of CPUs >= 1")
    experiment = str(cfg.hydra.runtime.choices.experiment)
    return int(cfg.trainer.num_nodes), tasks, gpus, experiment, cpus


def job_shape(overrides: list[str]) -> tuple[int, int, int, str]:
    """(nodes, tasks per node, GPUs per node, experiment) of the run ``overrides`` compose:
    one task per device, ``trainer.num_nodes`` nodes; ``auto`` asks for GPUs only where the
    partition (``SBATCH_PARTITION``, else ``hydra.launcher.partition``) has some."""
    return _shape(overrides)[:4]


def job_cpus(overrides: list[str]) -> int:
    """CPUs per task for ``slurm/train.sbatch``: ``hydra.launcher.cpus_per_task`` of the SLURM
    launcher config (``conf/local/slurm.yaml`` sets it per cluster), as for a sweep job."""
    return _shape(overrides)[4]


def allocated_cpus() -> int | None:
    """The CPUs SLURM gave each task of this job (``SLURM_CPUS_PER_TASK``), ``None`` outside."""
    n = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(n) if os.environ.get("SLURM_JOB_ID") and n.isdigit() and int(n) > 0 else None


def use_allocated_cpus() -> int | None:
    """Inside a SLURM job: threads = the CPUs allocated per task (torch intra-op threads and
    ``OMP_NUM_THREADS`` for workers and child processes), whatever launched the job; else leave
    them. Returns the count set."""
    n = allocated_cpus()
    if n is None:
        return None
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def override_key(override: str) -> str:
    """The key an override sets (``+a.b=1`` -> ``a.b``, ``hydra/launcher=x`` -> itself)."""
    return override.split("=", 1)[0].lstrip("+~")


def refuse_repeated_keys(entry: str, extra: list[str]) -> None:
    """A table entry's keys may not be overridden by extra overrides: Hydra would keep one of
    the two silently (``seed=5`` after ``seed=0,1,2`` makes a 3-seed table one job)."""
    mine = {override_key(o): o for o in entry.split()}
    clash = [f"{o} (the table sets {mine[override_key(o)]})" for o in extra
             if override_key(o) in mine]  # fmt: skip
    if clash:
        raise ValueError(
            f"extra override(s) {'; '.join(clash)} would replace a key the table sets in "
            f"'{entry}'. Drop them, or copy the table to a file of your own and edit it "
            "there (slurm/sweep.sh path/to/table.yaml)"
        )


def check_table(table: str, extra: list[str]) -> list[str]:
    """Preflight every job of every entry of ``table`` with ``extra`` overrides (the launcher
    is ``hydra/launcher=slurm``, as ``slurm/sweep.sh`` runs it); every problem, one per line."""
    from odelab.preflight import check_points, sweep_points
    from odelab.utils.config import config_loader

    problems = []
    for i, entry in enumerate(load_sweep(table)["runs"]):
        try:
            refuse_repeated_keys(entry, extra)
        except ValueError as e:
            problems.append(f"entry {i}: {e}")
            continue
        overrides = ["hydra/launcher=slurm", *entry.split(), *extra]
        points = sweep_points(overrides, config_loader())
        found = check_points(points, lambda ov: compose_config(ov, return_hydra_config=True))
        problems += [f"entry {i}: {p}" for p in found]
    return problems


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
    if len(argv) < 2 or argv[0] not in ("shape", "sweep", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        if argv[0] == "shape":
            print(*_shape(argv[1:]))
        elif argv[0] == "check":
            problems = check_table(argv[1], argv[2:])
            if problems:
                from odelab.preflight import PreflightError

                err = PreflightError(problems, header="sweep preflight")
                print(
                    str(err).replace("nothing was run", "nothing was submitted"), file=sys.stderr
                )
                return 2
            print(f"preflight: every job of {argv[1]} passed")
        else:
            for run in load_sweep(argv[1])["runs"]:
                print(" ".join(run.split()))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


@functools.cache
def cluster_gpus(partition: str | None = None) -> int | None:
    """The most GPUs (``gres/gpu``) any node of ``partition`` has, from ``sinfo``; the default
    partition when ``partition`` is null; ``None`` when ``sinfo`` is missing or does not
    answer (then nothing is assumed)."""
    import re
    import shutil
    import subprocess

    if shutil.which("sinfo") is None:
        return None
    try:
        p = subprocess.run(
            ["sinfo", "-h", "-o", "%P|%G"], capture_output=True, text=True, timeout=15
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if p.returncode != 0 or not p.stdout.strip():
        return None
    rows = [line.split("|", 1) for line in p.stdout.splitlines() if "|" in line]
    if partition:
        rows = [r for r in rows if r[0].rstrip("*") == str(partition)]
    else:
        rows = [r for r in rows if r[0].endswith("*")] or rows
    if not rows:
        return None
    counts = [0]
    for _, gres in rows:
        for item in gres.split(","):
            m = re.match(r"gpu(?::[^:(]+)?:(\d+)", item.strip())
            if m:
                counts.append(int(m.group(1)))
    return max(counts)
