"""Overlay the rollout error bands (25/50/75 %) of several runs' ``rollout_bands.npz``.

python experiments/pdenet/compare_bands.py OUT.png LABEL=path/rollout_bands.npz ...
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from odelab.papers.pdenet.report import plot_bands


def main(argv: list[str]) -> None:
    out, runs = Path(argv[0]), {}
    for arg in argv[1:]:
        label, path = arg.split("=", 1)
        z = np.load(path)
        runs[label] = (z["t"], {k: z[k] for k in z.files if k != "t"})
    plot_bands(runs, out, title="relative rollout error")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
