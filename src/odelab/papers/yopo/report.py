"""YOPO's report additions (the ``odelab.report`` extension point): accuracy vs training time.

``results_robust_acc_vs_time.png``: per dataset, the robust accuracy (solid) and clean accuracy
(dashed) of every run against its training time, from the ``time_curve.json`` that
:class:`~odelab.callbacks.TrainClock` writes next to ``results.json`` (one curve per run, one
colour per method/config): the test-split points of its time marks when the run has any, else
its per-epoch validation points; the paper's end points (robust accuracy at the end of training,
``time/train_s``, from ``reference.yaml``) as crosses, the time-to-level accuracies as dotted
lines. The paper's times are GPU times, ours are whatever the run's clock measured (the axis
label names it): compare shapes, not seconds.

``results_time_to_level.md`` and ``results_time_to_level.png``: the training time each run
needs to reach 90 % and 94 % robust accuracy and its plateau (:func:`time_to_level`), and the
YOPO / baseline ratio of those times for runs of one dataset, clock, machine and seed, beside
the paper's (``reference.yaml`` ``time_to_level``: YOPO-5-10 about 245 s vs PGD-40 about
1280 s on MNIST).

View ``cpu_repro.md`` (``cpu_repro.sh``): the CPU-scale YOPO-5-10 vs PGD-40 race on MNIST.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

from odelab.report.plots import finish, group_label, pyplot
from odelab.report.render import md_table
from odelab.report.runs import Run
from odelab.report.table import PaperReport, describe_hardware
from odelab.report.views import View

log = logging.getLogger(__name__)

ROBUST, CLEAN = "val/robust_acc", "val/acc"  # per-epoch validation points
MARK_ROBUST, MARK_CLEAN = "test/robust_acc", "test/acc"  # time-mark points (test split)
LEVELS = (0.90, 0.94)  # robust accuracies the time-to-level table asks for
PLATEAU_FRACTION = 0.25  # the plateau: median robust accuracy over the last quarter of the time
PLATEAU_TOL = 0.01  # time to plateau: the first point within 1 point of it
# The time marks observe a run without changing it (TrainClock evaluates in a forked RNG state,
# tested), so runs with and without them share a recipe.
RUN_LOCAL_KEYS = ("callbacks.train_clock.eval_every_s", "callbacks.train_clock.eval_marks_s")


def _dataset(experiment: str, config: dict | None) -> str:
    return str((config or {}).get("dataset") or experiment.rsplit("_", 1)[-1])


def time_curves(report: PaperReport) -> list[dict]:
    """One entry per run with a ``time_curve.json``: ``{experiment, label, seed, dataset,
    method, clock, hardware, curve, t, robust, t_clean, clean}`` (lists in the file's order; a
    point without the key is skipped). ``curve`` says which points: ``test marks`` (the run's
    time marks, test split) when it has any, else ``val`` (per-epoch validation)."""
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
            marks = any(MARK_ROBUST in p for p in points)
            robust, clean = (MARK_ROBUST, MARK_CLEAN) if marks else (ROBUST, CLEAN)
            out.append({
                "experiment": g.experiment,
                "label": group_label(g),
                "seed": run.seed,
                "dataset": _dataset(g.experiment, run.config),
                "method": ((run.config or {}).get("model") or {}).get("method", "?"),
                "clock": clock.get("clock", "wall"),
                "hardware": describe_hardware(run.hardware),
                "curve": "test marks" if marks else "val",
                "t": [p["train_s"] for p in points if robust in p],
                "robust": [p[robust] for p in points if robust in p],
                "t_clean": [p["train_s"] for p in points if clean in p],
                "clean": [p[clean] for p in points if clean in p],
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
        for level in LEVELS:
            ax.axhline(level, ls=":", lw=0.8, color="0.5")
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


# -- time to level ---------------------------------------------------------------------------
def first_reach(t: list[float], acc: list[float], level: float) -> float | None:
    """The training time of the first point whose accuracy is >= ``level`` (None: never).
    An observed time: the true crossing lies between it and the point before. Accuracies are
    logged in float32 (90 % of 200 images is 0.8999999762), hence the 1e-6 slack."""
    return next((ti for ti, a in zip(t, acc) if a >= level - 1e-6), None)


def plateau(t: list[float], acc: list[float], fraction: float = PLATEAU_FRACTION) -> float | None:
    """The median accuracy of the points in the last ``fraction`` of the training time
    (t >= (1 - fraction) t_end; at least the last point): the level a run settles at, robust to
    one bad evaluation."""
    if not t:
        return None
    cut = (1.0 - fraction) * t[-1]
    return statistics.median([a for ti, a in zip(t, acc) if ti >= cut])


def run_levels(curve: dict, levels=LEVELS, tol: float = PLATEAU_TOL) -> dict:
    """``{levels: {level: time or None}, plateau, t_plateau, t_end, n}`` of one time curve:
    the time to each robust accuracy level, the plateau and the time to come within ``tol`` of
    it."""
    t, acc = curve["t"], curve["robust"]
    pl = plateau(t, acc)
    return {
        "levels": {lv: first_reach(t, acc, lv) for lv in levels},
        "plateau": pl,
        "t_plateau": None if pl is None else first_reach(t, acc, pl - tol),
        "t_end": t[-1] if t else None,
        "n": len(t),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def time_to_level(report: PaperReport, levels=LEVELS) -> dict:
    """``{runs, ratios, paper}``: one row per run with a time curve (:func:`run_levels` plus
    its identity), the YOPO / baseline time ratios for every pair of a ``yopo`` run and a run of
    another method with the same dataset, clock, machine and seed (a race), and the paper's
    entries (``reference.yaml`` ``time_to_level``)."""
    rows = [{**c, **run_levels(c, levels)} for c in time_curves(report)]
    key = ("dataset", "clock", "hardware", "seed")
    ratios = []
    for a in (r for r in rows if r["method"] == "yopo"):
        for b in (r for r in rows if r["method"] != "yopo"):
            if all(a[k] == b[k] for k in key):
                ratios.append({
                    "dataset": a["dataset"], "yopo": a["label"], "other": b["label"],
                    "clock": a["clock"], "hardware": a["hardware"], "seed": a["seed"],
                    "levels": {lv: _ratio(a["levels"][lv], b["levels"][lv]) for lv in levels},
                    "plateau": _ratio(a["t_plateau"], b["t_plateau"]),
                })  # fmt: skip
    paper = list((report.reference.get("time_to_level") or {}).values())
    return {"runs": rows, "ratios": ratios, "paper": paper, "levels": list(levels)}


def _s(v: float | None) -> str:
    return "never" if v is None else f"{v:.1f}"


def _r(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def time_to_level_markdown(report: PaperReport) -> str:
    """The time-to-level tables as markdown (deterministic: no dates)."""
    tl = time_to_level(report)
    lv = [f"{round(100 * x)} %" for x in tl["levels"]]
    out = ["# yopo: training time to a robust accuracy", "",
           "Generated by `python -m odelab.report yopo` (src/odelab/papers/yopo/report.py) "
           "from the kept records' `time_curve.json`; do not edit by hand. Time = the run's "
           "training clock (evaluation excluded) at the first evaluation at or above the level "
           "(an observed time: the crossing lies between it and the evaluation before). Plateau "
           f"= median robust accuracy over the last {round(100 * PLATEAU_FRACTION)} % of the "
           f"training time; its time = first evaluation within {round(100 * PLATEAU_TOL)} point "
           "of it. Curve: `test marks` = TrainClock time marks on the test split, `val` = "
           "per-epoch validation.", "",
           "## Runs", ""]  # fmt: skip
    head = ["run", "seed", "dataset", "hardware", "clock", "curve", "points", "end (s)",
            *(f"to {x} (s)" for x in lv), "plateau", "to plateau (s)"]  # fmt: skip
    rows = [[r["label"], str(r["seed"]), r["dataset"], r["hardware"], r["clock"], r["curve"],
             str(r["n"]), _s(r["t_end"]), *(_s(r["levels"][x]) for x in tl["levels"]),
             "-" if r["plateau"] is None else f"{100 * r['plateau']:.1f} %",
             _s(r["t_plateau"])] for r in tl["runs"]]  # fmt: skip
    out += _table(head, rows) if rows else ["No run kept a time curve."]
    out += ["", "## YOPO / baseline time ratios (same dataset, clock, machine and seed)", ""]
    head = ["YOPO run", "baseline run", "dataset", "hardware", "clock",
            *(f"ratio to {x}" for x in lv), "ratio to own plateau"]  # fmt: skip
    rows = [[q["yopo"], q["other"], q["dataset"], q["hardware"], q["clock"],
             *(_r(q["levels"][x]) for x in tl["levels"]), _r(q["plateau"])]
            for q in tl["ratios"]]  # fmt: skip
    out += _table(head, rows) if rows else ["No YOPO run has a baseline run to pair with."]
    out += ["", "## The paper (reference.yaml `time_to_level`)", ""]
    head = ["dataset", "level", "YOPO", "YOPO (s)", "baseline", "baseline (s)", "ratio",
            "flag", "source"]  # fmt: skip
    rows = [[p["dataset"], p["level"], p["yopo"], _s(p["yopo_s"]), p["other"],
             _s(p["other_s"]), _r(_ratio(p["yopo_s"], p["other_s"])), p["flag"], p["source"]]
            for p in tl["paper"]]  # fmt: skip
    out += _table(head, rows) if rows else ["None."]
    return "\n".join(out) + "\n"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    cells = [[c.replace("|", "\\|") for c in row] for row in rows]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(row) + " |" for row in cells
    ]


def plot_time_to_level(report: PaperReport, out_dir: Path) -> Path | None:
    """Per run (one row each): its time to 90 %, 94 % and its plateau as markers (log scale; a
    missing marker = never), the paper's times for the same datasets as dashed lines."""
    tl = time_to_level(report)
    runs = [r for r in tl["runs"] if r["t_end"] is not None]
    if not runs:
        return None
    plt = pyplot()
    names = [*(f"to {round(100 * x)} %" for x in tl["levels"]), "to its plateau"]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(runs) + 2.2))
    for j, name in enumerate(names):
        pts = [(r["levels"][tl["levels"][j]] if j < len(tl["levels"]) else r["t_plateau"], i)
               for i, r in enumerate(runs)]  # fmt: skip
        off = 0.15 * (j - (len(names) - 1) / 2)  # one sub-row per level: no marker hides one
        pts = [(t, i + off) for t, i in pts if t is not None]
        if pts:
            ax.plot(*zip(*pts), "osD^v"[j % 5], color=f"C{j}", ls="none", ms=7, label=name)
    datasets = {r["dataset"] for r in runs}
    for p in (p for p in tl["paper"] if p["dataset"] in datasets):
        for t, who in ((p["yopo_s"], p["yopo"]), (p["other_s"], p["other"])):
            ax.axvline(t, ls="--", lw=0.8, color="k")
            ax.text(t, 0.98, f" paper {who}: {t:g} s", transform=ax.get_xaxis_transform(),
                    fontsize=7, rotation=90, va="top", ha="right")  # fmt: skip
    ax.set_yticks(range(len(runs)),
                  [f"{r['label']} s{r['seed']}\n{r['hardware']}, {r['clock']}" for r in runs],
                  fontsize=7)  # fmt: skip
    ax.set_ylim(len(runs) - 0.5, -0.5)
    ax.set_xscale("log")
    ax.set_xlabel("training time to the robust accuracy (s; each run's clock, eval excluded)")
    ax.grid(axis="x", alpha=0.3)
    path = out_dir / "results_time_to_level.png"
    return finish(fig, ax, "YOPO: time to a robust accuracy", path)


