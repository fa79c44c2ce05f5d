"""DURR's CPU-scale studies over seeds: the README's tables and claim checks, rebuilt from the
kept ``results.json`` records (``lite_seeds.sh`` writes them).

A record's role comes from its model (``DURRModule``: DURR; ``FeedForwardRestorer``: the DnCNN of
the same size; ``BM3DBaseline``: BM3D) and its study from ``data.task`` (``denoise`` or
``jpeg``). Levels inside the DURR run's ``data.train_levels`` are *seen*, the others *unseen*;
degradation grows with sigma (denoise) and falls with the JPEG quality factor.

The paper's three claims, checked per seed and per test set:

- (a) the learned steps grow with the degradation: the mean learned steps never fall from one
  level to the next more degraded one, and the most degraded level gets more than the least;
- (b) at every unseen level the learned stopping beats the best fixed T (the single T best at
  ``model.ref_level``, on the same test images); beating the DnCNN of the same seed is listed
  beside it;
- (c) at every seen level the learned stopping is within 0.3 dB of the oracle T (the best
  single T per cell, non-blind).

The report's view ``lite_study`` (``python -m odelab.report durr --view=lite_study``) renders
them from ``experiments/durr/runs/lite_seeds``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

ROLES = {"DURRModule": "durr", "FeedForwardRestorer": "dncnn", "BM3DBaseline": "bm3d"}
ORACLE_GAP_DB = 0.3


def load_records(folder: str | Path) -> list[dict]:
    """Every results record (``*.json`` with ``restoration.cells``) under ``folder``."""
    out = []
    for path in sorted(Path(folder).rglob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "cells" in (data.get("restoration") or {}):
            out.append(data)
    return out


def _role(record: dict) -> str:
    target = record["config"]["model"]["_target_"].rsplit(".", 1)[-1]
    if target not in ROLES:
        raise ValueError(f"{record['experiment']}: model {target} is not DURR, DnCNN or BM3D")
    return ROLES[target]


def _cells(record: dict) -> dict[tuple[str, float], dict]:
    """``(set, level) -> cell`` from ``restoration.cells`` (keys such as ``BSD68_s25``)."""
    out = {}
    for group, cell in record["restoration"]["cells"].items():
        name, tag = group.rsplit("_", 1)
        out[(name, float(tag[1:]))] = cell
    return out


def _stat(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample std, n); std 0 for one value."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, len(values)


def study_rows(records: list[dict], task: str) -> list[dict]:
    """One row per (test set, level) of the ``task`` study, least degraded level first.

    Each row: ``set``, ``level``, ``seen``, then ``(mean, std, n)`` over the DURR seeds of
    ``psnr_input`` (the degraded input, T = 0 of the fixed-T curve), ``psnr`` (learned
    stopping), ``steps``, ``psnr_sched``, ``psnr_bestT``, ``psnr_oracle``; the per-seed lists
    ``oracle_T`` and ``best_T``; ``(mean, std, n)`` over the DnCNN seeds (``dncnn``) and the
    BM3D runs (``bm3d``), None where there is no such record.
    """
    mine = [r for r in records if r["config"]["data"]["task"] == task]
    by_role: dict[str, list[dict]] = {"durr": [], "dncnn": [], "bm3d": []}
    for r in sorted(mine, key=lambda r: r.get("seed") or 0):
        by_role[_role(r)].append(r)
    if not by_role["durr"]:
        return []
    lo, hi = by_role["durr"][0]["config"]["data"]["train_levels"]
    durr = [_cells(r) for r in by_role["durr"]]
    dncnn = [_cells(r) for r in by_role["dncnn"]]
    bm3d = [_cells(r) for r in by_role["bm3d"]]
    keys = sorted(durr[0], key=lambda k: (k[0], k[1] if task == "denoise" else -k[1]))
    rows = []
    for key in keys:
        row = {"set": key[0], "level": key[1], "seen": lo <= key[1] <= hi}
        row["psnr_input"] = _stat([c[key]["fixed_curve"][0] for c in durr])  # x_0 = y
        for name in ("psnr", "steps", "psnr_sched", "psnr_bestT", "psnr_oracle"):
            row[name] = _stat([c[key][name] for c in durr])
        row["oracle_T"] = [c[key]["oracle_T"] for c in durr]
        row["best_T"] = [c[key].get("best_T_ref") for c in durr]
        for name, runs in (("dncnn", dncnn), ("bm3d", bm3d)):
            vals = [c[key]["psnr"] for c in runs if key in c]
            row[name] = _stat(vals) if vals else None
        rows.append(row)
    return rows


def claims(records: list[dict], task: str) -> list[dict]:
    """Per DURR seed and test set: ``{seed, set, a, b, b_dncnn, c, steps, b_margin, c_gap}``
    (claims as booleans; the numbers behind them: mean steps from the least to the most
    degraded level, the learned - best-fixed-T margin at unseen levels, the oracle gap at seen
    levels; ``b_dncnn`` is None without a DnCNN record of that seed)."""
    mine = [r for r in records if r["config"]["data"]["task"] == task]
    dncnn = {r.get("seed"): _cells(r) for r in mine if _role(r) == "dncnn"}
    out = []
    for r in sorted((r for r in mine if _role(r) == "durr"), key=lambda r: r.get("seed") or 0):
        lo, hi = r["config"]["data"]["train_levels"]
        cells = _cells(r)
        for name in sorted({k[0] for k in cells}):
            levels = sorted(
                (k[1] for k in cells if k[0] == name), reverse=task != "denoise"
            )  # least degraded first
            c = {v: cells[(name, v)] for v in levels}
            steps = [c[v]["steps"] for v in levels]
            unseen = [v for v in levels if not lo <= v <= hi]
            seen = [v for v in levels if lo <= v <= hi]
            margin = [c[v]["psnr"] - c[v]["psnr_bestT"] for v in unseen]
            gap = [c[v]["psnr_oracle"] - c[v]["psnr"] for v in seen]
            d = dncnn.get(r.get("seed"))
            out.append(
                {
                    "seed": r.get("seed"),
                    "set": name,
                    "a": all(b >= a for a, b in zip(steps, steps[1:], strict=False))
                    and steps[-1] > steps[0],
                    "b": all(m > 0 for m in margin),
                    "b_dncnn": None
                    if d is None
                    else all(c[v]["psnr"] > d[(name, v)]["psnr"] for v in unseen),
                    "c": all(g <= ORACLE_GAP_DB for g in gap),
                    "steps": steps,
                    "unseen": unseen,
                    "b_margin": margin,
                    "seen": seen,
                    "c_gap": gap,
                }
            )
    return sorted(out, key=lambda c: (c["set"], c["seed"] or 0))


def _pm(stat: tuple[float, float, int] | None, digits: int = 2) -> str:
    if stat is None:
        return "-"
    mean, std, n = stat  # the same value in every seed (e.g. the degraded input): no "± 0"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 and std else f"{mean:.{digits}f}"


def _ts(ts: list) -> str:
    return ", ".join("-" if t is None else str(t) for t in ts)


def markdown_table(rows: list[dict], task: str) -> list[str]:
    """The study table (mean ± std over seeds; T per seed) as markdown lines."""
    lv = "sigma" if task == "denoise" else "QF"
    head = (
        f"| set | {lv} | input | DURR learned | learned steps | hand-set T({lv}) | "
        "best fixed T | best T (per seed) | oracle T | oracle T (per seed) | DnCNN | BM3D |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        tag = f"{r['level']:g}" + ("" if r["seen"] else " (unseen)")
        lines.append(
            f"| {r['set']} | {tag} | {_pm(r['psnr_input'])} | {_pm(r['psnr'])} | "
            f"{_pm(r['steps'], 1)} | "
            f"{_pm(r['psnr_sched'])} | {_pm(r['psnr_bestT'])} | {_ts(r['best_T'])} | "
            f"{_pm(r['psnr_oracle'])} | {_ts(r['oracle_T'])} | {_pm(r['dncnn'])} | "
            f"{_pm(r['bm3d'])} |"
        )
    return lines


def markdown_claims(rows: list[dict], task: str) -> list[str]:
    """Held / not held per seed and test set, with the numbers behind each verdict."""
    yes = {True: "held", False: "not held", None: "-"}
    lines = [
        "| set | seed | (a) steps grow | (b) beats best fixed T, unseen | (b) beats DnCNN, unseen "
        f"| (c) within {ORACLE_GAP_DB} dB of oracle, seen |",
        "|---|---|---|---|---|---|",
    ]
    for c in rows:
        steps = " → ".join(f"{s:.1f}" for s in c["steps"])
        margin = ", ".join(f"{m:+.2f}" for m in c["b_margin"])
        gap = ", ".join(f"{g:.2f}".replace("-0.00", "0.00") for g in c["c_gap"])
        lines.append(
            f"| {c['set']} | {c['seed']} | {yes[c['a']]} ({steps}) | {yes[c['b']]} ({margin} dB) "
            f"| {yes[c['b_dncnn']]} | {yes[c['c']]} ({gap} dB) |"
        )
    return lines


def lite_study(runs, out_dir: Path) -> str:
    """The ``lite_study`` view: per study (denoise, jpeg) the mean ± std table over seeds and the
    claim lines per seed, from the finished runs' records."""
    records = [{"experiment": r.experiment, "seed": r.seed, "config": r.config,
                "metrics": r.metrics, **r.extra} for r in runs
               if "cells" in (r.extra.get("restoration") or {})]  # fmt: skip
    out = []
    for task in ("denoise", "jpeg"):
        rows = study_rows(records, task)
        if not rows:
            continue
        seeds = sorted({r.get("seed") for r in records if r["config"]["data"]["task"] == task})
        out += [f"## {task} (seeds {seeds})", "", *markdown_table(rows, task), ""]
        out += [*markdown_claims(claims(records, task), task), ""]
    return "\n".join(out)
