"""YOPO's report plot (the ``odelab.report`` extension point): robust accuracy vs training time.

``results_robust_acc_vs_time.png``: per dataset, the validation robust accuracy (solid) and
clean accuracy (dashed) of every run against its training time, from the ``time_curve.json``
that :class:`~odelab.callbacks.TrainClock` writes next to ``results.json`` (one curve per run,
one colour per method/config); the paper's end points (robust accuracy at the end of training,
``time/train_s``, from ``reference.yaml``) as crosses. The paper's times are GPU times, ours
are whatever the run's clock measured (the axis label names it): compare shapes, not seconds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from odelab.report.plots import finish, group_label, pyplot
from odelab.report.table import PaperReport

log = logging.getLogger(__name__)

ROBUST, CLEAN = "val/robust_acc", "val/acc"


def _dataset(experiment: str, config: dict | None) -> str:
    return str((config or {}).get("dataset") or experiment.rsplit("_", 1)[-1])


def time_curves(report: PaperReport) -> list[dict]:
    """One entry per run with a ``time_curve.json``: ``{experiment, label, seed, dataset,
    clock, t, robust, clean}`` (lists in the file's order; a point without a key is skipped)."""
    out = []
    for g in report.groups:
        for run in g.runs:
            path = run.file("time_curve.json")
            if path is None:
                log.info("yopo: %s (seed %s) kept no time_curve.json: no curve", g.experiment,
                         run.seed)  # fmt: skip
                continue
            points = json.loads(path.read_text())
            clock = ((run.config or {}).get("callbacks") or {}).get("train_clock") or {}
            out.append({
                "experiment": g.experiment,
                "label": group_label(g),
                "seed": run.seed,
                "dataset": _dataset(g.experiment, run.config),
                "clock": clock.get("clock", "wall"),
                "t": [p["train_s"] for p in points if ROBUST in p],
                "robust": [p[ROBUST] for p in points if ROBUST in p],
                "t_clean": [p["train_s"] for p in points if CLEAN in p],
                "clean": [p[CLEAN] for p in points if CLEAN in p],
            })  # fmt: skip
    return out


def paper_end_points(report: PaperReport) -> list[dict]:
    """``{experiment, dataset, t, robust}`` for every setting with both paper values."""
    out = []
    for name, setting in (report.reference.get("settings") or {}).items():
        m = (setting or {}).get("metrics") or {}
        t, acc = (m.get("time/train_s") or {}).get("value"), (m.get("test/robust_acc") or {})
        if t is not None and acc.get("value") is not None:
            out.append({"experiment": name, "dataset": _dataset(name, None), "t": float(t),
                        "robust": float(acc["value"])})  # fmt: skip
    return out


def plot_robust_vs_time(report: PaperReport, out_dir: Path) -> Path | None:
    curves = time_curves(report)
    if not curves:
        return None
    datasets = list(dict.fromkeys(c["dataset"] for c in curves))
    ends = [p for p in paper_end_points(report) if p["dataset"] in datasets]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.5), squeeze=False)
    colors: dict[str, str] = {}
    for ax, ds in zip(axes[0], datasets):
        for c in (c for c in curves if c["dataset"] == ds):
            color = colors.setdefault(c["label"], f"C{len(colors) % 10}")
            ax.plot(c["t"], c["robust"], "-o", ms=3, color=color,
                    label=f"{c['label']} seed {c['seed']}: robust")  # fmt: skip
            ax.plot(c["t_clean"], c["clean"], "--", color=color, alpha=0.6,
                    label=f"{c['label']} seed {c['seed']}: clean")  # fmt: skip
        for p in (p for p in ends if p["dataset"] == ds):
            ax.plot([p["t"]], [p["robust"]], "x", ms=9, mew=2, color="k", ls="none",
                    label=f"paper {p['experiment']}: robust, end (GPU)")  # fmt: skip
            ax.annotate(p["experiment"], (p["t"], p["robust"]), fontsize=7,
                        xytext=(-4, 5), textcoords="offset points", ha="right")  # fmt: skip
        clocks = sorted({c["clock"] for c in curves if c["dataset"] == ds})
        ax.set_xscale("log")
        ax.set_xlabel(f"training time (s; ours: {'/'.join(clocks)} clock, eval excluded)")
        ax.set_ylabel("accuracy (fraction): robust solid, clean dashed")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)
        if ax is not axes[0][-1]:
            ax.set_title(ds, fontsize=10)
            ax.legend(fontsize=7, loc="best")
    title = f"YOPO: accuracy vs training time ({datasets[-1]})"
    return finish(fig, axes[0][-1], title, out_dir / "results_robust_acc_vs_time.png")


def plots(report: PaperReport, out_dir: Path) -> list[Path]:
    return [p for p in (plot_robust_vs_time(report, out_dir),) if p]
