"""The results contract: every run writes ``results.json`` (and a W&B table when W&B is on).

``results.json``::

    {"experiment", "paper", "seed", "status", "metrics": {"test/acc": ...},
     "reference": {metric: {"value", "source", "flag", ...}}, "config": <resolved>,
     "hardware", "wall_time_s", "train_time_s", "attempts", "git_commit", ...}

``reference`` is the entry for this experiment in ``experiments/<paper>/reference.yaml``.
``status``: ``finished`` (tested), ``fit_done`` (trained, not tested yet), ``interrupted``
(SIGTERM or Ctrl-C; ``resume_checkpoint`` = ``{"path", "epoch", "global_step"}`` of the checkpoint
a restart in the same directory resumes) or ``failed`` (``error``). ``train_time_s`` and the
train/val metrics are carried in the checkpoints, so a resumed run's record covers every attempt
(``attempts``); work lost between the last checkpoint and an interruption is not counted.
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
from contextlib import suppress
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml

from odelab.utils.checkpoint import in_dir
from odelab.utils.errors import storage_error
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


def interruption(exception: BaseException) -> str | None:
    """``"SIGTERM"`` / ``"SIGINT"`` when ``exception`` is how Lightning stops on that signal."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(exception, SIGTERMException):
        return "SIGTERM"
    if isinstance(exception, KeyboardInterrupt):
        return "SIGINT"
    return None


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
        self._train_time = 0.0  # training (fit) time of every attempt that led here
        self._fit_t0: float | None = None
        self._attempts = 0
        self._restored_record = False
        self._restore_state = False  # only a checkpoint resumed by fit carries the record on
        self._wrote = False
        self.git_commit = git_commit()

    def on_run_config(self, config: dict) -> None:
        """Receive the resolved run config (called by ``odelab.train``)."""
        self.config = config

    def restore_record(self, previous: dict[str, Any]) -> None:
        """Carry a finished record into this one (``retest=true``: testing again without
        training): its training time, train/val metrics, epochs, steps and best checkpoint stay;
        the test metrics are measured anew."""
        self._restored_record = True
        self.metrics = {
            k: v for k, v in (previous.get("metrics") or {}).items() if not k.startswith("test/")
        }
        self._train_time = float(previous.get("train_time_s") or 0.0)
        self._attempts = int(previous.get("attempts") or 0)
        for k in ("epochs", "global_step", "best_model_path", "best_model_score"):
            if k in previous:
                self.extra[k] = previous[k]
        self.extra["retested"] = int(previous.get("retested") or 0) + 1

    # -- checkpointed: a resumed run's record covers all its attempts -----------------------
    def train_time(self) -> float:
        running = time.perf_counter() - self._fit_t0 if self._fit_t0 is not None else 0.0
        return self._train_time + running

    def state_dict(self) -> dict[str, Any]:
        train_val = {k: v for k, v in self.metrics.items() if not k.startswith("test/")}
        return {
            "train_time_s": self.train_time(),
            "metrics": train_val,
            "attempts": self._attempts,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self._restore_state:  # trainer.test(ckpt_path=...) restores callbacks too
            return
        self._train_time = float(state.get("train_time_s", 0.0))
        self.metrics.update(state.get("metrics") or {})
        self._attempts = int(state.get("attempts", 0))

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        """A run resumed in a directory other than the one its checkpoint was written in (a
        copied or moved run dir) keeps ModelCheckpoint's best/last/top-k paths only where they
        are files of *this* run's checkpoint dir: never another directory's files."""
        self._restore_state = trainer.state.fn == "fit"
        states = checkpoint.get("callbacks") or {}
        for cb in trainer.checkpoint_callbacks:
            state, dirpath = (
                states.get(getattr(cb, "state_key", None)),
                getattr(cb, "dirpath", None),
            )
            if (
                not isinstance(state, dict)
                or not dirpath
                or state.get("dirpath") in (None, dirpath)
            ):
                continue
            log.info("checkpoint written in %s; its paths now point into %s", state["dirpath"],
                     dirpath)  # fmt: skip
            state["dirpath"] = dirpath
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if key in state:
                    state[key] = in_dir(state[key], dirpath) or ""
            if "best_k_models" in state:
                state["best_k_models"] = {
                    in_dir(k, dirpath): v
                    for k, v in state["best_k_models"].items()
                    if in_dir(k, dirpath)
                }
            if not state.get("best_model_path"):
                state["best_model_score"] = None

    # -- collection ------------------------------------------------------------------------
    def _collect(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, epochs: int | None = None
    ) -> None:
        for k, v in trainer.callback_metrics.items():
            x = _number(v)
            if x is not None and "/" in k:
                self.metrics[k] = x
        summary = getattr(pl_module, "results_summary", None)
        if callable(summary):
            self.extra.update(summary())
        if not self._restored_record:  # a re-test keeps the training run's epochs and steps
            self.extra["epochs"] = trainer.current_epoch if epochs is None else epochs
            self.extra["global_step"] = trainer.global_step

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_t0 = time.perf_counter()
        self._attempts += 1

    def _stop_clock(self) -> None:
        if self._fit_t0 is not None:
            self._train_time += time.perf_counter() - self._fit_t0
            self._fit_t0 = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # completed epochs: Lightning counts this one only after the hook
        self._collect(trainer, pl_module, epochs=trainer.current_epoch + 1)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._stop_clock()
        self._collect(trainer, pl_module)
        ckpt = trainer.checkpoint_callback
        if ckpt is not None:
            best = (
                in_dir(getattr(ckpt, "best_model_path", None), ckpt.dirpath)
                if ckpt.dirpath
                else None
            )
            self.extra["best_model_path"] = best
            self.extra["best_model_score"] = (
                _number(getattr(ckpt, "best_model_score", None)) if best else None
            )
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
        """``interrupted`` (SIGTERM, Ctrl-C: with the checkpoint a restart resumes and its
        epoch/step) or ``failed`` (with the error). Never raises: the run's own error wins."""
        self._stop_clock()
        with suppress(Exception):
            self._collect(trainer, pl_module)
        by = interruption(exception)
        if by is not None:
            self.extra.pop("error", None)
            self.extra["interrupted_by"] = by
            self.extra["resume_checkpoint"] = self._resume_point(trainer, exception)
            status = "interrupted"
        else:
            self.extra["error"] = f"{type(exception).__name__}: {exception}"
            status = "failed"
        try:
            self.write(trainer, status=status)
        except Exception as e:
            log.warning("could not write %s (%s): %s", self.path, status, e)

    def _resume_point(self, trainer, exception: BaseException) -> dict[str, Any] | None:
        """The checkpoint a restart in this directory resumes (saved now for a SIGTERM during
        fit), with its epoch and step."""
        from odelab.callbacks.control import PreemptionCheckpoint
        from odelab.utils.checkpoint import checkpoint_position, resume_candidates

        for cb in trainer.callbacks:
            if isinstance(cb, PreemptionCheckpoint):
                try:
                    cb.save_for(trainer, exception)
                except Exception as e:
                    log.error("could not save a checkpoint at the interruption: %s", e)
        for path in resume_candidates(self.path.parent):
            pos = checkpoint_position(path)
            if pos is not None:
                return pos
        return None

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
            "train_time_s": self.train_time(),
            "attempts": self._attempts,
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
        text = json.dumps(self.as_dict(trainer, status), indent=2, default=str) + "\n"
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._keep_previous()
            self._wrote = True
            tmp.write_text(text)
            os.replace(tmp, self.path)
        except OSError as e:
            with suppress(OSError):
                tmp.unlink()
            clear = storage_error(e, self.path)
            if clear is None:
                raise
            raise clear from e
        log.info("results (%s) written to %s", status, self.path)
