"""Sequence-to-sequence translation: label-smoothed cross-entropy, inverse-sqrt schedule, BLEU.

Logged: ``{train,val,test}/loss`` (label-smoothed CE per target token, nats), ``val/nll``,
``val/ppl`` (exp of the per-token NLL, base e), and after decoding ``{val,test}/bleu``
(tokenised BLEU on the pipeline's tokens with BPE removed: "tok-lc BLEU" when the data is
lower-cased) and ``{val,test}/sacrebleu`` (sacreBLEU 13a on Moses-detokenised output against
the raw references, ``-lc`` when the data is lower-cased).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import lightning.pytorch as pl
import torch
from torch import nn

from odelab.modules.bleu import sacre_bleu, tok_bleu
from odelab.nn.decoding import beam_search, greedy_decode

log = logging.getLogger(__name__)


def label_smoothed_nll(logits, target, eps: float, ignore_index: int):
    """fairseq's label-smoothed CE, summed over non-pad tokens:
    (1 - eps) * (-log p_y) + eps / V * sum_v (-log p_v). Returns (loss_sum, nll_sum, n_tokens).
    """
    lp = torch.log_softmax(logits.float(), dim=-1)
    mask = target.ne(ignore_index)
    nll = -lp.gather(-1, target.clamp_min(0)[..., None]).squeeze(-1)
    smooth = -lp.sum(-1)
    loss = (1.0 - eps) * nll + eps / lp.shape[-1] * smooth
    # where(), not loss[mask]: boolean indexing would synchronise the device every step
    return torch.where(mask, loss, 0).sum(), torch.where(mask, nll, 0).sum(), mask.sum()


class InverseSqrtLR(torch.optim.lr_scheduler.LRScheduler):
    """fairseq ``inverse_sqrt``: lr rises linearly from ``warmup_init_lr`` to the optimiser's lr
    over ``warmup_updates`` updates, then decays as lr * sqrt(warmup_updates / update)."""

    def __init__(
        self,
        optimizer,
        warmup_updates: int = 4000,
        warmup_init_lr: float = 1e-7,
        last_epoch: int = -1,
    ):
        self.warmup_updates, self.warmup_init_lr = max(1, warmup_updates), warmup_init_lr
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        n, w = self.last_epoch, self.warmup_updates
        if n < w:
            return [self.warmup_init_lr + (b - self.warmup_init_lr) * n / w for b in self.base_lrs]
        return [b * math.sqrt(w / n) for b in self.base_lrs]


class WarmupLinearLR(torch.optim.lr_scheduler.LambdaLR):
    """BERT's schedule: linear warm-up over ``warmup`` updates (an int, or a fraction of
    ``total`` if < 1), then linear decay to 0 at ``total`` updates."""

    def __init__(self, optimizer, total: int, warmup: float = 0.1, last_epoch: int = -1):
        w = max(1, int(warmup * total) if warmup < 1 else int(warmup))
        total = max(total, w + 1)

        def f(n):
            return n / w if n < w else max(0.0, (total - n) / (total - w))

        super().__init__(optimizer, f, last_epoch)


class TranslationModule(pl.LightningModule):
    """Train a seq2seq ``net`` (built in :meth:`setup` once the vocabulary is known).

    Args:
        net: partial constructor of the network, completed with ``vocab_size`` from the data.
        optimizer, scheduler: partial constructors (Hydra ``_partial_``); the scheduler steps
            per update (``scheduler_interval: step``).
        label_smoothing: eps of the label-smoothed CE.
        beam, lenpen, max_len_a, max_len_b: test-time beam search (beam 1 is greedy).
        val_decode: ``greedy`` | ``beam`` | ``none`` for validation BLEU;
            ``val_bleu_every`` epochs; ``val_bleu_max_sentences``: decode only the split's first N
            sentences (in file order, not the shortest).
    """

    def __init__(
        self,
        net: Callable[..., nn.Module],
        optimizer: Callable,
        scheduler=None,
        scheduler_interval: str = "step",
        label_smoothing: float = 0.1,
        beam: int = 5,
        lenpen: float = 1.0,
        max_len_a: float = 1.2,
        max_len_b: int = 10,
        val_decode: str = "greedy",
        val_bleu_every: int = 1,
        val_bleu_max_sentences: int | None = None,
        monitor: str = "val/loss",
        vocab_size: int | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.net_factory, self.optimizer_factory, self.scheduler_factory = (
            net,
            optimizer,
            scheduler,
        )
        self.net: nn.Module | None = None
        if vocab_size is not None:
            self._build(vocab_size)
        self._sums: dict[str, torch.Tensor] = {}
        self._hyps: dict[str, list] = {}

    def _build(self, vocab_size: int) -> None:
        self.net = self.net_factory(vocab_size=vocab_size)
        self.hparams.vocab_size = vocab_size

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if self.net is None:
            if dm is None:
                raise ValueError("TranslationModule needs a datamodule or model.vocab_size")
            self._build(dm.vocab_size)
        elif dm is not None and dm.vocab_size != self.hparams.vocab_size:
            raise ValueError(
                f"impossible config: the data's vocabulary has {dm.vocab_size} symbols but the "
                f"network was built for {self.hparams.vocab_size}; use the same data settings"
            )
        v = getattr(dm, "vocab", None)
        if v is not None and (v.pad, v.bos, v.eos) != (
            self.net.padding_idx,
            self.net.bos_idx,
            self.net.eos_idx,
        ):
            raise ValueError("the data's <pad>/<s>/</s> ids differ from model.net's")

    def forward(self, src, prev):
        return self.net(src, prev)

    def _step(self, batch, split: str):
        src, prev, tgt, _ = batch
        loss, nll, n = label_smoothed_nll(
            self(src, prev), tgt, self.hparams.label_smoothing, self.net.padding_idx
        )
        # (loss, nll, tokens) summed on the device: no .item() (a device sync) per step
        s = self._sums.setdefault(split, torch.zeros(3, dtype=torch.float64, device=loss.device))
        s += torch.stack([loss.detach().double(), nll.detach().double(), n.double()])
        return loss / n.clamp_min(1)

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        self.log("train/step_loss", loss, prog_bar=True, batch_size=batch[0].shape[0])
        return loss

    def _decode_batch(self, batch, split: str) -> None:
        hp = self.hparams
        src, _, _, ids = batch
        if split == "val":
            if hp.val_decode == "none" or (self.current_epoch + 1) % hp.val_bleu_every:
                return
            if hp.val_bleu_max_sentences is not None:  # the first N sentences of the split
                keep = ids < hp.val_bleu_max_sentences
                if not keep.any():
                    return
                src, ids = src[keep], ids[keep]
        beam = hp.beam if split == "test" or hp.val_decode == "beam" else 1
        kw = dict(max_len_a=hp.max_len_a, max_len_b=hp.max_len_b)
        if beam == 1:
            out = greedy_decode(self.net, src, **kw)
        else:
            out = beam_search(self.net, src, beam=beam, lenpen=hp.lenpen, **kw)
        self._hyps.setdefault(split, []).extend(zip(ids.tolist(), out))

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")
        self._decode_batch(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")
        self._decode_batch(batch, "test")

    def _log_split(self, split: str) -> None:
        s = self._sums.pop(split, None)
        if s is not None and s[2] > 0:
            loss, nll = s[0] / s[2], s[1] / s[2]
            self.log(f"{split}/loss", float(loss), sync_dist=True, prog_bar=split != "train")
            if split != "train":
                self.log(f"{split}/nll", float(nll), sync_dist=True)
                self.log(f"{split}/ppl", math.exp(min(float(nll), 50.0)), sync_dist=True)
        hyps = self._hyps.pop(split, None)
        dm = self.trainer.datamodule if self._trainer is not None else None
        if hyps and dm is not None:
            data = dm.split("valid" if split == "val" else split)
            tok, detok, ref_tok, ref_raw = [], [], [], []
            for i, h in hyps:
                t, d = dm.to_text(h)
                tok.append(t)
                detok.append(d)
                ref_tok.append(data["ref_tok"][i])
                ref_raw.append(data["ref_raw"][i])
            self.log(f"{split}/bleu", tok_bleu(tok, ref_tok)["bleu"], sync_dist=True)
            self.log(f"{split}/sacrebleu", sacre_bleu(detok, ref_raw, dm.lowercase))
            log.info("%s sample: %s ||| ref: %s", split, tok[0], ref_tok[0])

    def on_train_epoch_end(self) -> None:
        self._log_split("train")
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])

    def on_validation_epoch_end(self) -> None:
        self._log_split("val")

    def on_test_epoch_end(self) -> None:
        self._log_split("test")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        sched = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": sched, "interval": self.hparams.scheduler_interval},
        }
