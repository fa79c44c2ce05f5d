"""``--from`` sources: a directory of runs, ``wandb:<entity>/<project>``, ``wandb-offline:DIR``."""

from __future__ import annotations

from pathlib import Path

from odelab.report import wandb_io
from odelab.report.runs import Run, local_runs, log_dir
from odelab.report.table import EXPERIMENTS_DIR


def default_sources(paper: str) -> list[str]:
    """The log dir and the paper's kept run records (``experiments/<paper>/runs``)."""
    return [str(log_dir()), str(EXPERIMENTS_DIR / paper / "runs")]


def collect(
    sources: list[str], paper: str | None = None, missing_ok: bool = False, api=None
) -> list[Run]:
    """Every run record of ``sources``; ``paper`` narrows W&B API queries to its group.

    ``missing_ok`` skips local directories that do not exist (the defaults); a source the user
    named must exist. ``api`` replaces ``wandb.Api()`` (tests).
    """
    runs: list[Run] = []
    for src in sources:
        if src.startswith("wandb:"):
            path = src[len("wandb:") :].strip("/")
            if path.count("/") != 1:
                raise ValueError(f"--from {src}: expected wandb:<entity>/<project>")
            runs += wandb_io.api_runs(path, paper=paper, api=api)
        elif src.startswith("wandb-offline:"):
            runs += wandb_io.offline_runs(src[len("wandb-offline:") :])
        elif missing_ok and not Path(src).exists():
            continue
        else:
            runs += local_runs(src)
    return runs
