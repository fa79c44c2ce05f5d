"""One LightningModule for adversarial training, ``method`` selecting the algorithm.

All methods use manual optimisation (one code path; YOPO needs it):

- ``natural``: CE(net(x)).
- ``pgd``: PGD-k adversary (``pgd.steps``, ``pgd.alpha``, random start, eval-mode attack), then
  ``pgd.objective``: ``adv_only`` (Madry: CE(x_adv)) or ``adv_plus_clean`` (the YOPO repo's
  baselines: CE(x_adv) + CE(x), one optimiser step). ``pgd.random_start_clamp``: false (default)
  takes the first gradient at the unclamped x + U(-eps, eps) as the YOPO repo's ``IPGD``; true
  projects the start to [0, 1] first (Madry's code).
- ``free``: Free-m (Shafahi et al.): a perturbation kept across minibatches, each minibatch
  replayed ``free.m`` times; every replay is one forward/backward that steps the weights and
  updates delta <- clip(delta + eps sign(grad_delta), -eps, eps).
- ``fast``: FGSM with random start (Wong et al.), step ``fast.alpha``, train-mode attack; optional
  ``fast.early_stop`` (PGD-5 on the epoch's first batch; a drop of more than 0.2 in robust
  accuracy restores the previous epoch's weights and stops: catastrophic overfitting).
- ``yopo``: YOPO-m-n (:func:`odelab.papers.yopo.yopo.yopo_step`), two optimisers (layer one and
  the other layers), one step each per minibatch; the configs divide the lr by m.
- ``trades``: TRADES (``trades.steps`` KL-PGD steps of ``trades.alpha`` from x + 0.001 N(0, 1),
  eval-mode attack), loss CE(f(x), y) + beta KL(f(x) || f(x_adv)) / B.
- ``trades_yopo``: TRADES-YOPO-m-n: the adversary from the YOPO loop on the KL loss (eval mode,
  :func:`~odelab.papers.yopo.yopo.trades_yopo_adversary`), then one ordinary TRADES backward;
  two optimisers as YOPO.

Evaluation: clean and PGD robust accuracy (``eval_attack``: steps, alpha, restarts; its
``eps``, null = the training ``eps``; the random start clamped to [0, 1] as torchattacks) in
validation and test, eval mode, logged as ``{val,test}/{acc,robust_acc}``.
``autoattack_n > 0`` adds torchattacks' AutoAttack (standard) on the first N test images
(``test/autoattack_acc``). The module counts full and layer-one-only forward/backward passes of
training (``pass_counts``) with hooks, for the timing callback.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from odelab.papers.yopo.attacks import FGSM, PGD, TRADESAttack, autoattack_accuracy
from odelab.papers.yopo.yopo import trades_kl, trades_yopo_adversary, yopo_step

log = logging.getLogger(__name__)
METHODS = ("natural", "pgd", "free", "fast", "yopo", "trades", "trades_yopo")
_DEFAULTS: dict[str, dict[str, Any]] = {
    "yopo": {"m": 5, "n": 3, "sigma": 2 / 255, "layer_one_milestones": None},
    "pgd": {
        "steps": 10,
        "alpha": 2 / 255,
        "objective": "adv_plus_clean",
        "eval_mode": True,
        "random_start_clamp": False,
    },
    "free": {"m": 8},
    "fast": {"alpha": 10 / 255, "early_stop": False, "check_steps": 5, "check_alpha": 2 / 255},
    "trades": {"beta": 1.0, "steps": 10, "alpha": 0.007},
    "eval_attack": {"steps": 20, "alpha": 2 / 255, "restarts": 1, "eps": None},
}


def _merged(name: str, given: dict | None) -> dict[str, Any]:
    out = dict(_DEFAULTS[name])
    unknown = set(given or {}) - set(out)
    if unknown:
        raise ValueError(f"{name}: unknown keys {sorted(unknown)}; known: {sorted(out)}")
    out.update(given or {})
    return out


class AdversarialTraining(pl.LightningModule):
    """Adversarial training of a :class:`~odelab.papers.yopo.networks.LayerOneNet`.

    Args:
        net: network with ``layer_one``, ``other_layers``, ``forward_with_z1``, ``num_classes``.
        optimizer: partial ``torch.optim`` constructor (YOPO builds two from it).
        scheduler: partial lr scheduler (e.g. MultiStepLR), stepped per ``scheduler_interval``
            (``epoch`` or ``step`` = every optimiser step, Free's replays included).
        method: one of ``natural, pgd, free, fast, yopo``.
        eps: L-inf radius in [0, 1] pixel units (0.3 MNIST, 8/255 CIFAR-10).
        yopo, pgd, free, fast, trades, eval_attack: per-method settings (see the module docstring).
        cyclic_lr_max: if set, a CyclicLR 0 -> max -> 0 over the whole run (Fast's schedule,
            momentum cycled 0.8-0.9 as torch's default), replacing ``scheduler``.
        val_robust_batches: robust-evaluate at most this many validation batches (None: all).
        autoattack_n: images for the final AutoAttack evaluation (0: off).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        scheduler_interval: str = "epoch",
        method: str = "yopo",
        eps: float = 8 / 255,
        yopo: dict | None = None,
        pgd: dict | None = None,
        free: dict | None = None,
        fast: dict | None = None,
        trades: dict | None = None,
        eval_attack: dict | None = None,
        cyclic_lr_max: float | None = None,
        val_robust_batches: int | None = None,
        autoattack_n: int = 0,
        monitor: str = "val/robust_acc",
    ):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"model.method={method!r}; use one of {METHODS}")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval={scheduler_interval!r}: use epoch or step")
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.automatic_optimization = False
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.net, self.method, self.eps = net, method, float(eps)
        given = dict(
            yopo=yopo, pgd=pgd, free=free, fast=fast, trades=trades, eval_attack=eval_attack
        )
        self.cfg = {k: _merged(k, v) for k, v in given.items()}
        if self.cfg["pgd"]["objective"] not in ("adv_only", "adv_plus_clean"):
            raise ValueError(
                "pgd.objective must be adv_only (Madry) or adv_plus_clean (YOPO repo)"
            )
        c = net.num_classes
        self.acc = nn.ModuleDict(
            {f"{s}_{k}": MulticlassAccuracy(num_classes=c, average="micro")
             for s in ("train", "val", "test") for k in ("clean", "robust")}
        )  # fmt: skip
        self.train_loss = MeanMetric()
        self.pass_counts = {"full_fwd": 0, "full_bwd": 0, "l1_fwd": 0, "l1_bwd": 0}
        self._counting = False
        self._free_delta: torch.Tensor | None = None
        self._fast_state: dict[str, Any] = {"first_batch": None, "prev": -1.0, "best": None}
        self._aa: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._hooks_installed = False

    # ---------------------------------------------------------------- pass counting
    def _install_hooks(self) -> None:
        if self._hooks_installed:
            return

        def counter(fwd: str, bwd: str):
            def hook(_mod, _inp, out):
                if not self._counting:
                    return
                self.pass_counts[fwd] += 1
                if isinstance(out, torch.Tensor) and out.requires_grad:
                    out.register_hook(lambda g: self._bump(bwd))

            return hook

        self.net.layer_one.register_forward_hook(counter("l1_fwd", "l1_bwd"))
        self.net.other_layers.register_forward_hook(counter("full_fwd", "full_bwd"))
        self._hooks_installed = True

    def _bump(self, key: str) -> None:
        self.pass_counts[key] += 1

    def passes(self) -> dict[str, int]:
        """Training passes so far: full forward/backward and layer-one-only forward/backward."""
        p = self.pass_counts
        return {
            "full_fwd": p["full_fwd"],
            "full_bwd": p["full_bwd"],
            "layer_one_fwd": p["l1_fwd"] - p["full_fwd"],
            "layer_one_bwd": p["l1_bwd"] - p["full_bwd"],
        }

    # ---------------------------------------------------------------- training
    def setup(self, stage: str) -> None:
        self._install_hooks()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def eval_attack(self) -> PGD:
        e = self.cfg["eval_attack"]
        eps = self.eps if e["eps"] is None else float(e["eps"])
        return PGD(self.net, eps, e["alpha"], e["steps"], restarts=e["restarts"])

    def _opt_step(self, opt) -> None:
        opt.step()
        if self.hparams.scheduler_interval == "step" or self.hparams.cyclic_lr_max is not None:
            for sch in self._schedulers():
                sch.step()

    def _schedulers(self) -> list:
        s = self.lr_schedulers()
        return [] if s is None else (s if isinstance(s, list) else [s])

    def _optimizers(self) -> list:
        o = self.optimizers()
        return o if isinstance(o, list) else [o]

    def training_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        self._counting = True
        try:
            logits, loss = getattr(self, f"_train_{self.method}")(x, y, batch_idx)
        finally:
            self._counting = False
        self.train_loss.update(loss.detach(), weight=y.numel())
        self.acc["train_clean"].update(logits.detach(), y)

    def _single(self, loss: torch.Tensor) -> None:
        (opt,) = self._optimizers()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self._opt_step(opt)

    def _train_natural(self, x, y, batch_idx):
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self._single(loss)
        return logits, loss

    def _train_pgd(self, x, y, batch_idx):
        c = self.cfg["pgd"]
        atk = PGD(self.net, self.eps, c["alpha"], c["steps"], eval_mode=c["eval_mode"],
                  random_start_clamp=c["random_start_clamp"])  # fmt: skip
        x_adv = atk(x, y)
        logits = self.net(x_adv)
        loss = F.cross_entropy(logits, y)
        if c["objective"] == "adv_plus_clean":
            loss = loss + F.cross_entropy(self.net(x), y)
        self._single(loss)
        return logits, loss

    def _train_fast(self, x, y, batch_idx):
        c = self.cfg["fast"]
        if batch_idx == 0 and c["early_stop"]:
            self._fast_state["first_batch"] = (x.detach().clone(), y.detach().clone())
        x_adv = FGSM(self.net, self.eps, c["alpha"], random_start=True, eval_mode=False)(x, y)
        logits = self.net(x_adv)
        loss = F.cross_entropy(logits, y)
        self._single(loss)
        return logits, loss

    def _train_free(self, x, y, batch_idx):
        (opt,) = self._optimizers()
        b = x.shape[0]
        if self._free_delta is None or self._free_delta.shape[1:] != x.shape[1:]:
            self._free_delta = torch.zeros_like(x)
        if self._free_delta.shape[0] < b:
            pad = torch.zeros_like(x[: b - self._free_delta.shape[0]])
            self._free_delta = torch.cat([self._free_delta, pad])
        for _ in range(self.cfg["free"]["m"]):
            delta = self._free_delta[:b].clone().requires_grad_(True)
            logits = self.net(torch.clamp(x + delta, 0.0, 1.0))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            self._opt_step(opt)
            step = self.eps * delta.grad.detach().sign()
            self._free_delta[:b] = torch.clamp(delta.detach() + step, -self.eps, self.eps)
        return logits, loss

    def _train_yopo(self, x, y, batch_idx):
        c = self.cfg["yopo"]
        opts = self._optimizers()
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        eta = torch.empty_like(x).uniform_(-self.eps, self.eps)
        _, losses, logits = yopo_step(
            self.net, x, y, eta, c["m"], c["n"], c["sigma"], self.eps, self.manual_backward
        )
        for opt in opts:
            self._opt_step(opt) if opt is opts[-1] else opt.step()
        # train/acc from the last full pass (at eta_{m,0}): the official extra "YofoAcc"
        # forward at eta_{m,n} is a monitor only and is dropped (spec section 2.1)
        return logits, torch.stack(losses).mean()

    def _trades_loss(self, x, x_adv, y):
        """CE(f(x), y) + beta KL(softmax f(x) || softmax f(x_adv)) / B, one backward."""
        logits = self.net(x)
        kl = trades_kl(self.net(x_adv), F.softmax(logits, dim=1)) / x.shape[0]
        return logits, F.cross_entropy(logits, y) + self.cfg["trades"]["beta"] * kl

    def _train_trades(self, x, y, batch_idx):
        c = self.cfg["trades"]
        x_adv = TRADESAttack(self.net, self.eps, c["alpha"], c["steps"])(x, y)
        logits, loss = self._trades_loss(x, x_adv, y)
        self._single(loss)
        return logits, loss

    def _train_trades_yopo(self, x, y, batch_idx):
        c = self.cfg["yopo"]
        was = self.net.training
        self.net.eval()
        with torch.enable_grad():
            eta = trades_yopo_adversary(self.net, x, 0.001 * torch.randn_like(x), c["m"], c["n"],
                                        c["sigma"], self.eps)  # fmt: skip
        self.net.train(was)
        opts = self._optimizers()
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        logits, loss = self._trades_loss(x, torch.clamp(x + eta, 0.0, 1.0), y)
        self.manual_backward(loss)
        for opt in opts:
            self._opt_step(opt) if opt is opts[-1] else opt.step()
        return logits, loss

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss.compute(), sync_dist=True)
        self.log("train/acc", self.acc["train_clean"].compute(), sync_dist=True)
        self.train_loss.reset()
        self.acc["train_clean"].reset()
        self.log("train/lr", self._optimizers()[0].param_groups[0]["lr"])
        if self.hparams.scheduler_interval == "epoch" and self.hparams.cyclic_lr_max is None:
            for sch in self._schedulers():
                sch.step()
        if self.method == "fast" and self.cfg["fast"]["early_stop"]:
            self._fast_early_stop()

    def _fast_early_stop(self) -> None:
        st, c = self._fast_state, self.cfg["fast"]
        if st["first_batch"] is None:
            return
        x, y = st["first_batch"]
        adv = PGD(self.net, self.eps, c["check_alpha"], c["check_steps"])(x, y)
        with torch.no_grad():
            was = self.net.training
            self.net.eval()
            acc = (self.net(adv).argmax(1) == y).float().mean().item()
            self.net.train(was)
        self.log("train/early_stop_robust_acc", acc)
        if acc - st["prev"] < -0.2:
            log.warning(
                "Fast: robust acc fell %.3f -> %.3f; restoring and stopping", st["prev"], acc
            )
            self.net.load_state_dict(st["best"])
            self.trainer.should_stop = True
            return
        st["prev"], st["best"] = acc, copy.deepcopy(self.net.state_dict())

    # ---------------------------------------------------------------- evaluation
    def _eval_step(self, batch, split: str, robust: bool) -> None:
        x, y = batch
        if robust and torch.is_inference_mode_enabled():
            raise ValueError(
                "robust evaluation needs gradients, but the Trainer runs evaluation under "
                "torch.inference_mode: set trainer.inference_mode=false"
            )
        with torch.no_grad():
            self.acc[f"{split}_clean"].update(self.net(x), y)
        if robust:
            x_adv = self.eval_attack()(x, y)
            with torch.no_grad():
                self.acc[f"{split}_robust"].update(self.net(x_adv), y)

    def validation_step(self, batch, batch_idx: int) -> None:
        limit = self.hparams.val_robust_batches
        self._eval_step(batch, "val", limit is None or batch_idx < limit)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", True)
        n = self.hparams.autoattack_n
        have = sum(len(t[1]) for t in self._aa)
        if n and have < n:
            x, y = batch
            self._aa.append((x[: n - have].detach(), y[: n - have].detach()))

    def _log_eval(self, split: str) -> None:
        for kind, key in (("clean", "acc"), ("robust", "robust_acc")):
            metric = self.acc[f"{split}_{kind}"]
            if metric.update_count:
                self.log(f"{split}/{key}", metric.compute(), sync_dist=True, prog_bar=True)
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")
        if self._aa:
            x = torch.cat([t[0] for t in self._aa])
            y = torch.cat([t[1] for t in self._aa])
            self._aa = []
            self.log("test/autoattack_acc", autoattack_accuracy(self.net, x, y, self.eps))

    def configure_optimizers(self):
        if self.method in ("yopo", "trades_yopo"):
            groups = [self.net.layer_one.parameters(), self.net.other_layers.parameters()]
        else:
            groups = [self.net.parameters()]
        opts = [self.optimizer_factory(params=list(g)) for g in groups]
        scheds = []
        if self.hparams.cyclic_lr_max is not None:
            total = int(self.trainer.estimated_stepping_batches) * (
                self.cfg["free"]["m"] if self.method == "free" else 1
            )
            up = max(1, total // 2)
            for opt in opts:
                scheds.append(
                    torch.optim.lr_scheduler.CyclicLR(
                        opt, 0.0, self.hparams.cyclic_lr_max, up, max(1, total - up)
                    )
                )
        elif self.scheduler_factory is not None:
            for i, opt in enumerate(opts):
                ms = self.cfg["yopo"]["layer_one_milestones"]
                if self.method in ("yopo", "trades_yopo") and i == 0 and ms is not None:
                    scheds.append(self.scheduler_factory(optimizer=opt, milestones=list(ms)))
                else:
                    scheds.append(self.scheduler_factory(optimizer=opt))
        return opts, scheds
