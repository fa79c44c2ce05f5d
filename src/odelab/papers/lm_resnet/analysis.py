"""The paper's analysis of the learned k_n: a per-block plot, from a live network or results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# The stability range the paper derives for a gradient-flow f (quoted second-hand, Q).
STABLE_K = (-1.0, 1.0)


def k_summary(ks: Mapping[str | int, Sequence[float]]) -> tuple[list[int], np.ndarray]:
    """Block indices (sorted) and an ``[n_blocks, 3]`` array of (mean, min, max) of each k_n
    (one value per block for per-layer k, one per channel for per-channel k)."""
    blocks = sorted(int(b) for b in ks)
    by_int = {int(b): np.asarray(v, dtype=float).ravel() for b, v in ks.items()}
    stats = np.array([[by_int[b].mean(), by_int[b].min(), by_int[b].max()] for b in blocks])
    return blocks, stats.reshape(len(blocks), 3)


def plot_k(
    runs: Mapping[str, Mapping[str | int, Sequence[float]]],
    path: str | Path,
    title: str = "learned k_n per block (paper convention)",
) -> Path:
    """Save a PNG of k_n against block index, one line per run (label -> {block: values});
    per-channel k are drawn as the channel mean with a min-max band. Returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.0, 3.4), dpi=100)
    for label, ks in runs.items():
        if not ks:
            continue
        blocks, st = k_summary(ks)
        line = ax.plot(blocks, st[:, 0], marker="o", ms=3, lw=1, label=label)[0]
        if np.any(st[:, 2] > st[:, 1]):
            ax.fill_between(blocks, st[:, 1], st[:, 2], color=line.get_color(), alpha=0.2)
    ax.axhline(0.0, color="k", lw=0.6)
    for y in STABLE_K:
        ax.axhline(y, color="grey", lw=0.6, ls=":")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("block n")
    ax.set_ylabel("k_n")
    ax.set_title(title, fontsize=9)
    if len(runs) > 1:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
