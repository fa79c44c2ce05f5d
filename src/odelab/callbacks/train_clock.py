"""Training wall time (evaluation excluded) and metrics against it: the speed figure's data.

:class:`TrainClock` sums the wall time of training batches only (validation, testing and
checkpointing are outside the clock), logs ``time/train_s`` and, when the module exposes
``passes()``, the forward/backward pass counts ``passes/<kind>``. After every validation it
records a point ``(train_s, <curve_keys>...)``. With time marks (``eval_every_s`` and/or
``eval_marks_s``) it also evaluates the model on the datamodule's **test** split each time the
training clock passes a mark, and once at the end of training: clean accuracy and, when the
module has ``eval_attack()`` (the adversarial module's PGD, e.g. PGD-40 on MNIST), robust
accuracy, recorded as a point with ``mark_s``, ``test/acc``, ``test/robust_acc`` and ``test_n``.
At the end of fit it writes ``<output_dir>/time_curve.json`` (the points, in order) and
``time_curve.png`` (accuracy vs training time, like the YOPO repo's time figures) and logs the
PNG as a W&B image when a W&B logger is attached.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import RunningStage

log = logging.getLogger(__name__)

MARK_KEYS = ("test/robust_acc", "test/acc")  # what a time mark records


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
    eval_every_s: a time mark every this many seconds of training time (None: none).
    eval_marks_s: explicit time marks (s of training time), merged with ``eval_every_s``'s.
        At the first training batch that ends at or past a mark the model is evaluated on the
        whole test split (eval mode, outside the clock; several marks passed by one batch give
        one point). The evaluation runs in a forked RNG state, so the training run is the same
        with or without marks. One device only (a mark is a per-process decision).
    """

    def __init__(
        self,
        output_dir: str,
        curve_keys: Sequence[str] = ("val/robust_acc", "val/acc"),
        title: str = "",
        max_train_s: float | None = None,
        clock: str = "wall",
        eval_every_s: float | None = None,
        eval_marks_s: Sequence[float] | None = None,
    ):
        if clock not in ("wall", "process"):
            raise ValueError(f"TrainClock clock={clock!r}: use wall or process")
        if eval_every_s is not None and not eval_every_s > 0:
            raise ValueError(
                f"TrainClock eval_every_s={eval_every_s}: give seconds > 0, or null for no marks"
            )
        marks = sorted({float(m) for m in (eval_marks_s or ())})
        if marks and marks[0] <= 0:
            raise ValueError(f"TrainClock eval_marks_s={list(eval_marks_s)}: marks must be > 0")
        self.eval_every_s = None if eval_every_s is None else float(eval_every_s)
        self.eval_marks_s = marks
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
        self._test_loader = None

    @property
    def marks_on(self) -> bool:
        return self.eval_every_s is not None or bool(self.eval_marks_s)

    def last_mark(self, t0: float, t1: float) -> float | None:
        """The last time mark m with t0 < m <= t1 (None: no mark in that interval)."""
        cands = [m for m in self.eval_marks_s if t0 < m <= t1]
        if self.eval_every_s is not None:
            m = self.eval_every_s * math.floor(t1 / self.eval_every_s)
            if m > t0 and m > 0:
                cands.append(m)
        return max(cands) if cands else None

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
        before = self.train_s
        self.train_s += dt
        self.batch_s.append(dt)
        self.batch_wall_s.append(time.perf_counter() - self._w0)
        self._t0 = None
        if self.max_train_s is not None and self.train_s >= self.max_train_s:
            trainer.should_stop = True
            log.info("training-time budget %.0f s reached at step %d", self.max_train_s,
                     trainer.global_step)  # fmt: skip
        if self.marks_on and (mark := self.last_mark(before, self.train_s)) is not None:
            self.evaluate_mark(trainer, pl_module, mark)  # labelled by the last mark passed

    def on_train_end(self, trainer, pl_module) -> None:
        """With time marks, one more test evaluation at the end of training (the curve's end)."""
        last = next((p for p in reversed(self.points) if "mark_s" in p), None)
        if self.marks_on and (last is None or last["train_s"] < self.train_s):
            self.evaluate_mark(trainer, pl_module, None)

    def evaluate_mark(self, trainer, pl_module, mark: float | None) -> dict:
        """Clean and (with ``pl_module.eval_attack()``) robust accuracy on the whole test split,
        eval mode, at the current training time; appended to the curve and sent to the loggers
        as ``time_mark/*``. ``mark`` is the time mark it answers (None: the end of training)."""
        if trainer.world_size > 1:
            raise RuntimeError(
                "TrainClock time marks (eval_every_s / eval_marks_s) run on one device; on "
                f"{trainer.world_size} processes use the per-epoch validation curve instead"
            )
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "test_dataloader"):
            raise RuntimeError("TrainClock time marks need a datamodule with test_dataloader()")
        if self._test_loader is None:
            self._test_loader = dm.test_dataloader()
        attack = pl_module.eval_attack() if hasattr(pl_module, "eval_attack") else None
        dev = pl_module.device
        was, stage = pl_module.training, trainer.state.stage
        clean = robust = n = 0
        t0 = time.perf_counter()
        try:
            trainer.state.stage = RunningStage.TESTING  # evaluation batches: no augmentation
            pl_module.eval()
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                for batch in self._test_loader:
                    batch = pl_module.transfer_batch_to_device(batch, dev, 0)
                    x, y = dm.on_after_batch_transfer(batch, 0)
                    with torch.no_grad():
                        clean += int((pl_module(x).argmax(1) == y).sum())
                    if attack is not None:
                        adv = attack(x, y)
                        with torch.no_grad():
                            robust += int((pl_module(adv).argmax(1) == y).sum())
                    n += len(y)
        finally:
            trainer.state.stage = stage
            pl_module.train(was)
        if n == 0:
            raise RuntimeError("TrainClock time mark: the test split is empty")
        point = {"train_s": self.train_s, "mark_s": mark, "epoch": trainer.current_epoch,
                 "step": trainer.global_step, **self._passes(pl_module),
                 "test/acc": clean / n, "test_n": n}  # fmt: skip
        if attack is not None:
            point["test/robust_acc"] = robust / n
        self.points.append(point)
        metrics = {f"time_mark/{k.split('/')[1]}": point[k] for k in MARK_KEYS if k in point}
        metrics["time_mark/train_s"] = self.train_s
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)
        log.info("time mark %s: t_train=%.1fs, test acc %.4f, robust %s (%d images, %.1f s)",
                 mark, self.train_s, point["test/acc"], point.get("test/robust_acc"), n,
                 time.perf_counter() - t0)  # fmt: skip
        return point

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

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """A fit cut short (SIGTERM at a budget, an error) still leaves its curve so far; a
        resumed run restores the points from its checkpoint and rewrites the whole curve."""
        if trainer.global_rank == 0:
            self.write(trainer)

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            self.write(trainer)

    def write(self, trainer) -> None:
        """``time_curve.json`` (the points) and ``time_curve.png``; the PNG to W&B if attached."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "time_curve.json").write_text(json.dumps(self.points, indent=1))
        xlabel = "training " + ("wall" if self.clock == "wall" else "process CPU") + " time (s)"
        keys = [*self.curve_keys, *(k for k in MARK_KEYS if self.marks_on)]
        png = plot_curve(self.points, keys, self.output_dir / "time_curve.png", self.title, xlabel)
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
