"""Table of the CPU-scale YOPO-5-10 vs PGD-40 run: robust accuracy against training time.

Reads ``<dir>/{yopo_mnist,pgd40_mnist}/time_curve.json`` (written by TrainClock) and prints each
curve, PGD-40's level (its best robust accuracy within the budget: its plateau when it has
one), the training time at which each arm first reaches that level, and their ratio.
Usage: python experiments/yopo/cpu_repro_table.py [DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ARMS = ("yopo_mnist", "pgd40_mnist")
KEY = "val/robust_acc"


def first_time_at(curve: list[dict], level: float) -> float | None:
    """Training time of the first evaluation with robust accuracy >= level (None: never)."""
    return next((p["train_s"] for p in curve if p[KEY] >= level - 1e-9), None)


def main(folder: str | Path) -> dict:
    folder = Path(folder)
    curves = {a: json.loads((folder / a / "time_curve.json").read_text()) for a in ARMS}
    for arm, curve in curves.items():
        print(f"## {arm}")
        print("| train CPU s | optimiser steps | clean acc | PGD-40 acc |")
        print("|---|---|---|---|")
        for p in curve:
            print(f"| {p['train_s']:.1f} | {p['step']} | {100 * p['val/acc']:.1f} | "
                  f"{100 * p[KEY]:.1f} |")  # fmt: skip
    pgd = curves["pgd40_mnist"]
    plateau = max(p[KEY] for p in pgd)
    t = {a: first_time_at(c, plateau) for a, c in curves.items()}
    best = {a: max(p[KEY] for p in c) for a, c in curves.items()}
    print(f"PGD-40 level (its best robust accuracy in the budget): {100 * plateau:.1f} %")
    for a in ARMS:
        when = "never" if t[a] is None else f"{t[a]:.1f} s"
        print(f"{a}: reaches it at {when}; best robust acc {100 * best[a]:.1f} %")
    ratio = None if None in t.values() else t["yopo_mnist"] / t["pgd40_mnist"]
    print("ratio time-to-level yopo-5-10/pgd-40 " + ("n/a" if ratio is None else f"{ratio:.2f}"))
    return {"plateau": plateau, "t": t, "ratio": ratio, "best": best}


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "experiments/yopo/runs/cpu_repro")
