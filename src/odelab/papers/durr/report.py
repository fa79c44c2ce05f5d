"""DURR's report plots (the ``odelab.report`` extension point): PSNR and learned steps per level.

``results_psnr_vs_sigma.png`` (denoising) and ``results_psnr_vs_quality.png`` (JPEG): one panel
per test set; per setting/config (DURR, DnCNN, BM3D, ...) the test PSNR at every level it was
evaluated at (``test/psnr_<set>_s<σ>`` or ``test/psnr_<set>_q<QF>``), mean ± std over seeds,
and the reference values of ``reference.yaml`` for the same keys as crosses (for DnCNN-B / BM3D
these are the DnCNN authors' published BSD68 numbers, the anchors the reference file cites;
DURR's own table could not be read, see reference.yaml).

``results_steps_vs_level.png``: per DURR setting and test set, the learned number of steps
(``test/steps_<cell>``) and the oracle T (the best single T per cell, ``restoration.cells``
of the run record), mean ± std over seeds, against σ or the quality factor.

:func:`plot_steps` draws one run's ``steps_vs_level.png`` (the DURR module calls it at test end).
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from odelab.report.plots import finish, group_label, pyplot
from odelab.report.table import PaperReport
from odelab.report.views import View

# not the psnr_oracle_/psnr_sched_ variants; s: noise σ, q: JPEG quality factor
KEY = {kind: re.compile(rf"^test/psnr_([A-Za-z0-9]+)_{kind}(\d+)$") for kind in "sq"}
STEPS = re.compile(r"^test/steps_([A-Za-z0-9]+)_([sq])(\d+)$")
AXIS = {"s": "noise level σ (0-255 scale)", "q": "JPEG quality factor (lower: stronger)"}


def _cells(metrics, kind: str = "s") -> dict[tuple[str, int], str]:
    return {(m[1], int(m[2])): k for k in metrics if (m := KEY[kind].match(k))}


def _mean_std(vals: list[float]) -> tuple[float, float]:
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def psnr_per_sigma(report: PaperReport, kind: str = "s") -> list[dict]:
    """Per group with per-level PSNRs: ``{experiment, label, n, curves: {set: (levels, means,
    stds)}}`` (levels ascending; mean ± sample std over the group's runs that have that cell);
    ``kind`` ``s``: σ of the denoising cells, ``q``: quality factor of the JPEG cells."""
    out = []
    for g in report.groups:
        cells = sorted({c for r in g.runs for c in _cells(r.metrics, kind)})
        if not cells:
            continue
        curves: dict[str, tuple[list, list, list]] = {}
        for ds, sigma in cells:
            key = f"test/psnr_{ds}_{kind}{sigma}"
            vals = [r.metrics[key] for r in g.runs if key in r.metrics]
            s, m, e = curves.setdefault(ds, ([], [], []))
            s.append(sigma)
            mean, std = _mean_std(vals)
            m.append(mean)
            e.append(std)
        out.append({"experiment": g.experiment, "label": group_label(g), "n": len(g.runs),
                    "curves": curves})  # fmt: skip
    return out


def reference_per_sigma(report: PaperReport, kind: str = "s") -> list[dict]:
    """``{experiment, curves: {set: (levels, values)}}`` from reference.yaml's per-level PSNR
    keys (``kind`` as in :func:`psnr_per_sigma`)."""
    out = []
    for name, setting in (report.reference.get("settings") or {}).items():
        metrics = (setting or {}).get("metrics") or {}
        curves: dict[str, tuple[list, list]] = {}
        for (ds, sigma), key in sorted(_cells(metrics, kind).items()):
            v = (metrics[key] or {}).get("value")
            if isinstance(v, int | float):
                curves.setdefault(ds, ([], []))[0].append(sigma)
                curves[ds][1].append(float(v))
        if curves:
            out.append({"experiment": name, "curves": curves})
    return out


def plot_psnr_vs_sigma(report: PaperReport, out_dir: Path, kind: str = "s") -> Path | None:
    """``results_psnr_vs_sigma.png`` (``kind`` s) or ``results_psnr_vs_quality.png`` (q)."""
    ours = psnr_per_sigma(report, kind)
    if not ours:
        return None
    ref = reference_per_sigma(report, kind)
    sets = sorted({ds for o in ours for ds in o["curves"]})
    plt = pyplot()
    fig, axes = plt.subplots(1, len(sets), figsize=(7 * len(sets), 4.5), squeeze=False)
    colors: dict[str, str] = {}
    for ax, ds in zip(axes[0], sets):
        seen: dict[str, int] = {}
        for o in (o for o in ours if ds in o["curves"]):
            s, m, e = o["curves"][ds]
            color = colors.setdefault(o["experiment"], f"C{len(colors) % 10}")
            k = seen[o["experiment"]] = seen.get(o["experiment"], -1) + 1  # configs of a setting
            ax.errorbar(s, m, yerr=e, fmt="os^v"[k % 4], ls=["-", "--", ":", "-."][k % 4], ms=4,
                        capsize=3, color=color, mfc="none" if "[" in o["label"] else color,
                        label=f"ours {o['label']} (n={o['n']})")  # fmt: skip
        for r in (r for r in ref if ds in r["curves"]):
            s, v = r["curves"][ds]
            color = colors.setdefault(r["experiment"], f"C{len(colors) % 10}")
            ax.plot(s, v, "x", ms=9, mew=2, color=color, ls="none",
                    label=f"reference {r['experiment']}")  # fmt: skip
        ax.set_xlabel(f"{AXIS[kind]}, {ds}")
        ax.set_ylabel("test PSNR (dB)")
        ax.grid(alpha=0.3)
        if ax is not axes[0][-1]:
            ax.set_title(ds, fontsize=10)
            ax.legend(fontsize=7, loc="best")
    what, name = ("σ", "sigma") if kind == "s" else ("JPEG quality", "quality")
    title = f"DURR vs baselines: PSNR per {what} ({sets[-1]})"
    return finish(fig, axes[0][-1], title, out_dir / f"results_psnr_vs_{name}.png")


def steps_per_level(report: PaperReport) -> list[dict]:
    """Per group with learned steps: ``{experiment, label, n, kind, curves: {set: (levels,
    steps mean, std, oracle T mean, std)}}``, levels ascending, over the group's runs (the
    oracle T from each run record's ``restoration.cells``)."""
    out = []
    for g in report.groups:
        cells = sorted({(m[1], m[2], int(m[3])) for r in g.runs for k in r.metrics
                        if (m := STEPS.match(k))})  # fmt: skip
        if not cells:
            continue
        curves: dict[str, tuple[list, ...]] = {}
        for ds, kind, level in cells:
            cell = f"{ds}_{kind}{level}"
            steps = [r.metrics[f"test/steps_{cell}"] for r in g.runs
                     if f"test/steps_{cell}" in r.metrics]  # fmt: skip
            oracle = [c["oracle_T"] for r in g.runs
                      if "oracle_T" in (c := ((r.extra.get("restoration") or {}).get("cells")
                                              or {}).get(cell, {}))]  # fmt: skip
            cur = curves.setdefault(ds, ([], [], [], [], []))
            cur[0].append(level)
            for i, vals in ((1, steps), (3, oracle)):
                mean, std = _mean_std(vals) if vals else (float("nan"), 0.0)
                cur[i].append(mean)
                cur[i + 1].append(std)
        out.append({"experiment": g.experiment, "label": group_label(g), "n": len(g.runs),
                    "kind": cells[0][1], "curves": curves})  # fmt: skip
    return out


def plot_steps_vs_level(report: PaperReport, out_dir: Path) -> Path | None:
    """``results_steps_vs_level.png``: one panel per DURR group (learned steps solid, oracle T
    dashed, one colour per test set)."""
    data = steps_per_level(report)
    if not data:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(data), figsize=(5.5 * len(data), 4), squeeze=False)
    for ax, d in zip(axes[0], data):
        for i, (ds, (lv, s, se, o, oe)) in enumerate(sorted(d["curves"].items())):
            ax.errorbar(lv, s, yerr=se, fmt="o-", ms=4, capsize=3, color=f"C{i}",
                        label=f"{ds}: learned steps")  # fmt: skip
            ax.errorbar(lv, o, yerr=oe, fmt="x--", ms=6, capsize=3, color=f"C{i}",
                        label=f"{ds}: oracle T")  # fmt: skip
        ax.set_xlabel(AXIS[d["kind"]])
        ax.set_ylabel("steps (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        if ax is not axes[0][-1]:
            ax.set_title(f"{d['label']} (n={d['n']})", fontsize=10)
            ax.legend(fontsize=7, loc="best")
    last = data[-1]
    title = f"{last['label']} (n={last['n']})"
    return finish(fig, axes[0][-1], title, out_dir / "results_steps_vs_level.png")


def plots(report: PaperReport, out_dir: Path) -> list[Path]:
    made = (
        plot_psnr_vs_sigma(report, out_dir, "s"),
        plot_psnr_vs_sigma(report, out_dir, "q"),
        plot_steps_vs_level(report, out_dir),
    )
    return [p for p in made if p]


def plot_steps(cells: dict[str, dict], path: Path) -> Path:
    """Learned steps (mean +- std) and oracle T against the level, one line per test set."""
    plt = pyplot()
    by_set: dict[str, list[tuple[float, dict]]] = {}
    for g, row in cells.items():
        name, tag = g.rsplit("_", 1)
        by_set.setdefault(name, []).append((float(tag[1:]), row))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, pts in sorted(by_set.items()):
        pts.sort(key=lambda p: p[0])
        lv = [p[0] for p in pts]
        ax.errorbar(
            lv, [p[1]["steps"] for p in pts], yerr=[p[1]["steps_std"] for p in pts],
            marker="o", capsize=3, label=f"{name}: policy",
        )  # fmt: skip
        ax.plot(lv, [p[1]["oracle_T"] for p in pts], "--x", label=f"{name}: oracle T")
    ax.set_xlabel("degradation level (sigma or JPEG quality)")
    ax.set_ylabel("steps")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def views() -> list[View]:
    from odelab.papers.durr.study import lite_study

    return [View("lite_study", ("runs/lite_seeds",), lite_study)]
