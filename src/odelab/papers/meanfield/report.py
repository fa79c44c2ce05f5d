"""Mean-field ResNet's report plot and study view (the ``odelab.report`` extension point).

``results_acc_vs_depth.png``: test accuracy against the number of residual blocks L
(``model.net.depth``), mean ± std over seeds, one line per family of runs that share every
other config key (scaling 1/(L·M) vs 1, block order, units M, learning rate, ...: the label
names the keys that tell the families apart). The mean-field theory predicts a depth-independent
trainability for the 1/(L·M) scale. The paper has no number here (reference.yaml is empty).

View ``study.md`` (``study.sh``; records kept per part in ``runs/<part>/``): A depth sweep on
digits and the convergence of the loss curves in L, B width sweep, C block order, D CIFAR-10 at
CPU scale; it draws ``depth_sweep.png`` and ``width_sweep.png`` (training loss vs step, seed 0).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from odelab.report.plots import finish, pyplot
from odelab.report.render import md_table
from odelab.report.runs import Run
from odelab.report.table import PaperReport, comparable, config_hash
from odelab.report.views import View, by_experiment, seconds_per_epoch

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


# -- the CPU study (study.sh) -------------------------------------------------------------------
def views() -> list[View]:
    return [View("study", ("runs",), study)]


TAIL = 10  # final training loss: mean of the last TAIL steps
NAN = float("nan")  # results.json drops non-finite metrics (a diverged run): shown as nan


def part_of(run: Run) -> str:
    """The study part (``A_mean_field``, ...): the folder of a kept copy
    ``<part>/<n>_<exp>.json`` or of a sweep dir ``<part>/<n>_<exp>/results.json``."""
    src = Path(run.source)
    return src.parent.parent.name if src.name == "results.json" else src.parent.name


def _ms(values: list[float], digits: int = 3) -> str:
    """mean ± std (the value alone for one seed); a diverged run's nan shows as nan."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _metrics(rs: list[Run]) -> list[defaultdict]:
    return [defaultdict(lambda: NAN, r.metrics) for r in rs]


def _seeds(rs: list[Run]) -> str:
    return ",".join(str(r.seed) for r in rs)


def _lr(r: Run) -> float:
    return r.config["model"]["optimizer"]["lr"]


def setting(r: Run) -> tuple:
    s, net = r.extra["model_summary"], r.config["model"]["net"]
    return (s["scaling"], _lr(r), s["block_order"], s["depth_L"], s["units_M"], net.get("widths"))


def _grouped(runs: list[Run], key) -> dict[tuple, list[Run]]:
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        groups[key(r)].append(r)
    return groups


def digits_table(rs: list[Run]) -> str:
    groups = _grouped(rs, setting)
    rows = []
    for key in sorted(groups, key=lambda k: (k[0], -k[1], k[2], k[3], k[4])):
        g, m = groups[key], _metrics(groups[key])
        loss = [statistics.mean(x.extra["train_loss_curve"][-TAIL:]) for x in g]
        finite = all(math.isfinite(v) and v < 1e3 for v in loss)
        rows.append([*map(str, key[:5]), _seeds(g),
                     _ms(loss, 4) if finite else f"{statistics.mean(loss):.2e}",
                     _ms([100 * x["test/acc"] for x in m], 1),
                     _ms([x["test/ensemble_r2_res"] for x in m]),
                     _ms([x["test/residual_share"] for x in m])])  # fmt: skip
    head = ["scaling", "lr", "order", "L", "M", "seeds", "final train loss", "test acc (%)",
            "ensemble R² (residual part)", "residual share"]  # fmt: skip
    return md_table(head, rows)


def _smoothed_mean_curve(rs: list[Run]) -> list[float]:
    curves = [r.extra["train_loss_curve"] for r in rs]
    n = min(len(c) for c in curves)
    mean = [statistics.mean(c[i] for c in curves) for i in range(n)]
    return [statistics.mean(mean[i : i + TAIL]) for i in range(0, n - TAIL + 1, TAIL)]


def curve_gap_table(rs: list[Run]) -> str:
    """Mean over steps of |l_L(step) - l_64(step)| for the seed-averaged, 10-step-smoothed
    training loss curves: the depth limit predicts it shrinks as L grows."""
    s = "model_summary"
    groups = _grouped(rs, lambda r: (r.extra[s]["scaling"], _lr(r), r.extra[s]["depth_L"]))
    rows = []
    for (scaling, lr, L), g in sorted(
        groups.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2])
    ):
        ref = groups.get((scaling, lr, 64))
        if L == 64 or not ref:
            continue
        a, b = _smoothed_mean_curve(g), _smoothed_mean_curve(ref)
        gap = statistics.mean(abs(x - y) for x, y in zip(a, b))
        rows.append(
            [scaling, str(lr), str(L), _seeds(g), f"{gap:.4f}" if gap < 1e3 else f"{gap:.2e}"]
        )
    return md_table(["scaling", "lr", "L", "seeds", "mean gap to the L = 64 loss curve"], rows)


