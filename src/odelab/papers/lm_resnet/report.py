"""LM-ResNet's own report plots (the ``odelab.report`` extension point).

- ``results_k_per_block.png``: the learned k_n of u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + f_n(u_n)
  per block (mean ± std over seeds; per-channel k averaged over channels), one line per config;
- ``results_error_vs_params.png``: test error against parameter count, LM-ResNet and ResNet, the
  paper's values at our recipe's parameter count and ours (the paper's Figure/Table 1 view).
"""

from __future__ import annotations

import functools
import json
import statistics
from pathlib import Path

from odelab.report.plots import finish, group_label, pyplot
from odelab.report.table import Group, PaperReport, recipe_config


@functools.cache
def _params(net_json: str) -> int:
    """Trainable parameters of the ``model.net`` node (instantiated on CPU, never trained)."""
    import hydra

    net = hydra.utils.instantiate(json.loads(net_json))
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def params_of(config: dict | None) -> int | None:
    net = ((config or {}).get("model") or {}).get("net")
    if not isinstance(net, dict) or "_target_" not in net:
        return None
    return _params(json.dumps(net, sort_keys=True))


def _k_by_block(group: Group) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for run in group.runs:
        for block, values in (run.extra.get("k") or {}).items():
            vals = values if isinstance(values, list) else [values]
            if vals:
                out.setdefault(int(block), []).append(statistics.fmean(vals))
    return dict(sorted(out.items()))


def plot_k(report: PaperReport, out_dir: Path) -> Path | None:
    groups = [(g, _k_by_block(g)) for g in report.groups]
    groups = [(g, k) for g, k in groups if k]
    if not groups:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (g, k) in enumerate(groups):
        blocks = list(k)
        means = [statistics.fmean(v) for v in k.values()]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in k.values()]
        ax.errorbar(blocks, means, yerr=stds, marker="o", capsize=3, color=f"C{i % 10}",
                    label=f"{group_label(g)} (n={len(g.runs)})")  # fmt: skip
    ax.axhspan(-0.1, 0.0, color="grey", alpha=0.15, label="init U(-0.1, 0)")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("block n (plain steps at stage starts have no k)")
    ax.set_ylabel("learned k_n (mean ± std over seeds)")
    return finish(fig, ax, "LM-ResNet: learned k_n per block", out_dir / "results_k_per_block.png")


def plot_error_vs_params(report: PaperReport, out_dir: Path, metric: str = "test/error"):
    plt = pyplot()
    series: dict[str, list[tuple[int, float, float, str]]] = {}
    for row in [*report.rows, *report.variant_rows]:
        if row.metric != metric:
            continue
        config = row.group.runs[0].config if row.group else recipe_config(row.experiment)
        n = params_of(config)
        if n is None:
            continue
        net = ((config or {}).get("model") or {}).get("net", {})
        arch = ("LM-ResNet" if net.get("lm") else "ResNet") + (
            " + SD" if net.get("stochastic_depth") else ""
        )
        recipe = row.group is None or row.group.recipe
        if recipe and row.paper is not None:
            series.setdefault(f"{arch}, paper", []).append((n, row.paper, 0.0, row.experiment))
        if row.stat.n:
            kind = "ours" if recipe else "ours, different config"
            series.setdefault(f"{arch}, {kind}", []).append(
                (n, row.stat.mean, row.stat.std or 0.0, row.experiment)
            )
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    style = {"paper": ("x", "--"), "ours": ("o", "-"), "ours, different config": ("s", ":")}
    for name, pts in sorted(series.items()):
        arch, kind = name.split(", ", 1)
        marker, line = style[kind]
        pts.sort()
        color = {"LM-ResNet": "C0", "ResNet": "C3"}.get(arch, "C2")
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                    marker=marker, ls=line, color=color, capsize=3, label=name,
                    mfc="none" if kind != "paper" else None)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("parameters (ours, from the run's or the recipe's config)")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(alpha=0.3)
    title = "LM-ResNet vs ResNet: error vs parameters"
    return finish(fig, ax, title, out_dir / "results_error_vs_params.png")


def plots(report: PaperReport, out_dir: Path) -> list[Path]:
    return [p for p in (plot_k(report, out_dir), plot_error_vs_params(report, out_dir)) if p]
