"""The results contract: every run writes ``results.json`` (and a W&B table when W&B is on).

``results.json``::

    {"experiment", "paper", "seed", "status", "metrics": {"test/acc": ...},
     "reference": {metric: {"value", "source", "flag", ...}}, "config": <resolved>,
     "hardware", "wall_time_s", "git_commit", ...}

``reference`` is the entry for this experiment in ``experiments/<paper>/reference.yaml``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml

from odelab.utils.wandb import log_results_table

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]


def load_reference(reference_file: str | os.PathLike | None, experiment: str) -> dict:
    """The paper's numbers for ``experiment`` in a ``reference.yaml`` ({} where none)."""
    if not reference_file or not Path(reference_file).is_file():
        return {}
    with open(reference_file) as f:
        data = yaml.safe_load(f) or {}
    return dict((data.get("settings") or {}).get(experiment, {}).get("metrics", {}) or {})


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


def _number(v: Any) -> float | None:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            return None
        v = v.item()
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class ResultsWriter(pl.Callback):
    """Write ``results.json`` in ``output_dir`` after fit and again after test (and on failure)."""

    def __init__(
        self,
        output_dir: str,
        paper: str,
        experiment: str,
        seed: int,
        reference_file: str | None = None,
        dataset: str | None = None,
        filename: str = "results.json",
    ):
        self.path = Path(output_dir) / filename
        self.paper, self.experiment, self.seed, self.dataset = paper, experiment, seed, dataset
        self.reference = load_reference(reference_file, experiment)
        self.metrics: dict[str, float] = {}
        self.config: dict | None = None
        self.extra: dict[str, Any] = {}
        self._t0 = time.perf_counter()
        self._train_time = 0.0
        self._fit_t0: float | None = None
        self._wrote = False
        self.git_commit = git_commit()

    def on_run_config(self, config: dict) -> None:
        """Receive the resolved run config (called by ``odelab.train``)."""
        self.config = config

    # -- collection ------------------------------------------------------------------------
    def _collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for k, v in trainer.callback_metrics.items():
            x = _number(v)
            if x is not None and "/" in k:
                self.metrics[k] = x
        summary = getattr(pl_module, "results_summary", None)
        if callable(summary):
            self.extra.update(summary())
        self.extra["epochs"] = trainer.current_epoch
        self.extra["global_step"] = trainer.global_step

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._collect(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._fit_t0 is not None:
            self._train_time += time.perf_counter() - self._fit_t0
            self._fit_t0 = None
        self._collect(trainer, pl_module)
        ckpt = trainer.checkpoint_callback
        if ckpt is not None:
            self.extra["best_model_path"] = getattr(ckpt, "best_model_path", None) or None
            self.extra["best_model_score"] = _number(getattr(ckpt, "best_model_score", None))
        self.write(trainer, status="fit_done")

    def on_test_end(self, trainer, pl_module) -> None:
        self._collect(trainer, pl_module)
        self.extra["tested_ckpt"] = trainer.ckpt_path
        self.write(trainer, status="finished")
        rows = self.rows()
        if trainer.is_global_zero:
            for r in rows:
                ours = "-" if r["ours"] is None else f"{r['ours']:.4g}"
                paper = "none" if r["paper"] is None else f"{r['paper']:.4g} [{r['flag']}]"
                log.info("%s: ours %s, paper %s", r["metric"], ours, paper)
            log_results_table(trainer.loggers, rows)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.extra["error"] = f"{type(exception).__name__}: {exception}"
        self.write(trainer, status="failed")

    # -- output ----------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """One row per reference metric (and per test metric without one): ours vs the paper."""
        names = list(self.reference) + [
            k for k in sorted(self.metrics) if k.startswith("test/") and k not in self.reference
        ]
        rows = []
        for name in names:
            ref = self.reference.get(name, {})
            ours, paper = self.metrics.get(name), _number(ref.get("value"))
            delta = ours - paper if ours is not None and paper is not None else None
            rows.append(
                {
                    "metric": name,
                    "ours": ours,
                    "paper": paper,
                    "delta": delta,
                    "flag": ref.get("flag"),
                    "source": ref.get("source"),
                }
            )
        return rows

    def as_dict(self, trainer: pl.Trainer, status: str) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "paper": self.paper,
            "dataset": self.dataset,
            "seed": self.seed,
            "status": status,
            "metrics": dict(sorted(self.metrics.items())),
            "reference": self.reference,
            "config": self.config,
            "hardware": hardware(trainer),
            "wall_time_s": time.perf_counter() - self._t0,
            "train_time_s": self._train_time,
            "git_commit": self.git_commit,
            **self.extra,
        }

    def _keep_previous(self) -> None:
        """A ``results.json`` left by an earlier run in this directory is renamed, never lost."""
        if self.path.exists() and not self._wrote:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.path.stat().st_mtime))
            backup = self.path.with_name(f"{self.path.stem}.{stamp}{self.path.suffix}")
            os.replace(self.path, backup)
            log.info("earlier results kept as %s", backup)

    def write(self, trainer: pl.Trainer, status: str) -> None:
        if not trainer.is_global_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._keep_previous()
        self._wrote = True
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.as_dict(trainer, status), indent=2, default=str) + "\n")
        os.replace(tmp, self.path)
        log.info("results (%s) written to %s", status, self.path)
