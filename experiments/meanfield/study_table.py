"""Summarise the mean-field CPU study (study.sh): markdown tables and loss-vs-step plots.

Usage: python experiments/meanfield/study_table.py [RUNS_DIR] [--keep]
RUNS_DIR is a study output folder (logs/meanfield_study, with <part>/<n>_<exp>/results.json) or
the kept copies in experiments/meanfield/runs (<part>/<n>_<exp>.json). ``--keep`` copies the
records of a study folder into experiments/meanfield/runs. Plots go to experiments/meanfield/.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
TAIL = 10  # final training loss: mean of the last TAIL steps
NAN = float("nan")  # results.json drops non-finite metrics (a diverged run): shown as nan


def load(runs: Path) -> dict[str, list[dict]]:
    parts = defaultdict(list)
    for f in sorted([*runs.glob("*/*/results.json"), *runs.glob("*/*.json")]):
        r = json.loads(f.read_text())
        if r["status"] != "finished":
            print(f"skipped (status {r['status']}): {f}")
            continue
        r["_part"] = f.parent.parent.name if f.name == "results.json" else f.parent.name
        r["_name"] = f.parent.name if f.name == "results.json" else f.stem
        parts[r["_part"]].append(r)
    return parts


def keep(runs: Path) -> None:
    for part, rs in load(runs).items():
        dest = HERE / "runs" / part
        dest.mkdir(parents=True, exist_ok=True)
        for r in rs:
            src = runs / part / r["_name"] / "results.json"
            shutil.copy(src, dest / f"{r['_name']}.json")


def _ms(values: list[float], fmt: str = ".3f") -> str:
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def final_loss(r: dict) -> float:
    c = r["train_loss_curve"]
    return statistics.mean(c[-TAIL:])


def setting(r: dict) -> tuple:
    s, net = r["model_summary"], r["config"]["model"]["net"]
    lr = r["config"]["model"]["optimizer"]["lr"]
    return (s["scaling"], lr, s["block_order"], s["depth_L"], s["units_M"], net.get("widths"))


def digits_table(rs: list[dict]) -> None:
    groups = defaultdict(list)
    for r in rs:
        groups[setting(r)].append(r)
    print(
        "| scaling | lr | order | L | M | seeds | final train loss | test acc (%) | "
        "ensemble R² (residual part) | residual share |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(groups, key=lambda k: (k[0], -k[1], k[2], k[3], k[4])):
        g = groups[key]
        m = [defaultdict(lambda: NAN, x["metrics"]) for x in g]
        loss = [final_loss(x) for x in g]
        acc = [100 * x["test/acc"] for x in m]
        r2 = [x["test/ensemble_r2_res"] for x in m]
        share = [x["test/residual_share"] for x in m]
        seeds = ",".join(str(x["seed"]) for x in g)
        finite = all(math.isfinite(v) and v < 1e3 for v in loss)
        loss_s = _ms(loss, ".4f") if finite else f"{statistics.mean(loss):.2e}"
        print(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {seeds} | {loss_s} | "
            f"{_ms(acc, '.1f')} | {_ms(r2)} | {_ms(share)} |"
        )


def _smoothed_mean_curve(rs: list[dict]) -> list[float]:
    curves = [r["train_loss_curve"] for r in rs]
    n = min(len(c) for c in curves)
    mean = [statistics.mean(c[i] for c in curves) for i in range(n)]
    return [statistics.mean(mean[i : i + TAIL]) for i in range(0, n - TAIL + 1, TAIL)]


def curve_gap_table(rs: list[dict]) -> None:
    """Mean over steps of |ℓ_L(step) - ℓ_64(step)| for the seed-averaged, 10-step-smoothed
    training loss curves: the depth limit predicts it shrinks as L grows."""
    groups = defaultdict(list)
    for r in rs:
        s = r["model_summary"]
        lr = r["config"]["model"]["optimizer"]["lr"]
        groups[(s["scaling"], lr, s["depth_L"])].append(r)
    print("| scaling | lr | L | seeds | mean gap to the L = 64 loss curve |")
    print("|---|---|---|---|---|")
    order = sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2]))
    for (scaling, lr, L), g in order:
        ref = groups.get((scaling, lr, 64))
        if L == 64 or not ref:
            continue
        a, b = _smoothed_mean_curve(g), _smoothed_mean_curve(ref)
        gap = statistics.mean(abs(x - y) for x, y in zip(a, b))
        seeds = ",".join(str(x["seed"]) for x in g)
        gap_s = f"{gap:.4f}" if gap < 1e3 else f"{gap:.2e}"
        print(f"| {scaling} | {lr} | {L} | {seeds} | {gap_s} |")


def order_table(rs: list[dict]) -> None:
    groups = defaultdict(list)
    for r in rs:
        groups[setting(r)].append(r)
    print(
        "| scaling | lr | training order | L | seeds | test loss (fixed order) | "
        "test loss (10 random orders) | test acc (%) | test acc, random orders (%) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for key in sorted(groups, key=lambda k: (k[0], k[2])):
        m = [defaultdict(lambda: NAN, x["metrics"]) for x in groups[key]]
        seeds = ",".join(str(x["seed"]) for x in groups[key])
        print(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {seeds} | "
            f"{_ms([x['test/loss'] for x in m])} | {_ms([x['test/perm_loss'] for x in m])} | "
            f"{_ms([100 * x['test/acc'] for x in m], '.1f')} | "
            f"{_ms([100 * x['test/perm_acc'] for x in m], '.1f')} |"
        )


def cifar_table(rs: list[dict]) -> None:
    groups = defaultdict(list)
    for r in rs:
        groups[r["experiment"]].append(r)
    print(
        "| experiment | seeds | test acc (%) | test acc, random orders (%) | "
        "ensemble R² (residual part) | s/epoch (fit) |"
    )
    print("|---|---|---|---|---|---|")
    for exp, g in sorted(groups.items()):
        m = [defaultdict(lambda: NAN, x["metrics"]) for x in g]
        seeds = ",".join(str(x["seed"]) for x in g)
        t = statistics.mean(x["train_time_s"] / max(x["epochs"], 1) for x in g)
        print(
            f"| {exp} | {seeds} | {_ms([100 * x['test/acc'] for x in m], '.2f')} | "
            f"{_ms([100 * x['test/perm_acc'] for x in m], '.2f')} | "
            f"{_ms([x['test/ensemble_r2_res'] for x in m])} | {t:.0f} |"
        )


def plot_curves(rs: list[dict], by: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scalings = [
        x
        for x in ("mean_field", "standard")
        if any(r["model_summary"]["scaling"] == x for r in rs)
    ]
    fig, axes = plt.subplots(
        1, len(scalings), figsize=(4.5 * len(scalings), 3.4), sharey=True, squeeze=False
    )
    axes = axes[0]
    for ax, scaling in zip(axes, scalings):
        for r in sorted(rs, key=lambda x: (x["model_summary"][by], x["seed"])):
            s = r["model_summary"]
            if s["scaling"] != scaling or r["seed"] != 0:
                continue
            lr = r["config"]["model"]["optimizer"]["lr"]
            ls = "-" if scaling == "mean_field" or lr == 0.005 else ":"
            ax.plot(r["train_loss_curve"], ls, label=f"{by.split('_')[0]}={s[by]}, lr={lr}")
        ax.set_yscale("log")
        ax.set_ylim(1e-3, 1e2)
        ax.set_xlabel("training step")
        ax.set_title(f"{scaling.replace('_', '-')} ({title})", fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("training loss (batch)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(runs: Path, plots: bool = True) -> None:
    parts = load(runs)
    a = parts.get("A_mean_field", []) + parts.get("A_standard", [])
    a += parts.get("A_standard_diverged", [])
    b = [r for r in parts.get("A_mean_field", []) if r["model_summary"]["depth_L"] == 16]
    b += parts.get("B_width", [])
    c = [r for r in parts.get("A_mean_field", []) if r["model_summary"]["depth_L"] == 16]
    c += parts.get("C_shuffle_mean_field", []) + parts.get("C_standard", [])
    if a:
        print("\nA. Depth sweep on digits (M = 32):\n")
        digits_table(a)
    if a:
        print("\nA'. Loss-curve convergence in L (gap to the L = 64 curve):\n")
        curve_gap_table(a)
    if b:
        print("\nB. Width sweep on digits (mean field, L = 16):\n")
        digits_table(b)
    if c:
        print("\nC. Block order on digits (L = 16, M = 32):\n")
        order_table(c)
    d = [r for name, rs in sorted(parts.items()) if name.startswith("D_") for r in rs]
    if d:
        print("\nD. CIFAR-10 CPU scale (ResNet-20 layout, widths 8/16/32, M = 2):\n")
        cifar_table(d)
    if plots and a:
        plot_curves(a, "depth_L", HERE / "depth_sweep.png", "M = 32, seed 0")
    if plots and b:
        plot_curves(b, "units_M", HERE / "width_sweep.png", "L = 16, seed 0")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    folder = Path(args[0] if args else HERE / "runs")
    if "--keep" in sys.argv:
        keep(folder)
        folder = HERE / "runs"
    main(folder)