def order_table(rs: list[Run]) -> str:
    groups = _grouped(rs, setting)
    rows = []
    for key in sorted(groups, key=lambda k: (k[0], k[2])):
        m = _metrics(groups[key])
        rows.append([str(key[0]), str(key[1]), str(key[2]), str(key[3]), _seeds(groups[key]),
                     _ms([x["test/loss"] for x in m]), _ms([x["test/perm_loss"] for x in m]),
                     _ms([100 * x["test/acc"] for x in m], 1),
                     _ms([100 * x["test/perm_acc"] for x in m], 1)])  # fmt: skip
    head = [
        "scaling",
        "lr",
        "training order",
        "L",
        "seeds",
        "test loss (fixed order)",
        "test loss (10 random orders)",
        "test acc (%)",
        "test acc, random orders (%)",
    ]
    return md_table(head, rows)


def cifar_table(rs: list[Run]) -> str:
    rows = []
    for exp, g in by_experiment(rs).items():
        m = _metrics(g)
        rows.append([exp, _seeds(g), _ms([100 * x["test/acc"] for x in m], 2),
                     _ms([100 * x["test/perm_acc"] for x in m], 2),
                     _ms([x["test/ensemble_r2_res"] for x in m]),
                     f"{seconds_per_epoch(g):.0f}"])  # fmt: skip
    head = ["experiment", "seeds", "test acc (%)", "test acc, random orders (%)",
            "ensemble R² (residual part)", "s/epoch (fit)"]  # fmt: skip
    return md_table(head, rows)


def plot_curves(rs: list[Run], by: str, path: Path, title: str) -> None:
    """Training loss against step, seed 0, one panel per scaling, one line per ``by`` value."""
    plt = pyplot()
    summary = [r.extra["model_summary"] for r in rs]
    scalings = [x for x in ("mean_field", "standard") if any(s["scaling"] == x for s in summary)]
    fig, axes = plt.subplots(1, len(scalings), figsize=(4.5 * len(scalings), 3.4), sharey=True,
                             squeeze=False)  # fmt: skip
    axes = axes[0]
    for ax, scaling in zip(axes, scalings):
        for r in sorted(rs, key=lambda x: (x.extra["model_summary"][by], x.seed)):
            s = r.extra["model_summary"]
            if s["scaling"] != scaling or r.seed != 0:
                continue
            ls = "-" if scaling == "mean_field" or _lr(r) == 0.005 else ":"
            label = f"{by.split('_')[0]}={s[by]}, lr={_lr(r)}"
            ax.plot(r.extra["train_loss_curve"], ls, label=label)
        ax.set_yscale("log")
        ax.set_ylim(1e-3, 1e2)
        ax.set_xlabel("training step")
        ax.set_title(f"{scaling.replace('_', '-')} ({title})", fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("training loss (batch)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def study(runs: list[Run], out_dir: Path) -> str:
    """The study's tables, part by part (a part without records is left out), and its plots."""
    parts: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        parts[part_of(r)].append(r)
    l16 = [r for r in parts["A_mean_field"] if r.extra["model_summary"]["depth_L"] == 16]
    a = parts["A_mean_field"] + parts["A_standard"] + parts["A_standard_diverged"]
    b = l16 + parts["B_width"]
    c = l16 + parts["C_shuffle_mean_field"] + parts["C_standard"]
    d = [r for name, rs in sorted(parts.items()) if name.startswith("D_") for r in rs]
    out = []
    if a:
        out += ["A. Depth sweep on digits (M = 32):", digits_table(a)]
        out += ["A'. Loss-curve convergence in L (gap to the L = 64 curve):", curve_gap_table(a)]
        plot_curves(a, "depth_L", out_dir / "depth_sweep.png", "M = 32, seed 0")
    if b:
        out += ["B. Width sweep on digits (mean field, L = 16):", digits_table(b)]
        plot_curves(b, "units_M", out_dir / "width_sweep.png", "L = 16, seed 0")
    if c:
        out += ["C. Block order on digits (L = 16, M = 32):", order_table(c)]
    if d:
        out += ["D. CIFAR-10 CPU scale (ResNet-20 layout, widths 8/16/32, M = 2):", cifar_table(d)]
    return "\n\n".join(out)
