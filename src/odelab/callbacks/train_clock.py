"""Training wall time (evaluation excluded) and metrics against it: the speed figure's data.

:class:`TrainClock` sums the wall time of training batches only (validation, testing and
checkpointing are outside the clock), logs ``time/train_s`` and, when the module exposes
``passes()``, the forward/backward pass counts ``passes/<kind>``. After every validation it
records a point ``(train_s, <curve_keys>...)``; at the end of fit it writes
``<output_dir>/time_curve.json`` and ``time_curve.png`` (accuracy vs training time, like the
YOPO repo's time figures) and logs the PNG as a W&B image when a W&B logger is attached.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch

log = logging.getLogger(__name__)


class TrainClock(pl.Callback):
    """Args:
    output_dir: where the curve (JSON + PNG) goes.
    curve_keys: metrics recorded against training time at each validation.
    title: plot title (e.g. the experiment name).
    clock: ``wall`` (``time.perf_counter``) or ``process`` (``time.process_time``: the CPU time
        of this process, all its threads; on a CPU shared with other jobs it measures the work
        done rather than the share of the machine obtained; equal to wall time for a
        one-thread run on an idle core). GPU runs use ``wall``.
    max_train_s: stop training once this much training time has passed (a wall-clock budget
        that evaluation does not eat into; set ``trainer.min_epochs=0`` so it may stop
        mid-epoch); a validation is forced at the stop, so the curve ends at the budget.
    """

    def __init__(
        self,
        output_dir: str,
        curve_keys: Sequence[str] = ("val/robust_acc", "val/acc"),
        title: str = "",
        max_train_s: float | None = None,
        clock: str = "wall",
    ):
        if clock not in ("wall", "process"):
            raise ValueError(f"TrainClock clock={clock!r}: use wall or process")
        self.clock = clock
        self._now = time.perf_counter if clock == "wall" else time.process_time
        self.output_dir = Path(output_dir)
        self.curve_keys = list(curve_keys)
        self.title = title
        self.max_train_s = max_train_s
        self.train_s = 0.0
        # this process's per-batch times on ``clock`` and on the wall (not checkpointed)
        self.batch_s: list[float] = []
        self.batch_wall_s: list[float] = []
        self.points: list[dict] = []
        self._t0: float | None = None

    def state_dict(self) -> dict:
        return {"train_s": self.train_s, "points": self.points}

    def load_state_dict(self, state: dict) -> None:
        self.train_s, self.points = state["train_s"], list(state["points"])

    @staticmethod
    def _sync(pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(pl_module)
        self._t0, self._w0 = self._now(), time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t0 is None:
            return
        self._sync(pl_module)
        dt = self._now() - self._t0
        self.train_s += dt
        self.batch_s.append(dt)
        self.batch_wall_s.append(time.perf_counter() - self._w0)
        self._t0 = None
        if self.max_train_s is not None and self.train_s >= self.max_train_s:
            trainer.should_stop = True
            log.info("training-time budget %.0f s reached at step %d", self.max_train_s,
                     trainer.global_step)  # fmt: skip

    def _passes(self, pl_module) -> dict:
        return dict(pl_module.passes()) if hasattr(pl_module, "passes") else {}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pl_module.log("time/train_s", self.train_s, rank_zero_only=True)
        for k, v in self._passes(pl_module).items():
            pl_module.log(f"passes/{k}", float(v), rank_zero_only=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        point = {"train_s": self.train_s, "epoch": trainer.current_epoch,
                 "step": trainer.global_step, **self._passes(pl_module)}  # fmt: skip
        for k in self.curve_keys:
            if k in m:
                point[k] = float(m[k])
        self.points.append(point)
        log.info("t_train=%.1fs %s", self.train_s, {k: point.get(k) for k in self.curve_keys})

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "time_curve.json").write_text(json.dumps(self.points, indent=1))
        xlabel = "training " + ("wall" if self.clock == "wall" else "process CPU") + " time (s)"
        png = plot_curve(self.points, self.curve_keys, self.output_dir / "time_curve.png",
                         self.title, xlabel)  # fmt: skip
        if png is None:
            return
        for lg in trainer.loggers:
            if "wandb" in type(lg).__name__.lower():
                try:
                    import wandb

                    lg.experiment.log({"time_curve": wandb.Image(str(png))})
                except Exception as e:  # W&B never turns a result into a crash
                    log.warning("could not log the time curve to W&B: %s", e)


def plot_curve(
    points: list[dict],
    keys: Sequence[str],
    path: Path,
    title: str = "",
    xlabel: str = "training wall time (s)",
) -> Path | None:
    """Accuracy (%) vs training time (s), one line per key; None without points or matplotlib."""
    if not points:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib missing: no %s", path.name)
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for k in keys:
        pts = [(p["train_s"], 100 * p[k]) for p in points if k in p]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=k)
    ax.set_xlabel(xlabel + ", evaluation excluded")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
