"""Supervised image classification: cross-entropy, SGD-style optimiser, epoch-level metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from odelab.modules.metrics import SyncFreeAccuracy, SyncFreeMean


class ImageClassifier(pl.LightningModule):
    """Train ``net`` with cross-entropy; log ``{train,val,test}/{loss,acc}`` and ``test/error``.

    Args:
        net: an ``nn.Module`` mapping images to logits, with a ``num_classes`` attribute.
        optimizer: a partial ``torch.optim`` constructor (Hydra ``_partial_: true``).
        scheduler: an optional partial ``torch.optim.lr_scheduler`` constructor, stepped per
            ``scheduler_interval``; ``monitor`` feeds ReduceLROnPlateau-style schedulers.
        no_weight_decay: substrings of parameter names that get weight decay 0
            (e.g. ``["ks."]`` to leave LM-ResNet's k_n undecayed).
        label_smoothing: cross-entropy label smoothing.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        scheduler_interval: str = "epoch",
        monitor: str = "val/acc",
        no_weight_decay: Sequence[str] = (),
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        # optimiser and scheduler are partial callables: kept as attributes, not in the checkpoint
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.net = net
        splits = ("train", "val", "test")
        # ModuleDict keys must not shadow nn.Module attributes (``train``): suffix them.
        # Sync-free metrics: no device synchronisation per step (one per epoch, at compute)
        self.acc = nn.ModuleDict({f"{s}_": SyncFreeAccuracy() for s in splits})
        self.mean_loss = nn.ModuleDict({f"{s}_": SyncFreeMean() for s in splits})

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        for attr in ("num_classes", "in_channels"):
            want = getattr(dm, attr, None)
            have = getattr(self.net, attr, None)
            if attr == "in_channels":
                stem = next((m for m in self.net.modules() if isinstance(m, nn.Conv2d)), None)
                have = stem.in_channels if stem is not None else None
            if want is not None and have is not None and want != have:
                raise ValueError(
                    f"impossible config: the data ({type(dm).__name__}) has {attr}={want} but the "
                    f"network was built with {attr}={have}; set model.net.{attr}={want}."
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, split: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        n = loss.new_full((), y.numel())  # a device scalar: no host-to-device copy per step
        self.mean_loss[f"{split}_"].update(loss.detach(), weight=n)
        self.acc[f"{split}_"].update(logits.detach(), y)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch(self, split: str) -> None:
        """Log the split's metric objects: Lightning computes (one device sync, reduced across
        processes by torchmetrics) and resets them at the end of the epoch."""
        acc = self.acc[f"{split}_"]
        self.log(f"{split}/loss", self.mean_loss[f"{split}_"])
        self.log(f"{split}/acc", acc, prog_bar=split != "train")
        if split == "test":
            self.log("test/error", 100.0 * (1.0 - acc.compute()))

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")
        opt = self.optimizers()
        opt = opt[0] if isinstance(opt, list) else opt
        self.log("train/lr", opt.param_groups[0]["lr"])

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups: no weight decay on names matching ``no_weight_decay``.
        Subclasses that need other groups (e.g. per-group learning rates) override this."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if any(s in name for s in self.hparams.no_weight_decay) else decay).append(p)
        groups = [{"params": decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = self.optimizer_factory(params=self.param_groups())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": hp.scheduler_interval,
                "monitor": hp.monitor,
            },
        }
