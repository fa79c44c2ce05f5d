"""YOPO's report plot and study view (the ``odelab.report`` extension point): robust accuracy
vs training time.

``results_robust_acc_vs_time.png``: per dataset, the validation robust accuracy (solid) and
clean accuracy (dashed) of every run against its training time, from the ``time_curve.json``
that :class:`~odelab.callbacks.TrainClock` writes next to ``results.json`` (one curve per run,
one colour per method/config); the paper's end points (robust accuracy at the end of training,
``time/train_s``, from ``reference.yaml``) as crosses. The paper's times are GPU times, ours
are whatever the run's clock measured (the axis label names it): compare shapes, not seconds.

View ``cpu_repro.md`` (``cpu_repro.sh``): the CPU-scale YOPO-5-10 vs PGD-40 race on MNIST.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from odelab.report.plots import finish, group_label, pyplot
from odelab.report.render import md_table
from odelab.report.runs import Run
from odelab.report.table import PaperReport
from odelab.report.views import View

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


def views() -> list[View]:
    return [View("cpu_repro", ("runs/cpu_repro",), cpu_repro)]


LEVELS = (0.5, 0.75, 0.85)  # fixed robust-accuracy levels: less sensitive to one evaluation


def first_time_at(curve: list[dict], level: float) -> float | None:
    """Training time of the first evaluation with robust accuracy >= level (None: never)."""
    return next((p["train_s"] for p in curve if p[ROBUST] >= level - 1e-9), None)


def _when(t: float | None) -> str:
    return "never" if t is None else f"{t:.1f} s"


def cpu_repro(runs: list[Run], out_dir: Path) -> str:
    """Each arm's curve (``time_curve.json``, written by TrainClock; arm = the run's directory),
    PGD-40's level (the best robust accuracy any PGD-40 arm reached within the budget: its
    plateau when it has one), the training time at which each arm first reaches it and fixed
    levels, and the ratio of YOPO's time to the fastest PGD-40 arm's."""
    arms: dict[str, tuple[Run, list[dict]]] = {}
    for r in runs:
        if r.experiment in ("yopo_mnist", "pgd40_mnist") and r.file("time_curve.json"):
            arm = Path(r.source).parent.name if r.source.endswith("results.json") else r.experiment
            arms[arm] = (r, json.loads(r.file("time_curve.json").read_text()))
    yopo = [a for a, (r, _) in arms.items() if r.experiment == "yopo_mnist"]
    pgd = sorted(a for a, (r, _) in arms.items() if r.experiment == "pgd40_mnist")
    if len(yopo) != 1 or not pgd:
        raise ValueError("cpu_repro needs one yopo_mnist run and pgd40_mnist runs with a "
                         f"time_curve.json; found arms {sorted(arms)}")  # fmt: skip
    curves = {a: arms[a][1] for a in [*yopo, *pgd]}
    out = []
    for arm, curve in curves.items():
        head = ["train CPU s", "full passes", "layer-one passes", "clean acc", "PGD-40 acc"]
        rows = [[f"{p['train_s']:.1f}", str(p["full_bwd"]), str(p["layer_one_bwd"]),
                 f"{100 * p[CLEAN]:.1f}", f"{100 * p[ROBUST]:.1f}"] for p in curve]  # fmt: skip
        out += [f"## {arm}", "", md_table(head, rows), ""]
    best = {a: max(p[ROBUST] for p in c) for a, c in curves.items()}
    plateau = max(best[a] for a in pgd)
    t = {a: first_time_at(c, plateau) for a, c in curves.items()}
    out.append("PGD-40 level (best robust accuracy of any PGD-40 arm in the budget): "
               f"{100 * plateau:.1f} %")  # fmt: skip
    out += [f"{a}: reaches it at {_when(t[a])}; best robust acc {100 * best[a]:.1f} %" for a in t]
    for level in LEVELS:
        when = ", ".join(f"{a} {_when(first_time_at(c, level))}" for a, c in curves.items())
        out.append(f"time to {100 * level:.0f} % robust: {when}")
    pgd_times = [t[a] for a in pgd if t[a] is not None]
    ratio = "n/a" if t[yopo[0]] is None else f"{t[yopo[0]] / min(pgd_times):.2f}"
    out.append(f"ratio time-to-level yopo-5-10/pgd-40 {ratio}")
    return "\n".join(out)
