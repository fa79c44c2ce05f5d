"""Run records from every source: local ``results.json`` files, W&B runs, offline W&B dirs.

Every source yields :class:`Run`, the ``results.json`` contract (``odelab.callbacks.results``)
in one shape; nothing downstream knows where a run came from except ``Run.source``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odelab.utils.config import REPO_ROOT

log = logging.getLogger(__name__)

# results.json keys that are not "extra" (everything else a module adds, e.g. LM-ResNet's ``k``)
_CORE = {
    "experiment",
    "paper",
    "dataset",
    "seed",
    "status",
    "metrics",
    "reference",
    "config",
    "hardware",
    "wall_time_s",
    "train_time_s",
    "git_commit",
}
# directories a local scan never enters: W&B internals, checkpoints, Hydra and CSV-logger output
_SKIP_DIRS = {"wandb", "checkpoints", ".hydra", "csv", "__pycache__", ".git"}
_BACKUP = re.compile(r"^results\.\d{8}-\d{6}\.json$")  # ResultsWriter keeps older results so


@dataclass
class Run:
    """One run as the report sees it (the ``results.json`` contract)."""

    experiment: str
    paper: str | None
    seed: int | None
    status: str
    metrics: dict[str, float]
    config: dict | None
    source: str
    hardware: dict | str | None = None
    wall_time_s: float | None = None
    train_time_s: float | None = None
    git_commit: str | None = None
    time: float = 0.0  # when it was written (orders reruns of one seed; newest wins)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_results(cls, data: dict, source: str, time: float = 0.0) -> Run:
        metrics = {}
        for k, v in (data.get("metrics") or {}).items():
            x = _finite(v)
            if x is not None:
                metrics[k] = x
        return cls(
            experiment=str(data["experiment"]),
            paper=data.get("paper"),
            seed=data.get("seed"),
            status=str(data.get("status") or "unknown"),
            metrics=metrics,
            config=data.get("config"),
            source=source,
            hardware=data.get("hardware"),
            wall_time_s=_finite(data.get("wall_time_s")),
            train_time_s=_finite(data.get("train_time_s")),
            git_commit=data.get("git_commit"),
            time=time,
            extra={k: v for k, v in data.items() if k not in _CORE},
        )

    @property
    def error(self) -> str | None:
        return self.extra.get("error")

    def file(self, *names: str) -> Path | None:
        """A file the run left beside its record, for plots: ``<run dir>/<name>`` next to a
        ``results.json`` (or the output dir holding an offline ``wandb/offline-run-*``), or
        ``<stem>_<name>`` next to a kept copy ``<stem>.json``. None when absent (W&B API runs)."""
        src = Path(self.source)
        if self.source.startswith(("wandb:", "http")) or not src.exists():
            return None
        if src.is_dir():  # an offline W&B run: <output_dir>/wandb/offline-run-*
            dirs = [src.parent.parent] if src.parent.name == "wandb" else []
            candidates = [d / n for d in dirs for n in names]
        elif src.name == "results.json":
            candidates = [src.parent / n for n in names]
        else:  # a kept copy among others: only files named after it are its own
            candidates = [src.with_name(f"{src.stem}_{n}") for n in names]
        return next((c for c in candidates if c.is_file()), None)


def log_dir() -> Path:
    """Where runs write (``paths.log_dir``: ``$ODELAB_LOG_DIR`` or ``<checkout>/logs``)."""
    return Path(os.environ.get("ODELAB_LOG_DIR", REPO_ROOT / "logs"))


def _finite(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def is_results(data: Any) -> bool:
    """A dict that follows the results contract (a run record, not some other JSON file)."""
    return isinstance(data, dict) and {"experiment", "status", "metrics"} <= data.keys()


def local_runs(root: str | Path) -> list[Run]:
    """Every results record under ``root``: ``results.json`` of run directories, and kept copies
    (any ``*.json`` that follows the contract, e.g. ``experiments/<paper>/runs/*/*.json``).

    ``results.<stamp>.json`` (an earlier run in the same directory, kept by ResultsWriter) is
    superseded by that directory's ``results.json`` and skipped.
    """
    root = Path(root)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(_json_files(root))
    else:
        raise FileNotFoundError(f"no such run directory: {root} (pass --from <dir>)")
    runs = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            log.warning("skipping unreadable %s: %s", f, e)
            continue
        if is_results(data):
            runs.append(Run.from_results(data, source=str(f), time=f.stat().st_mtime))
        elif f.name == "results.json":  # a run record by name that is not one: say so
            what = f"a JSON {type(data).__name__}" if not isinstance(data, dict) else (
                f"an object without {sorted({'experiment', 'status', 'metrics'} - data.keys())}"
            )  # fmt: skip
            log.warning("skipping %s: %s, not a run record (odelab.callbacks.results)", f, what)
    return runs


def _json_files(root: Path):
    for p in root.iterdir():
        if p.is_dir():
            if p.name not in _SKIP_DIRS and not p.name.startswith("offline-run-"):
                yield from _json_files(p)
        elif p.suffix == ".json" and not _BACKUP.match(p.name):
            yield p
