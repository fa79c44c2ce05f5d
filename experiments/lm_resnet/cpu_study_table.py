"""Summarise the CPU-scale study: test accuracy mean +- std over seeds, and the learned k_n.

Usage: python experiments/lm_resnet/cpu_study_table.py [SWEEP_DIR]  (logs/lm_resnet_cpu_study)
Reads the results.json files of a sweep, or the copies kept in
experiments/lm_resnet/runs/cpu_study, and prints markdown tables.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def main(sweep: Path) -> None:
    runs = defaultdict(list)
    # a sweep directory (<n>_<experiment>/results.json) or a folder of copies (<n>_<exp>.json)
    for f in sorted([*sweep.glob("*/results.json"), *sweep.glob("*.json")]):
        r = json.loads(f.read_text())
        if r["status"] != "finished":
            print(f"skipped (status {r['status']}): {f}")
            continue
        runs[r["experiment"]].append(r)
    print("| experiment | seeds | test acc (%) mean ± std | per seed | s/epoch (fit) |")
    print("|---|---|---|---|---|")
    for exp, rs in sorted(runs.items()):
        accs = [100 * r["metrics"]["test/acc"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        per = ", ".join(f"{a:.2f} (s{r['seed']})" for a, r in zip(accs, rs))
        t = statistics.mean(r["train_time_s"] / max(r["epochs"], 1) for r in rs)
        print(f"| {exp} | {len(rs)} | {statistics.mean(accs):.2f} ± {sd:.2f} | {per} | {t:.0f} |")
    for exp, rs in sorted(runs.items()):
        if not rs[0].get("k"):
            continue
        blocks = sorted(rs[0]["k"], key=int)
        print(f"\nLearned k_n, {exp} (init U(-0.1, 0)); one row per seed:\n")
        print("| seed | " + " | ".join(f"block {b}" for b in blocks) + " |")
        print("|---|" + "---|" * len(blocks))
        for r in rs:
            ks = " | ".join(f"{r['k'][b][0]:+.3f}" for b in blocks)
            print(f"| {r['seed']} | {ks} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "logs/lm_resnet_cpu_study"))
