"""Where a record comes from: the commit of the code and the machine that ran it."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from odelab.utils.config import REPO_ROOT

if TYPE_CHECKING:
    import lightning.pytorch as pl


@functools.cache
def git_commit(root: Path = REPO_ROOT) -> str | None:
    """HEAD of the checkout, with ``-dirty`` when there are uncommitted changes.

    Cached for the process: read when the first run starts, i.e. when its code was imported
    (a sweep runs every job in one process), not when results are written. Without git (a copy
    of the tree on a lent GPU machine) ``ODELAB_GIT_COMMIT`` names the commit the copy came from.
    """
    fallback = os.environ.get("ODELAB_GIT_COMMIT") or None
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return fallback
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return fallback


def hardware(trainer: pl.Trainer) -> dict[str, Any]:
    """The machine a run ran on, as its record names it."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "accelerator": type(trainer.accelerator).__name__.replace("Accelerator", "").lower(),
        "devices": trainer.num_devices,
        "num_nodes": trainer.num_nodes,
        "world_size": trainer.world_size,
        "precision": str(trainer.precision),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
