"""LightningModules of the BERT path: masked-LM + next-sentence pre-training, GLUE fine-tuning.

Masking (Devlin et al.): each non-special token is chosen with probability ``mask_prob``
(0.15); a chosen token becomes ``<mask>`` with probability 0.8, a random token with 0.1 and
stays itself with 0.1; the MLM loss is the cross-entropy on the chosen positions only.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy
from torchmetrics.classification import MatthewsCorrCoef as MCC
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef


def mask_tokens(
    tokens,
    vocab_size: int,
    mask_idx: int,
    special: set[int],
    prob: float,
    generator: torch.Generator | None = None,
):
    """-> (masked input, MLM targets with -100 where no prediction is made)."""
    cand = torch.ones_like(tokens, dtype=torch.bool)
    for s in special:
        cand &= tokens.ne(s)
    u = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    chosen = cand & (u < prob)
    targets = torch.where(chosen, tokens, torch.full_like(tokens, -100))
    r = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    rand_tok = torch.randint(
        len(special), vocab_size, tokens.shape, generator=generator, device=tokens.device
    )
    x = torch.where(chosen & (r < 0.8), torch.full_like(tokens, mask_idx), tokens)
    x = torch.where(chosen & (r >= 0.8) & (r < 0.9), rand_tok, x)
    return x, targets


class _Base(pl.LightningModule):
    """Builds ``net`` (a partial) in :meth:`setup` from the datamodule's vocabulary size."""

    def __init__(
        self,
        net: Callable[..., nn.Module],
        optimizer: Callable,
        scheduler=None,
        scheduler_interval: str = "step",
        vocab_size: int | None = None,
    ):
        super().__init__()
        self.net_factory, self.optimizer_factory, self.scheduler_factory = (
            net,
            optimizer,
            scheduler,
        )
        self.net: nn.Module | None = None
        if vocab_size is not None:
            self._build(vocab_size)

    def _build(self, vocab_size: int) -> None:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if self.net is None:
            if dm is None:
                raise ValueError(f"{type(self).__name__} needs a datamodule or vocab_size")
            self._build(dm.vocab_size)
        elif dm is not None and dm.vocab_size != self.hparams.vocab_size:
            raise ValueError(
                f"impossible config: the data's vocabulary has {dm.vocab_size} symbols but the "
                f"network was built for {self.hparams.vocab_size}"
            )

    def configure_optimizers(self):
        decay, no_decay = [], []
        for p in self.parameters():  # BERT: no weight decay on biases and LayerNorms
            (no_decay if p.ndim < 2 else decay).append(p)
        opt = self.optimizer_factory(
            params=[{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        )
        if self.scheduler_factory is None:
            return opt
        total = self.trainer.estimated_stepping_batches
        sched = self.scheduler_factory(optimizer=opt, total=int(total))
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": sched, "interval": self.hparams.scheduler_interval},
        }


class BertPretrainModule(_Base):
    """Masked LM (+ next-sentence prediction if ``nsp``); logs ``{split}/loss``,
    ``{split}/mlm_loss``, ``{split}/mlm_acc``, ``{split}/nsp_acc``."""

    def __init__(
        self,
        net,
        optimizer,
        scheduler=None,
        scheduler_interval="step",
        mask_prob: float = 0.15,
        nsp: bool = True,
        vocab_size: int | None = None,
        monitor: str = "val/mlm_loss",
    ):
        super().__init__(net, optimizer, scheduler, scheduler_interval, vocab_size)
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.metrics = nn.ModuleDict(
            {
                f"{s}_{m}": MeanMetric()
                for s in ("train", "val", "test")
                for m in ("loss", "mlm_loss", "mlm_acc", "nsp_acc")
            }
        )

    def _build(self, vocab_size: int) -> None:
        from odelab.papers.macaron.bert import BertPretrainHeads

        self.net = BertPretrainHeads(self.net_factory(vocab_size=vocab_size))
        self.hparams.vocab_size = vocab_size

    def _step(self, batch, split: str):
        tokens, segments, is_random = batch
        dm = self.trainer.datamodule
        v = dm.vocab
        special = {v.bos, v.pad, v.eos, v.unk}
        g = None
        if split != "train":  # the same masks every evaluation
            g = torch.Generator(device=tokens.device).manual_seed(1234 + tokens.shape[1])
        x, tgt = mask_tokens(tokens, len(v), dm.mask_idx, special, self.hparams.mask_prob, g)
        lm_logits, nsp_logits = self.net(x, segments)
        n = tgt.ne(-100).sum()
        mlm = F.cross_entropy(lm_logits.flatten(0, 1), tgt.flatten(), ignore_index=-100)
        mlm = torch.nan_to_num(mlm) if n == 0 else mlm
        loss = mlm
        nsp_acc = torch.tensor(float("nan"))
        if self.hparams.nsp:
            loss = loss + F.cross_entropy(nsp_logits, is_random)
            nsp_acc = nsp_logits.argmax(-1).eq(is_random).float().mean()
        sel = tgt.ne(-100)
        acc = lm_logits.argmax(-1)[sel].eq(tgt[sel]).float().mean() if n else torch.tensor(0.0)
        m = self.metrics
        m[f"{split}_loss"].update(loss.detach(), tokens.shape[0])
        m[f"{split}_mlm_loss"].update(mlm.detach(), max(int(n), 1))
        m[f"{split}_mlm_acc"].update(acc, max(int(n), 1))
        if self.hparams.nsp:
            m[f"{split}_nsp_acc"].update(nsp_acc, tokens.shape[0])
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _log(self, split: str) -> None:
        for name in ("loss", "mlm_loss", "mlm_acc", "nsp_acc"):  # Lightning computes, resets
            metric = self.metrics[f"{split}_{name}"]
            if metric.update_count:  # nsp_acc only with NSP on
                self.log(f"{split}/{name}", metric)

    def on_train_epoch_end(self):
        self._log("train")

    def on_validation_epoch_end(self):
        self._log("val")

    def on_test_epoch_end(self):
        self._log("test")


class GlueModule(_Base):
    """Fine-tune a BERT encoder on one GLUE task (``init_from``: a pre-training checkpoint
    whose encoder weights are loaded). Logs ``{split}/loss`` and the task's dev metrics:
    ``acc`` (classification), ``mcc`` (CoLA), ``f1`` (MRPC, QQP), ``pearson``/``spearman``
    (STS-B)."""

    def __init__(
        self,
        net,
        optimizer,
        scheduler=None,
        scheduler_interval="step",
        num_classes: int = 2,
        classifier_dropout: float = 0.1,
        init_from: str | None = None,
        vocab_size: int | None = None,
        monitor: str = "val/acc",
    ):
        super().__init__(net, optimizer, scheduler, scheduler_interval, vocab_size)
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.mean_loss = nn.ModuleDict({f"{s}_": MeanMetric() for s in ("train", "val", "test")})
        self.scores = nn.ModuleDict()
        for s in ("val", "test"):
            if num_classes == 1:
                self.scores[f"{s}_pearson"] = PearsonCorrCoef()
                self.scores[f"{s}_spearman"] = SpearmanCorrCoef()
            else:
                self.scores[f"{s}_acc"] = MulticlassAccuracy(num_classes, average="micro")
                self.scores[f"{s}_mcc"] = MCC(task="multiclass", num_classes=num_classes)
                if num_classes == 2:
                    self.scores[f"{s}_f1"] = BinaryF1Score()

    def _build(self, vocab_size: int) -> None:
        from odelab.papers.macaron.bert import BertClassifier

        hp = self.hparams
        enc = self.net_factory(vocab_size=vocab_size)
        if hp.init_from:
            state = torch.load(hp.init_from, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
            prefix = "net.encoder."
            enc_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if not enc_state:
                raise ValueError(
                    f"{hp.init_from} holds no '{prefix}*' weights (not a "
                    "BertPretrainModule checkpoint)"
                )
            enc.load_state_dict(enc_state)
        self.net = BertClassifier(enc, hp.num_classes, hp.classifier_dropout)
        self.hparams.vocab_size = vocab_size

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and dm.num_classes != self.hparams.num_classes:
            raise ValueError(
                f"impossible config: GLUE task {dm.task} has {dm.num_classes} classes but "
                f"model.num_classes={self.hparams.num_classes}"
            )

    def _step(self, batch, split: str):
        tokens, segments, y = batch
        out = self.net(tokens, segments)
        if self.hparams.num_classes == 1:
            out = out.squeeze(-1)
            loss = F.mse_loss(out, y)
        else:
            loss = F.cross_entropy(out, y)
        self.mean_loss[f"{split}_"].update(loss.detach(), y.shape[0])
        if split != "train":
            for name, metric in self.scores.items():
                if name.startswith(split):
                    pred = (
                        out if self.hparams.num_classes == 1 or "acc" in name else out.argmax(-1)
                    )
                    metric.update(
                        pred.detach().float() if self.hparams.num_classes == 1 else pred.detach(),
                        y,
                    )
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _log(self, split: str) -> None:
        self.log(f"{split}/loss", self.mean_loss[f"{split}_"])
        for name, metric in self.scores.items():
            if name.startswith(split):
                self.log(f"{split}/{name.split('_', 1)[1]}", metric)

    def on_train_epoch_end(self):
        self._log("train")

    def on_validation_epoch_end(self):
        self._log("val")

    def on_test_epoch_end(self):
        self._log("test")
