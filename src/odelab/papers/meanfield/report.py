"""Mean-field ResNet's report plot (the ``odelab.report`` extension point): accuracy vs depth.

``results_acc_vs_depth.png``: test accuracy against the number of residual blocks L
(``model.net.depth``), mean ± std over seeds, one line per family of runs that share every
other config key (scaling 1/(L·M) vs 1, block order, units M, learning rate, ...: the label
names the keys that tell the families apart). The mean-field theory predicts a depth-independent
trainability for the 1/(L·M) scale. The paper has no number here (reference.yaml is empty).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from odelab.report.plots import finish, pyplot
from odelab.report.table import PaperReport, comparable, config_hash

DEPTH, METRIC = "model.net.depth", "test/acc"


def acc_vs_depth(report: PaperReport, metric: str = METRIC) -> list[dict]:
    """``{experiment, label, depths, means, stds, n}`` per family with at least two depths."""
    fams: dict[tuple[str, str], dict] = {}
    for g in report.groups:
        for run in g.runs:
            flat = comparable(run.config or {})
            if DEPTH not in flat or metric not in run.metrics:
                continue
            rest = {k: v for k, v in flat.items() if k != DEPTH}
            fam = fams.setdefault((g.experiment, config_hash(rest)), {"rest": rest, "by": {}})
            fam["by"].setdefault(int(flat[DEPTH]), []).append(run.metrics[metric])
    fams = {k: f for k, f in fams.items() if len(f["by"]) > 1}
    out = []
    for (exp, _), fam in fams.items():
        others = [f["rest"] for (e, _), f in fams.items() if e == exp]
        keys = sorted(k for k in fam["rest"] if len({repr(o.get(k)) for o in others}) > 1)
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={fam['rest'][k]}" for k in keys) or exp
        depths = sorted(fam["by"])
        vals = [fam["by"][d] for d in depths]
        out.append({"experiment": exp, "label": label, "depths": depths,
                    "means": [statistics.fmean(v) for v in vals],
                    "stds": [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals],
                    "n": [len(v) for v in vals]})  # fmt: skip
    return out


def plot_acc_vs_depth(report: PaperReport, out_dir: Path) -> Path | None:
    fams = acc_vs_depth(report)
    if not fams:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for f in fams:
        ax.errorbar(f["depths"], f["means"], yerr=f["stds"], marker="o", capsize=3,
                    label=f"{f['label']} (n/L={'/'.join(map(str, f['n']))})")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("depth L (residual blocks)")
    ax.set_ylabel(f"{METRIC} (fraction), mean ± std over seeds")
    ax.grid(alpha=0.3)
    title = f"Mean-field vs standard ResNet: accuracy vs depth ({fams[0]['experiment']})"
    return finish(fig, ax, title, out_dir / "results_acc_vs_depth.png")


def plots(report: PaperReport, out_dir: Path) -> list[Path]:
    return [p for p in (plot_acc_vs_depth(report, out_dir),) if p]
