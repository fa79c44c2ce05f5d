"""Summarise the CPU-scale study: Macaron vs Transformer on Multi30k, mean +- std over seeds.

Usage: python experiments/macaron/cpu_study_table.py [DIR]  (default logs/macaron_cpu_study)
Reads ``<run>/results.json`` of the study's runs, or the copies kept in
experiments/macaron/runs/cpu_study (``<run>.json``), and prints a markdown table.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

COLUMNS = [
    ("val/loss", "val loss (LS-CE)", 3),
    ("val/nll", "val NLL (nats/token)", 3),
    ("val/bleu", "val tok-lc BLEU (greedy)", 2),
    ("val/sacrebleu", "val sacreBLEU -lc (greedy)", 2),
    ("test/bleu", "test tok-lc BLEU (beam 5)", 2),
    ("test/sacrebleu", "test sacreBLEU -lc (beam 5)", 2),
]


def _ms(xs: list[float], digits: int) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else float("nan")
    return f"{statistics.mean(xs):.{digits}f} ± {sd:.{digits}f}"


def main(folder: Path) -> None:
    runs = defaultdict(list)
    for f in sorted([*folder.glob("*/results.json"), *folder.glob("*.json")]):
        r = json.loads(f.read_text())
        if r.get("status") != "finished":
            print(f"skipped (status {r.get('status')}): {f}")
            continue
        runs[r["experiment"]].append(r)
    head = " | ".join(c[1] for c in COLUMNS)
    print(f"| experiment | seeds | {head} | s/epoch (fit) |")
    print("|---|---|" + "---|" * len(COLUMNS) + "---|")
    for exp, rs in sorted(runs.items()):
        cells = [_ms([r["metrics"][k] for r in rs], d) for k, _, d in COLUMNS]
        t = statistics.mean(r["train_time_s"] / max(r["epochs"], 1) for r in rs)
        print(f"| {exp} | {len(rs)} | " + " | ".join(cells) + f" | {t:.0f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "logs/macaron_cpu_study"))
