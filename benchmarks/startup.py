"""Start-up cost: ``python run.py --help`` and ``python run.py experiment=...`` to its first step.

Wall times of both, plus the slowest imports of each (``python -X importtime``).

The first step is stamped by ``odelab.callbacks.FirstStepStamp`` (added with a ``+callbacks``
override), so the time covers interpreter start, imports, config composition, instantiation of
data/model/callbacks/loggers/trainer, data loading and Lightning's setup. Best of ``--repeats``.
Prints e.g.

    startup help_s 1.21
    startup first_step_s lm_resnet_mnist 9.84
    ratio first_step/help 8.1

Usage: python benchmarks/startup.py [--experiment lm_resnet_mnist] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, Unix start time, stderr) of one subprocess run."""
    t0u, t0 = time.time(), time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return dt, t0u, p.stderr


def slowest_imports(stderr: str, n: int = 8) -> list[tuple[float, str]]:
    """Top-level packages by cumulative import time from ``-X importtime`` output."""
    rows = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| ( *)(\S+)", line)
        if m and len(m.group(2)) <= 2:  # top-level and first nesting level
            rows.append((int(m.group(1)) / 1e6, m.group(3)))
    return sorted(rows, reverse=True)[:n]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="lm_resnet_mnist")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("overrides", nargs="*", help="extra run.py overrides")
    a = p.parse_args()
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    py = sys.executable
    help_s = min(timed([py, "run.py", "--help"], env)[0] for _ in range(a.repeats))
    tmp = Path(tempfile.mkdtemp(prefix="odelab-startup-"))
    first = []
    for i in range(a.repeats):
        stamp = tmp / f"first_step_{i}.txt"
        cmd = [py, "run.py", f"experiment={a.experiment}", "debug=fdr", "logger=none",
               "+callbacks.first_step._target_=odelab.callbacks.FirstStepStamp",
               f"+callbacks.first_step.path={stamp}", f"hydra.run.dir={tmp}/run{i}",
               *a.overrides]  # fmt: skip
        total, t0u, _ = timed(cmd, env)
        first.append((float(stamp.read_text()) - t0u, total))
    first_s, total_s = min(first)
    _, _, imp_help = timed([py, "-X", "importtime", "run.py", "--help"], env)
    cmd = [py, "-X", "importtime", "run.py", f"experiment={a.experiment}", "debug=fdr",
           "logger=none", f"hydra.run.dir={tmp}/imports", *a.overrides]  # fmt: skip
    _, _, imp_run = timed(cmd, env)
    print("slowest imports, run.py --help:")
    for s, name in slowest_imports(imp_help):
        print(f"  {s:6.2f} s  {name}")
    print(f"slowest imports, run.py experiment={a.experiment}:")
    for s, name in slowest_imports(imp_run):
        print(f"  {s:6.2f} s  {name}")
    print(f"startup help_s {help_s:.2f}")
    print(f"startup first_step_s {a.experiment} {first_s:.2f} (whole fdr run {total_s:.2f} s)")
    print(f"ratio first_step/help {first_s / help_s:.1f}")


if __name__ == "__main__":
    main()
