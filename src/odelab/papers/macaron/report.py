"""Macaron's report plot and study view (the ``odelab.report`` extension point).

``results_macaron_vs_transformer.png``: per task (``iwslt14``, ``wmt14_base``, ``multi30k``,
...: the setting name without its ``macaron_`` / ``transformer_`` prefix), Macaron beside the
Transformer baseline: the paper's value (hatched) and ours (mean ± std over seeds, one bar
per config; a different config than the recipe is labelled by its hash). One panel per metric
that has any value: test BLEU, and test perplexity (the only number small CPU runs give that
is not at the noise floor).

View ``cpu_study.md`` (``cpu_study.sh``): Macaron vs Transformer on Multi30k, validation and
test loss/BLEU mean ± std over seeds, and seconds per epoch.
"""

from __future__ import annotations

from pathlib import Path

from odelab.report.plots import finish, pyplot
from odelab.report.render import md_table
from odelab.report.runs import Run
from odelab.report.table import PaperReport, Stat, mean_std
from odelab.report.views import View, by_experiment, seconds_per_epoch

METRICS = {"test/bleu": "test BLEU", "test/ppl": "test perplexity"}


def arch_task(setting: str) -> tuple[str, str] | None:
    """``macaron_iwslt14`` -> (Macaron, iwslt14); ``transformer_x`` / ``bert_base`` -> baseline;
    settings of neither family (GLUE fine-tuning) -> None."""
    if setting.startswith("macaron_"):
        return "Macaron", setting[len("macaron_") :]
    if setting.startswith("transformer_"):
        return "Transformer", setting[len("transformer_") :]
    if setting == "bert_base":
        return "Transformer", setting
    return None


def bars(report: PaperReport, metric: str) -> list[dict]:
    """``{task, arch, kind, value, std, n}`` per paper value and per config group of ours
    (``kind``: ``paper``, ``ours`` or ``ours [<config hash>]``), tasks in reference order."""
    out = []
    for name, setting in (report.reference.get("settings") or {}).items():
        at = arch_task(name)
        if at is None:
            continue
        v = (((setting or {}).get("metrics") or {}).get(metric) or {}).get("value")
        if isinstance(v, int | float):
            out.append({"task": at[1], "arch": at[0], "kind": "paper", "value": float(v),
                        "std": 0.0, "n": 0})  # fmt: skip
        for g in (g for g in report.groups if g.experiment == name):
            st = g.stat(metric)
            if st.n:
                kind = "ours" if g.recipe else f"ours [{g.config_hash}]"
                out.append({"task": at[1], "arch": at[0], "kind": kind, "value": st.mean,
                            "std": st.std or 0.0, "n": st.n})  # fmt: skip
    return out


def plot_macaron_vs_transformer(report: PaperReport, out_dir: Path) -> Path | None:
    panels = {m: b for m in METRICS if (b := bars(report, m))}
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, (metric, bs) in zip(axes[0], panels.items()):
        tasks = list(dict.fromkeys(b["task"] for b in bs))
        for i, task in enumerate(tasks):
            here = sorted((b for b in bs if b["task"] == task),
                          key=lambda b: (b["arch"] != "Macaron", b["kind"]))  # fmt: skip
            w = min(0.8 / len(here), 0.3)
            for j, b in enumerate(here):
                color = "C0" if b["arch"] == "Macaron" else "C3"
                paper = b["kind"] == "paper"
                x = i + w * (j + 0.5 - len(here) / 2)
                ax.bar(x, b["value"], w * 0.9, yerr=b["std"] or None, capsize=3,
                       color="white" if paper else color, edgecolor=color,
                       hatch="//" if paper else None)  # fmt: skip
                n = "" if paper else f" n={b['n']}"
                ax.annotate(f"{b['arch'][:3]} {b['kind']}{n}", (x, b["value"]), fontsize=6,
                            rotation=90, ha="center", va="bottom", xytext=(0, 8),
                            textcoords="offset points")  # fmt: skip
        ax.set_xticks(range(len(tasks)), tasks, fontsize=8)
        ax.set_ylabel(METRICS[metric])
        ax.set_xlim(-0.6, len(tasks) - 0.4)
        ax.set_ylim(0, max(b["value"] + b["std"] for b in bs) * 1.5)
        ax.grid(axis="y", alpha=0.3)
        ax.bar(0, 0, color="C0", label="Macaron, ours")
        ax.bar(0, 0, color="C3", label="Transformer, ours")
        ax.bar(0, 0, color="white", edgecolor="grey", hatch="//", label="paper")
        if ax is not axes[0][-1]:
            ax.set_title(METRICS[metric], fontsize=10)
            ax.legend(fontsize=7, loc="upper right")
    title = f"Macaron vs Transformer: {METRICS[list(panels)[-1]]}"
    return finish(fig, axes[0][-1], title, out_dir / "results_macaron_vs_transformer.png")


def plots(report: PaperReport, out_dir: Path) -> list[Path]:
    return [p for p in (plot_macaron_vs_transformer(report, out_dir),) if p]


def views() -> list[View]:
    return [View("cpu_study", ("runs/cpu_study",), cpu_study)]


STUDY_COLUMNS = [  # metric, column, decimals
    ("val/loss", "val loss (LS-CE)", 3),
    ("val/nll", "val NLL (nats/token)", 3),
    ("val/bleu", "val tok-lc BLEU (greedy)", 2),
    ("val/sacrebleu", "val sacreBLEU -lc (greedy)", 2),
    ("test/bleu", "test tok-lc BLEU (beam 5)", 2),
    ("test/sacrebleu", "test sacreBLEU -lc (beam 5)", 2),
]


def cpu_study(runs: list[Run], out_dir: Path) -> str:
    """Per experiment: seeds, each metric of :data:`STUDY_COLUMNS` mean ± std, s/epoch."""
    rows = []
    for exp, rs in by_experiment(runs).items():
        cells = [mean_std(Stat([r.metrics[k] for r in rs]), d) for k, _, d in STUDY_COLUMNS]
        rows.append([exp, str(len(rs)), *cells, f"{seconds_per_epoch(rs):.0f}"])
    head = ["experiment", "seeds", *(c[1] for c in STUDY_COLUMNS), "s/epoch (fit)"]
    return md_table(head, rows)
