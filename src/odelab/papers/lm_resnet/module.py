"""The LightningModule that trains LM-ResNet: image classification plus the learned k_n."""

from __future__ import annotations

import torch

from odelab.modules import ImageClassifier


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

    def results_summary(self) -> dict:
        """Per-block k_n (lists for per-channel k), for results.json."""
        return {"k": {str(i): k.flatten().tolist() for i, k in self.net.k_values().items()}}
