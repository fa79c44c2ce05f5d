"""Image restoration: MSE training and per-(set, level) PSNR / SSIM evaluation.

Metrics (on grey images in [0, 1], the restored image clipped to [0, 1], no border crop):

- PSNR = 10 log10(1 / MSE) per image, averaged over the images of a cell (dB);
- SSIM: ``torchmetrics.functional.image.structural_similarity_index_measure`` (Gaussian window 11,
  sigma 1.5, K1 = 0.01, K2 = 0.03, data_range 1), per image, averaged.

Logged keys: ``{split}/psnr`` and ``{split}/ssim`` (mean over the cells) and, on test,
``test/psnr_<cell>`` / ``test/ssim_<cell>`` for every cell such as ``BSD68_s25`` or
``LIVE1_q10``. Image grids (degraded | restored | clean, first image of each cell) are saved
under ``<run dir>/images/`` and logged to W&B when a W&B logger is attached.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

log = logging.getLogger(__name__)


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of ``x_hat`` clipped to [0, 1] against ``x`` in [0, 1]."""
    mse = (x_hat.clamp(0, 1) - x).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def ssim(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (torchmetrics, Gaussian 11x11 window, sigma 1.5) of clipped ``x_hat``."""
    return structural_similarity_index_measure(
        x_hat.clamp(0, 1).to(x.dtype), x, data_range=1.0, reduction="none"
    )


def save_grid(path: Path, images: list[torch.Tensor], pad: int = 4) -> Path:
    """Save [1, H, W] images in [0, 1] side by side as one 8-bit grey PNG (Pillow)."""
    from PIL import Image

    h = max(im.shape[-2] for im in images)
    w = sum(im.shape[-1] for im in images) + pad * (len(images) - 1)
    canvas = np.full((h, w), 255, dtype=np.uint8)
    col = 0
    for im in images:
        a = (im.detach().float().clamp(0, 1)[0].cpu().numpy() * 255).round().astype(np.uint8)
        canvas[: a.shape[0], col : col + a.shape[1]] = a
        col += a.shape[1] + pad
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas, mode="L").save(path)
    return path


def log_images_to_wandb(trainer: pl.Trainer | None, key: str, paths: list[Path]) -> None:
    """Log saved PNGs to every W&B logger of ``trainer`` (never raises)."""
    if trainer is None or not paths:
        return
    from lightning.pytorch.loggers import WandbLogger

    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            try:
                import wandb

                imgs = [wandb.Image(str(p), caption=p.stem) for p in paths]
                lg.experiment.log({key: imgs})
            except Exception as e:  # W&B must never break a run
                log.warning("could not log %s to W&B: %s", key, e)


class CellStats:
    """Running sums per (set, level) cell: PSNR, SSIM and any extra per-image scalar."""

    def __init__(self):
        self.sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def add(self, groups: list[str], **per_image: torch.Tensor) -> None:
        for name, vals in per_image.items():
            for g, v in zip(groups, vals.detach().cpu().double().tolist(), strict=True):
                self.values[g][name].append(v)

    def mean(self, group: str, name: str) -> float:
        v = self.values[group][name]
        return float(np.mean(v)) if v else float("nan")

    def std(self, group: str, name: str) -> float:
        v = self.values[group][name]
        return float(np.std(v)) if v else float("nan")

    def groups(self) -> list[str]:
        return list(self.values)

    def reset(self) -> None:
        self.values.clear()


class RestorationModule(pl.LightningModule):
    """Base LightningModule for restorers: subclasses provide :meth:`restore` (and training).

    ``restore(y, level) -> (x_hat, extras)`` where ``extras`` maps names to per-image tensors
    that are averaged per cell (e.g. the number of steps a policy chose).
    """

    grid_key = "images/test"
    progress_every_s = 60.0  # a test-progress line at most this often (and one at the end)

    def __init__(self):
        super().__init__()
        self.stats = {"val": CellStats(), "test": CellStats()}
        self._grid_done: set[str] = set()
        self.summary: dict[str, Any] = {}
        self._progress_t0 = self._progress_last = 0.0

    def restore(self, y: torch.Tensor, level: torch.Tensor) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    # ---- evaluation ------------------------------------------------------------------------
    def _eval_step(self, batch: dict, split: str) -> None:
        y, x, level, groups = batch["y"], batch["x"], batch["level"], list(batch["group"])
        x_hat, extras = self.restore(y, level)
        self.stats[split].add(groups, psnr=psnr(x_hat, x), ssim=ssim(x_hat, x), **extras)
        if split == "test":
            self._save_grids(groups, y, x_hat, x)
            self._log_progress()

    def _log_progress(self, final: bool = False) -> None:
        """Every ``progress_every_s``: images done of the test set, per cell, and the time left
        at the rate so far (long evaluations such as BM3D's would otherwise be silent)."""
        now = time.monotonic()
        if not final and now - self._progress_last < self.progress_every_s:
            return
        self._progress_last = now
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        items = getattr(getattr(dm, "data_test", None), "items", None) or []
        totals = Counter(item[-1] for item in items)
        values = self.stats["test"].values
        done = {g: len(values[g]["psnr"]) if g in values else 0 for g in totals or values}
        n_done, n_all = sum(done.values()), sum(totals.values()) or sum(done.values())
        elapsed = now - self._progress_t0
        left = elapsed * (n_all - n_done) / n_done if n_done else float("nan")
        cells = ", ".join(f"{g} {d}/{totals.get(g, '?')}" for g, d in done.items())
        log.info(
            "test: %d/%d images done in %.0f s (about %.0f s left): %s",
            n_done, n_all, elapsed, left, cells,
        )  # fmt: skip

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _save_grids(self, groups, y, x_hat, x) -> None:
        root = self._run_dir()
        if root is None:
            return
        for b, g in enumerate(groups):
            if g not in self._grid_done:
                self._grid_done.add(g)
                save_grid(root / "images" / f"{g}.png", [y[b], x_hat[b], x[b]])

    def _run_dir(self) -> Path | None:
        if self._trainer is None or not self.trainer.is_global_zero:
            return None
        return Path(self.trainer.default_root_dir)

    def on_test_epoch_start(self) -> None:
        self._grid_done.clear()
        self._progress_t0 = self._progress_last = time.monotonic()

    def _log_cells(self, split: str) -> dict[str, dict[str, float]]:
        stats = self.stats[split]
        table: dict[str, dict[str, float]] = {}
        for g in stats.groups():
            table[g] = {n: stats.mean(g, n) for n in stats.values[g]}
            table[g]["n_images"] = len(stats.values[g]["psnr"])
            if split == "test":
                for n in stats.values[g]:
                    self.log(f"test/{n}_{g}", table[g][n], sync_dist=False)
        if table:
            self.log(f"{split}/psnr", float(np.mean([t["psnr"] for t in table.values()])))
            self.log(f"{split}/ssim", float(np.mean([t["ssim"] for t in table.values()])))
        return table

    def on_validation_epoch_end(self) -> None:
        self._log_cells("val")
        self.stats["val"].reset()

    def on_test_epoch_end(self) -> None:
        self._log_progress(final=True)
        self.summary["cells"] = self._log_cells("test")
        self.on_test_cells(self.stats["test"])
        root = self._run_dir()
        if root is not None:
            grids = sorted((root / "images").glob("*.png"))
            log_images_to_wandb(self.trainer, self.grid_key, grids)
        self.stats["test"].reset()

    def on_test_cells(self, stats: CellStats) -> None:
        """Hook for subclasses: extra summaries from the test cells (before reset)."""

    def results_summary(self) -> dict:
        """Per-cell test tables for results.json."""
        return {"restoration": self.summary} if self.summary else {}


class FeedForwardRestorer(RestorationModule):
    """Train ``net`` (y -> x_hat) on MSE; the DnCNN-B comparator.

    Args:
        net: the restoration network.
        optimizer, scheduler: partial constructors (Hydra ``_partial_``); the scheduler steps
            once per epoch.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.net, self.optimizer_factory, self.scheduler_factory = net, optimizer, scheduler

    def restore(self, y, level):
        return self.net(y), {}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        y, x, _ = batch
        loss = F.mse_loss(self.net(y), x)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        opt = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": self.scheduler_factory(optimizer=opt)}
