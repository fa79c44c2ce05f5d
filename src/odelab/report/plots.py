"""Plots next to ``results.md``: one generic chart per metric, plus each paper's own.

Extension point: a paper adds ``src/odelab/papers/<paper>/report.py`` with

    def plots(report: odelab.report.table.PaperReport, out_dir: pathlib.Path) -> list[Path]

which writes its figures (``results_<what>.png``: robust accuracy vs time, rollout error
bands, BLEU per setting, ...) into ``out_dir`` and returns their paths (the W&B summary run
logs each as ``report/plots/results_<what>``); optionally ``RUN_LOCAL_KEYS = (...)``: more
dotted config keys (fnmatch patterns) that do not change what a run computes.
``report.groups`` holds the finished runs (``Group.runs``: :class:`~odelab.report.runs.Run`
with ``metrics``, ``config``, ``extra`` = everything else of results.json, and ``file(name)``:
a file the run kept beside its record, e.g. ``time_curve.json``), ``Group.recipe`` says
whether they used the recipe; ``report.rows`` / ``report.variant_rows`` are the table lines.
A plot whose input files no run kept is simply not drawn (never a placeholder curve).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
from pathlib import Path
from types import ModuleType

from odelab.report.table import Group, PaperReport

log = logging.getLogger(__name__)


def paper_hooks(paper: str) -> ModuleType | None:
    """``odelab.papers.<paper>.report`` if the paper has one."""
    name = f"odelab.papers.{paper}.report"
    try:
        if importlib.util.find_spec(name) is None:
            return None
    except ModuleNotFoundError:  # no odelab.papers.<paper> package at all
        return None
    return importlib.import_module(name)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def group_label(group: Group) -> str:
    """``experiment`` for the recipe, ``experiment [config hash]`` for a different config."""
    return group.experiment + ("" if group.recipe else f" [{group.config_hash}]")


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def finish(fig, ax, title: str, path: Path) -> Path:
    """Title, legend, tight layout, PNG at 110 dpi; closes the figure."""
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def generic_plots(report: PaperReport, out_dir: Path) -> list[Path]:
    """Per metric: the paper's value and ours (mean ± std over seeds) for every setting;
    runs with a different config as hollow markers, labelled by their config hash."""
    plt = pyplot()
    metrics = list(dict.fromkeys(r.metric for r in report.rows if r.metric))
    paths = []
    for metric in metrics:
        rows = [r for r in report.rows if r.metric == metric]
        variants = [r for r in report.variant_rows if r.metric == metric and r.stat.n]
        shown = [r for r in rows if r.paper is not None or r.stat.n]
        shown += [
            v for v in variants if v.experiment not in {r.experiment for r in shown}
        ]  # settings with only variant runs
        settings = list(dict.fromkeys(r.experiment for r in shown))
        if not settings:
            continue
        y = {s: i for i, s in enumerate(settings)}
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(settings) + 1.6))
        by_exp = {r.experiment: r for r in rows}
        pts = [(y[s], by_exp[s].paper) for s in settings if s in by_exp and by_exp[s].paper]
        if pts:
            ax.scatter([p for _, p in pts], [i for i, _ in pts], marker="x", color="k",
                       s=50, label="paper", zorder=3)  # fmt: skip
        ours = [(y[s], by_exp[s].stat) for s in settings if s in by_exp and by_exp[s].stat.n]
        if ours:
            ax.errorbar([st.mean for _, st in ours], [i for i, _ in ours],
                        xerr=[st.std or 0 for _, st in ours], fmt="o", color="C0", capsize=3,
                        label="ours (recipe), mean ± std")  # fmt: skip
        for j, v in enumerate(variants):
            st = v.stat
            ax.errorbar(st.mean, y[v.experiment] + 0.2 + 0.1 * (j % 3), xerr=st.std or 0,
                        fmt="o", mfc="none", color="C1", capsize=3,
                        label="ours, different config" if j == 0 else None)  # fmt: skip
            ax.annotate(f"{v.group.config_hash} (n={st.n})", (st.mean, y[v.experiment] + 0.2),
                        fontsize=7, xytext=(4, 2), textcoords="offset points")  # fmt: skip
        ax.set_yticks(range(len(settings)), settings, fontsize=8)
        ax.invert_yaxis()
        unit = next((r.reference.get("unit") for r in rows if r.reference.get("unit")), None)
        ax.set_xlabel(f"{metric} ({unit})" if unit else metric)
        ax.grid(axis="x", alpha=0.3)
        title = f"{report.paper}: {metric}, paper vs ours"
        paths.append(finish(fig, ax, title, out_dir / f"results_{slug(metric)}.png"))
    return paths


def make_plots(report: PaperReport, out_dir: Path) -> list[Path]:
    """The generic charts, then the paper's own (``odelab.papers.<paper>.report.plots``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = generic_plots(report, out_dir)
    hooks = paper_hooks(report.paper)
    if hooks is not None and hasattr(hooks, "plots"):
        paths += [Path(p) for p in hooks.plots(report, out_dir) or []]
    return paths
