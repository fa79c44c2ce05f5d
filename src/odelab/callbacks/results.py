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

import json
import logging
import os
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from odelab.utils.checkpoint import in_dir, rebase_checkpoint_paths
from odelab.utils.errors import storage_error
from odelab.utils.provenance import git_commit, hardware
from odelab.utils.record import (
    interruption,
    keep_previous,
    load_reference,
    number,
    reference_rows,
    resume_point,
)
from odelab.utils.wandb import log_results_table

log = logging.getLogger(__name__)


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
        rebase_checkpoint_paths(checkpoint, trainer.checkpoint_callbacks)

    # -- collection ------------------------------------------------------------------------
    def _collect(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, epochs: int | None = None
    ) -> None:
        for k, v in trainer.callback_metrics.items():
            x = number(v)
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
                number(getattr(ckpt, "best_model_score", None)) if best else None
            )
        self.write(trainer, status="fit_done")

    def on_test_end(self, trainer, pl_module) -> None:
        self._collect(trainer, pl_module)
        self.extra["tested_ckpt"] = trainer.ckpt_path
        self.write(trainer, status="finished")
        rows = reference_rows(self.reference, self.metrics)
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
            self.extra["resume_checkpoint"] = resume_point(trainer, exception, self.path.parent)
            status = "interrupted"
        else:
            self.extra["error"] = f"{type(exception).__name__}: {exception}"
            status = "failed"
        try:
            self.write(trainer, status=status)
        except Exception as e:
            log.warning("could not write %s (%s): %s", self.path, status, e)

    # -- output ----------------------------------------------------------------------------
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

    def write(self, trainer: pl.Trainer, status: str) -> None:
        if not trainer.is_global_zero:
            return
        text = json.dumps(self.as_dict(trainer, status), indent=2, default=str) + "\n"
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self._wrote:  # a record of an earlier run in this dir: renamed, never lost
                keep_previous(self.path)
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