def plots(report: PaperReport, out_dir: Path) -> list[Path]:
    """The robust-accuracy-vs-time and time-to-level figures; also writes the time-to-level
    tables to ``results_time_to_level.md`` (the report has no table hook for papers)."""
    (out_dir / "results_time_to_level.md").write_text(time_to_level_markdown(report))
    figs = (plot_robust_vs_time(report, out_dir), plot_time_to_level(report, out_dir))
    return [p for p in figs if p]


def views() -> list[View]:
    return [View("cpu_repro", ("runs/cpu_repro",), cpu_repro)]


CPU_REPRO_LEVELS = (0.5, 0.75, 0.85)  # fixed levels of the CPU race: below its plateau


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
    pgd_level = max(best[a] for a in pgd)
    t = {a: first_time_at(c, pgd_level) for a, c in curves.items()}
    out.append("PGD-40 level (best robust accuracy of any PGD-40 arm in the budget): "
               f"{100 * pgd_level:.1f} %")  # fmt: skip
    out += [f"{a}: reaches it at {_when(t[a])}; best robust acc {100 * best[a]:.1f} %" for a in t]
    for level in CPU_REPRO_LEVELS:
        when = ", ".join(f"{a} {_when(first_time_at(c, level))}" for a, c in curves.items())
        out.append(f"time to {100 * level:.0f} % robust: {when}")
    pgd_times = [t[a] for a in pgd if t[a] is not None]
    ratio = "n/a" if t[yopo[0]] is None else f"{t[yopo[0]] / min(pgd_times):.2f}"
    out.append(f"ratio time-to-level yopo-5-10/pgd-40 {ratio}")
    return "\n".join(out)
