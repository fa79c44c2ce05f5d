"""DURR's report plot (the ``odelab.report`` extension point): PSNR per noise level σ.

``results_psnr_vs_sigma.png``: one panel per test set; per setting/config (DURR, DnCNN, BM3D,
...) the test PSNR at every σ it was evaluated at (``test/psnr_<set>_s<σ>``), mean ± std over
seeds, and the reference values of ``reference.yaml`` for the same keys as crosses (for
DnCNN-B / BM3D these are the DnCNN authors' published BSD68 numbers, the anchors the reference
file cites; DURR's own table could not be read, see reference.yaml).

:func:`plot_steps` draws one run's ``steps_vs_level.png`` (the DURR module calls it at test end).
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from odelab.report.plots import finish, group_label, pyplot
from odelab.report.table import PaperReport

KEY = re.compile(r"^test/psnr_([A-Za-z0-9]+)_s(\d+)$")  # not psnr_oracle_/psnr_sched_ variants


def _cells(metrics) -> dict[tuple[str, int], str]:
    return {(m[1], int(m[2])): k for k in metrics if (m := KEY.match(k))}


def psnr_per_sigma(report: PaperReport) -> list[dict]:
    """Per group with per-σ PSNRs: ``{experiment, label, n, curves: {set: (σs, means, stds)}}``
    (σ ascending; mean ± sample std over the group's runs that have that cell)."""
    out = []
    for g in report.groups:
        cells = sorted({c for r in g.runs for c in _cells(r.metrics)})
        if not cells:
            continue
        curves: dict[str, tuple[list, list, list]] = {}
        for ds, sigma in cells:
            vals = [r.metrics[f"test/psnr_{ds}_s{sigma}"] for r in g.runs
                    if f"test/psnr_{ds}_s{sigma}" in r.metrics]  # fmt: skip
            s, m, e = curves.setdefault(ds, ([], [], []))
            s.append(sigma)
            m.append(statistics.fmean(vals))
            e.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
        out.append({"experiment": g.experiment, "label": group_label(g), "n": len(g.runs),
                    "curves": curves})  # fmt: skip
    return out


def reference_per_sigma(report: PaperReport) -> list[dict]:
    """``{experiment, curves: {set: (σs, values)}}`` from reference.yaml's per-σ PSNR keys."""
    out = []
    for name, setting in (report.reference.get("settings") or {}).items():
        metrics = (setting or {}).get("metrics") or {}
        curves: dict[str, tuple[list, list]] = {}
        for (ds, sigma), key in sorted(_cells(metrics).items()):
            v = (metrics[key] or {}).get("value")
            if isinstance(v, int | float):
                curves.setdefault(ds, ([], []))[0].append(sigma)
                curves[ds][1].append(float(v))
        if curves:
            out.append({"experiment": name, "curves": curves})
    return out


def plot_psnr_vs_sigma(report: PaperReport, out_dir: Path) -> Path | None:
    ours = psnr_per_sigma(report)
    if not ours:
        return None
    ref = reference_per_sigma(report)
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
        ax.set_xlabel(f"noise level σ (0-255 scale), {ds}")
        ax.set_ylabel("test PSNR (dB)")
        ax.grid(alpha=0.3)
        if ax is not axes[0][-1]:
            ax.set_title(ds, fontsize=10)
            ax.legend(fontsize=7, loc="best")
    title = f"DURR vs baselines: PSNR per σ ({sets[-1]})"
    return finish(fig, axes[0][-1], title, out_dir / "results_psnr_vs_sigma.png")


def plots(report: PaperReport, out_dir: Path) -> list[Path]:
    return [p for p in (plot_psnr_vs_sigma(report, out_dir),) if p]


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
