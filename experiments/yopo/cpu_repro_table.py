"""Table of the CPU-scale YOPO-5-10 vs PGD-40 run: robust accuracy against training time.

Reads ``<dir>/<arm>/time_curve.json`` (written by TrainClock) for the YOPO arm ``yopo_mnist``
and every PGD-40 arm ``pgd40_mnist*`` (the repo's lr, and any other lr the run tried), prints
each curve, PGD-40's level (the best robust accuracy any PGD-40 arm reached within the budget:
its plateau when it has one), the training time at which each arm first reaches that level, and
the ratio of YOPO's time to the fastest PGD-40 arm's.
Usage: python experiments/yopo/cpu_repro_table.py [DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

YOPO = "yopo_mnist"
KEY = "val/robust_acc"
LEVELS = (0.5, 0.75, 0.85)


def first_time_at(curve: list[dict], level: float) -> float | None:
    """Training time of the first evaluation with robust accuracy >= level (None: never)."""
    return next((p["train_s"] for p in curve if p[KEY] >= level - 1e-9), None)


def main(folder: str | Path) -> dict:
    folder = Path(folder)
    pgd_arms = sorted(p.parent.name for p in folder.glob("pgd40_mnist*/time_curve.json"))
    if not pgd_arms or not (folder / YOPO / "time_curve.json").is_file():
        raise SystemExit(f"{folder}: need {YOPO}/ and pgd40_mnist*/ with time_curve.json")
    arms = [YOPO, *pgd_arms]
    curves = {a: json.loads((folder / a / "time_curve.json").read_text()) for a in arms}
    for arm, curve in curves.items():
        print(f"## {arm}")
        print("| train CPU s | full passes | layer-one passes | clean acc | PGD-40 acc |")
        print("|---|---|---|---|---|")
        for p in curve:
            print(f"| {p['train_s']:.1f} | {p['full_bwd']} | {p['layer_one_bwd']} | "
                  f"{100 * p['val/acc']:.1f} | {100 * p[KEY]:.1f} |")  # fmt: skip
    best = {a: max(p[KEY] for p in c) for a, c in curves.items()}
    plateau = max(best[a] for a in pgd_arms)
    t = {a: first_time_at(c, plateau) for a, c in curves.items()}
    print(f"PGD-40 level (best robust accuracy of any PGD-40 arm in the budget): "
          f"{100 * plateau:.1f} %")  # fmt: skip
    for a in arms:
        when = "never" if t[a] is None else f"{t[a]:.1f} s"
        print(f"{a}: reaches it at {when}; best robust acc {100 * best[a]:.1f} %")
    for level in LEVELS:  # the same question at fixed levels: less sensitive to one evaluation
        when = {a: first_time_at(c, level) for a, c in curves.items()}
        print(
            f"time to {100 * level:.0f} % robust: "
            + ", ".join(f"{a} {'never' if when[a] is None else f'{when[a]:.1f} s'}" for a in arms)
        )
    pgd_times = [t[a] for a in pgd_arms if t[a] is not None]
    ratio = None if t[YOPO] is None else t[YOPO] / min(pgd_times)
    print("ratio time-to-level yopo-5-10/pgd-40 " + ("n/a" if ratio is None else f"{ratio:.2f}"))
    return {"plateau": plateau, "t": t, "ratio": ratio, "best": best}


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "experiments/yopo/runs/cpu_repro")
