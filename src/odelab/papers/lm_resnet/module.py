"""The LightningModule that trains LM-ResNet: image classification plus the learned k_n."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from odelab.modules import ImageClassifier
from odelab.papers.lm_resnet.analysis import plot_k

log = logging.getLogger(__name__)


class LMResNetClassifier(ImageClassifier):
    """:class:`ImageClassifier` for :class:`LMResNet` that logs every block's k_n each epoch.

    ``pretrain_plain_epochs`` trains the first epochs as a plain ResNet (k_n held at 0 in the
    forward pass), as the official ``MResNet(pretrain=True)`` does until ``change_state()``.
    """

    def __init__(self, *args, pretrain_plain_epochs: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.pretrain_plain_epochs = pretrain_plain_epochs

    def on_train_epoch_start(self) -> None:
        self.net.lm_active = self.current_epoch >= self.pretrain_plain_epochs

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        ks = self.net.k_values()
        for i, k in ks.items():
            if k.numel() == 1:
                self.log(f"k/block{i:03d}", k.reshape(()), sync_dist=False)
            else:
                self.log(f"k/block{i:03d}_mean", k.mean(), sync_dist=False)
        if ks:
            allk = torch.cat([k.flatten() for k in ks.values()])
            self.log("k/min", allk.min(), sync_dist=False)
            self.log("k/max", allk.max(), sync_dist=False)

    def on_fit_end(self) -> None:
        """The paper's k_n figure for this run: ``k_per_block.png`` in the run directory, and
        the same image under ``k/per_block`` in W&B when a W&B logger is attached."""
        ks = self.results_summary()["k"]
        if not ks or not self.trainer.is_global_zero:
            return
        path = Path(self.trainer.default_root_dir) / "k_per_block.png"
        try:
            plot_k({"final": ks}, path, title=f"learned k_n after {self.current_epoch} epochs")
        except Exception as e:  # a figure must never fail a finished training run
            log.warning("k_n plot failed: %s", e)
            return
        for lg in self.loggers:
            if hasattr(lg, "log_image") and type(lg).__name__ == "WandbLogger":
                lg.log_image(key="k/per_block", images=[str(path)])

    def results_summary(self) -> dict:
        """Per-block k_n (lists for per-channel k), for results.json."""
        return {"k": {str(i): k.flatten().tolist() for i, k in self.net.k_values().items()}}
