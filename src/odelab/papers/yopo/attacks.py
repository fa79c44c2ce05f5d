"""L-inf attacks in the torchattacks shape: ``adv = PGD(model, eps, alpha, steps)(x, y)``.

Inputs are images in [0, 1]; every adversarial example satisfies ||x_adv - x||_inf <= eps and
0 <= x_adv <= 1. The model's train/eval mode is saved and restored around the attack
(``eval_mode=True`` attacks the eval-mode model, as torchattacks and the YOPO repo do;
``eval_mode=False`` keeps the caller's mode, as Fast's training attack does).

The random start x + U(-eps, eps) is projected to [0, 1] before the first gradient
(``random_start_clamp=True``: torchattacks, Madry's and Fast's code) or not (``False``: the
YOPO repo's ``IPGD``, whose first gradient is taken at the unclamped point; every later iterate
is projected as usual).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attack:
    """Base class: ``__call__(x, y)`` runs :meth:`perturb` with the mode handling above."""

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        alpha: float,
        steps: int,
        random_start: bool = True,
        restarts: int = 1,
        eval_mode: bool = True,
        random_start_clamp: bool = True,
    ):
        if eps < 0 or alpha < 0 or steps < 0 or restarts < 1:
            raise ValueError(f"{type(self).__name__}: need eps, alpha, steps >= 0, restarts >= 1")
        self.model, self.eps, self.alpha, self.steps = model, float(eps), float(alpha), int(steps)
        self.random_start, self.restarts, self.eval_mode = random_start, int(restarts), eval_mode
        self.random_start_clamp = bool(random_start_clamp)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        if self.eval_mode:
            self.model.eval()
        try:
            with torch.enable_grad():
                return self.perturb(x.detach(), y)
        finally:
            self.model.train(was_training)

    def project(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """Clip to the eps-ball around x, then to the image range [0, 1]."""
        delta = torch.clamp(x_adv - x, -self.eps, self.eps)
        return torch.clamp(x + delta, 0.0, 1.0).detach()

    def _one_run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = x.clone()
        if self.random_start:
            x_adv = x + torch.empty_like(x).uniform_(-self.eps, self.eps)
            if self.random_start_clamp or self.steps == 0:  # what is returned is projected
                x_adv = self.project(x, x_adv)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(self.model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = self.project(x, x_adv.detach() + self.alpha * grad.sign())
        return x_adv

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Best of ``restarts`` runs per example (a misclassified run wins)."""
        best = self._one_run(x, y)
        for _ in range(self.restarts - 1):
            with torch.no_grad():
                fooled = self.model(best).argmax(1) != y
            if bool(fooled.all()):
                break
            cand = self._one_run(x, y)
            best = torch.where(fooled.view(-1, *[1] * (x.dim() - 1)), best, cand)
        return best


class PGD(Attack):
    """Madry et al.'s L-inf PGD: x <- Proj(x + alpha sign(grad_x CE)), ``steps`` times, from a
    uniform random start in the eps-ball (torchattacks.PGD defaults: 8/255, 2/255, 10 steps)."""

    def __init__(self, model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True, **kw):
        super().__init__(model, eps, alpha, steps, random_start, **kw)


class FGSM(Attack):
    """One signed-gradient step of size ``alpha`` (default eps); with ``random_start`` it is
    Wong et al.'s FGSM-RS (delta ~ U(-eps, eps), step alpha = 1.25 eps, clip to the ball)."""

    def __init__(self, model, eps=8 / 255, alpha=None, random_start=False, **kw):
        super().__init__(model, eps, eps if alpha is None else alpha, 1, random_start, **kw)


class TRADESAttack(Attack):
    """TRADES' inner maximisation (Zhang et al. 2019b, ``trades.py``): start x + 0.001 N(0, 1),
    then ``steps`` signed-gradient steps of ``alpha`` on KL(softmax(f(x)) || softmax(f(x'))),
    each projected to the eps-ball and [0, 1]. Eval-mode model by default, as the official code."""

    def __init__(self, model, eps=0.031, alpha=0.007, steps=10, **kw):
        super().__init__(model, eps, alpha, steps, random_start=False, **kw)

    def _one_run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from odelab.papers.yopo.yopo import trades_kl

        with torch.no_grad():
            p_clean = F.softmax(self.model(x), dim=1)
        x_adv = x + 0.001 * torch.randn_like(x)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(trades_kl(self.model(x_adv), p_clean), x_adv)
            x_adv = self.project(x, x_adv.detach() + self.alpha * grad.sign())
        return x_adv


def autoattack_accuracy(model: nn.Module, x, y, eps: float, batch: int = 250) -> float:
    """Accuracy under torchattacks' AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square)."""
    try:
        import torchattacks
    except ImportError as e:  # a dev dependency, installed without its torchvision pin
        raise ImportError(
            "autoattack_n > 0 needs torchattacks: pip install --no-deps torchattacks==3.5.1 "
            "(its torchvision requirement is never imported; see experiments/yopo/README.md)"
        ) from e
    was = model.training
    model.eval()
    try:
        atk = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard",
                                      n_classes=model.num_classes, seed=0)  # fmt: skip
        correct = 0
        for i in range(0, len(y), batch):
            adv = atk(x[i : i + batch], y[i : i + batch])
            with torch.no_grad():
                correct += (model(adv).argmax(1) == y[i : i + batch]).sum().item()
        return correct / len(y)
    finally:
        model.train(was)
