"""LM-ResNet's own report plots and study views (the ``odelab.report`` extension point).

- ``results_k_per_block.png``: the learned k_n of u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + f_n(u_n)
  per block (mean ± std over seeds; per-channel k averaged over channels), one line per config;
- ``results_error_vs_params.png``: test error against parameter count, LM-ResNet and ResNet, the
  paper's values at our recipe's parameter count and ours (the paper's Figure/Table 1 view).

Views (``cpu_study.md``, ``compression.md``): the CPU-scale study (``cpu_study.sh``: test
accuracy mean ± std over seeds, learned k_n per seed) and the parameter-compression analysis
(``compression_study.sh`` with the CPU study: accuracy against parameters per training scale,
learned k_n per run, ``k_per_block.png``, ``compression.png``).
"""

from __future__ import annotations

import functools
import json
import statistics
from pathlib import Path

from odelab.report.plots import finish, group_label, pyplot
from odelab.report.render import md_table
from odelab.report.runs import Run
from odelab.report.table import Group, PaperReport, Stat, mean_std, recipe_config
from odelab.report.views import View, by_experiment, seconds_per_epoch


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


# -- study views ----------------------------------------------------------------------------------
def views() -> list[View]:
    return [
        View("cpu_study", ("runs/cpu_study",), cpu_study),
        View("compression", ("runs/cpu_study", "runs/compression"), compression),
    ]


def cpu_study(runs: list[Run], out_dir: Path) -> str:
    """Test accuracy (%) mean ± std over seeds, per seed and s/epoch; learned k_n per seed."""
    rows = []
    for exp, rs in by_experiment(runs).items():
        accs = [100 * r.metrics["test/acc"] for r in rs]
        per = ", ".join(f"{a:.2f} (s{r.seed})" for a, r in zip(accs, rs))
        t = seconds_per_epoch(rs)
        rows.append([exp, str(len(rs)), mean_std(Stat(accs), 2), per, f"{t:.0f}"])
    head = ["experiment", "seeds", "test acc (%) mean ± std", "per seed", "s/epoch (fit)"]
    out = [md_table(head, rows)]
    for exp, rs in by_experiment(runs).items():
        if not rs[0].extra.get("k"):
            continue
        blocks = sorted(rs[0].extra["k"], key=int)
        out.append(f"Learned k_n, {exp} (init U(-0.1, 0)); one row per seed:")
        cells = [[str(r.seed), *(f"{r.extra['k'][b][0]:+.3f}" for b in blocks)] for r in rs]
        out.append(md_table(["seed", *(f"block {b}" for b in blocks)], cells))
    return "\n\n".join(out)


def scale_of(run: Run) -> str:
    """The training scale: training files / subset, epochs, test subset."""
    d, t = run.config["data"], run.config["trainer"]
    files = d.get("train_files") or ["all"]
    n_train = d.get("train_subset") or f"{10_000 * len(files)} ({len(files)} CIFAR batch files)"
    n_test = d.get("test_subset") or "all 10k"
    return f"train {n_train}, {t['max_epochs']} epochs, test {n_test}"


def compression(runs: list[Run], out_dir: Path) -> str:
    """Accuracy against parameters per (scale, depth, LM or not), learned k_n of every LM run;
    writes ``k_per_block.png`` and ``compression.png``. Runs that differ in training images,
    epochs or test images form separate scales and are never compared with each other."""
    from odelab.papers.lm_resnet import LMResNet
    from odelab.papers.lm_resnet.analysis import plot_k as plot_k_runs

    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        net = r.config["model"]["net"]
        groups.setdefault((scale_of(r), net["depth"], bool(net["lm"])), []).append(r)
    rows = []
    points: dict[tuple[str, bool], list[tuple[int, float]]] = {}
    for (scale, depth, lm), rs in sorted(groups.items()):
        kw = {k: v for k, v in rs[0].config["model"]["net"].items() if not k.startswith("_")}
        net = LMResNet(**kw)
        params = sum(p.numel() for p in net.parameters())
        accs = [100 * r.metrics["test/acc"] for r in rs]
        spread = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else " (one seed)"
        mean = statistics.mean(accs)
        name = f"{'LM-ResNet' if lm else 'ResNet'}-{depth}"
        rows.append([scale, str(depth), name, f"{params:,}", str(len(net.ks)), str(len(rs)),
                     f"{mean:.2f}{spread}"])  # fmt: skip
        points.setdefault((scale, lm), []).append((params, mean))
    head = ["scale", "depth", "network", "params", "LM blocks", "seeds", "test acc (%) mean ± std"]
    k_runs = {}
    for r in runs:
        if r.extra.get("k"):
            epochs = r.config["trainer"]["max_epochs"]
            k_runs[f"d{r.config['model']['net']['depth']} s{r.seed} {epochs} ep"] = r.extra["k"]
    k_rows = []
    for label, ks in k_runs.items():
        by_block = sorted(ks.items(), key=lambda t: int(t[0]))
        k_rows.append(
            [label, ", ".join(f"{int(b)}: {statistics.mean(v):+.3f}" for b, v in by_block)]
        )
    allk = [v for ks in k_runs.values() for vs in ks.values() for v in vs]
    k_range = f"All learned k_n lie in [{min(allk):+.3f}, {max(allk):+.3f}]." if allk else ""
    plot_k_runs(k_runs, out_dir / "k_per_block.png", title="learned k_n per block, CPU-scale runs")
    _plot_compression(points, out_dir / "compression.png")
    k_table = md_table(["run", "k_n by block (paper convention)"], k_rows)
    return f"{md_table(head, rows)}\n\n{k_table}\n\n{k_range}"


def _plot_compression(points: dict[tuple[str, bool], list], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.4), dpi=100)
    for (scale, lm), pts in sorted(points.items()):
        label = f"{'LM-ResNet' if lm else 'ResNet'} ({scale})"
        ax.plot(*zip(*sorted(pts)), marker="o" if lm else "s", ls="-" if lm else "--", label=label)
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs parameters, CPU scale (widths 8/16/32)", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
