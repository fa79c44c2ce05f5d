"""PDE-Net's report plot (the ``odelab.report`` extension point): rollout error bands.

``results_rollout_bands.png``: the relative L2 error ||û(t) − u(t)|| / ||u(t)|| of long test
rollouts against t, median (line) and 25–75 % band over test samples (shaded), log y, as in
the official ``errs_compare.py``. First panel (when several settings/configs have bands): the
final model of each; then one panel per setting/config with the final model and the per-stage
models (``stage<s>_blocks<n>``: the model after stage s, n δt-blocks). Read from the
``rollout_bands.npz`` each test run writes in its run directory (kept copies:
``<record>_bands.npz`` next to ``<record>.json``); a run without one draws nothing.
:func:`plot_bands` draws one run's ``rollout_bands.png`` (the module calls it at test end).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from odelab.report.plots import finish, group_label, pyplot
from odelab.report.table import PaperReport

log = logging.getLogger(__name__)

FILES = ("rollout_bands.npz", "bands.npz")


def rollout_bands(report: PaperReport) -> list[dict]:
    """One entry per run with a bands file: ``{experiment, label, seed, t, bands, file}``;
    ``bands[name]`` is the (3, len(t)) array of 25/50/75 % error percentiles."""
    out = []
    for g in report.groups:
        for run in g.runs:
            path = run.file(*FILES)
            if path is None:
                log.info("pdenet: %s (seed %s) kept no rollout_bands.npz: no band", g.experiment,
                         run.seed)  # fmt: skip
                continue
            with np.load(path) as z:
                bands = {k: z[k] for k in z.files if k != "t"}
                t = z["t"]
            out.append({"experiment": g.experiment, "label": group_label(g), "seed": run.seed,
                        "t": t, "bands": bands, "file": path})  # fmt: skip
    return out


def _band(ax, t, b, label: str, color) -> None:
    ax.semilogy(t, b[1], color=color, label=label)
    ax.fill_between(t, b[0], b[2], color=color, alpha=0.2)


def plot_rollout_bands(report: PaperReport, out_dir: Path) -> Path | None:
    runs = rollout_bands(report)
    if not runs:
        return None
    plt = pyplot()
    panels = ([None] if len(runs) > 1 else []) + runs
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(5 * ncols, 4 * nrows), squeeze=False,
                             sharey=True)  # fmt: skip
    for ax in grid.flat[len(panels) :]:  # a grid with room to spare: drop the empty cells
        fig.delaxes(ax)
    axes = list(grid.flat[: len(panels)])
    for ax, panel in zip(axes, panels):
        if panel is None:  # the final model of every run
            for i, r in enumerate(runs):
                _band(ax, r["t"], r["bands"]["final"], f"{r['label']} s{r['seed']}", f"C{i}")
            name = "final models"
        else:
            for i, (k, b) in enumerate(panel["bands"].items()):
                _band(ax, panel["t"], b, k, f"C{i}")
            name = f"{panel['label']} (seed {panel['seed']})"
        ax.set_xlabel("t")
        ax.grid(alpha=0.3, which="both")
        if ax is not axes[-1]:
            ax.set_title(name, fontsize=9)
            ax.legend(fontsize=7, loc="lower right")
    for row in grid:
        row[0].set_ylabel("relative L2 error: median, 25-75 % band")
    return finish(fig, axes[-1], name, out_dir / "results_rollout_bands.png")


def plots(report: PaperReport, out_dir: Path) -> list[Path]:
    return [p for p in (plot_rollout_bands(report, out_dir),) if p]


def plot_bands(runs: dict[str, tuple[np.ndarray, dict]], path: Path, title: str = "") -> None:
    """Median and 25–75 % band of the relative error against time, log y (``errs_compare.py``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run, (t, bands) in runs.items():
        for name, b in bands.items():
            label = f"{run} {name}".strip()
            (line,) = ax.semilogy(t, b[1], label=label)
            ax.fill_between(t, b[0], b[2], color=line.get_color(), alpha=0.25)
    ax.set_xlabel("t")
    ax.set_ylabel("relative error (25/50/75 %)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
