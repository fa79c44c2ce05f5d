"""YOPO-m-n (Zhang et al. 2019), as the official ``training_function.py`` implements it.

For one minibatch (x, y), starting from eta ~ U(-eps, eps) (not clamped to the image range):

    for j = 1..m:
        L = CE(net(x + eta), y);  backprop L        # grads of all layers accumulate
        p = -dL/dz1  (frozen co-state at the first layer's output z1 = f_0(x + eta))
        n times:  H = <f_0(clamp(x + eta, 0, 1); theta_0), p>
                  eta <- Proj_eps(eta - sigma sign(dH/deta)),  x + eta clipped to [0, 1]
        backprop -H(x + eta, p) w.r.t. theta_0 only  # the layer-one Hamiltonian gradient

Weights then get sum_j grad CE(x + eta_{j,0}) plus, for theta_0, sum_j grad_theta0 <f_0(x +
eta_{j,n}), dL/dz1 at eta_{j,0}>: one optimiser step per minibatch with lr divided by m.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def yopo_step(
    net,
    x: torch.Tensor,
    y: torch.Tensor,
    eta: torch.Tensor,
    m: int,
    n: int,
    sigma: float,
    eps: float,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    hamiltonian_grad: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Accumulate YOPO-m-n gradients into ``.grad`` of ``net``'s parameters; return the final
    eta, the m full-pass losses and the last full pass's logits (at eta_{m,0}). ``net`` has
    ``layer_one`` and ``forward_with_z1``; ``backward`` is ``LightningModule.manual_backward``
    in training (plain autograd by default)."""
    losses = []
    for _ in range(m):
        logits, z1 = net.forward_with_z1(x + eta)
        z1.retain_grad()
        loss = F.cross_entropy(logits, y)
        backward(loss)
        losses.append(loss.detach())
        last_logits = logits.detach()
        p = -z1.grad.detach()
        eta = layer_one_steps(net, x, eta, p, n, sigma, eps)
        if hamiltonian_grad:
            h = (net.layer_one(torch.clamp(x + eta, 0.0, 1.0)) * p).sum()
            backward(-h)
    return eta, losses, last_logits


def layer_one_steps(net, x, eta, p, n: int, sigma: float, eps: float) -> torch.Tensor:
    """n sign steps on the first layer's Hamiltonian H = <f_0(clamp(x + eta, 0, 1)), p>:
    eta <- eta - sigma sign(dH/deta), projected to the eps-ball and to x + eta in [0, 1]."""
    for _ in range(n):
        eta = eta.detach().requires_grad_(True)
        h = (net.layer_one(torch.clamp(x + eta, 0.0, 1.0)) * p).sum()
        (g,) = torch.autograd.grad(h, eta)
        eta = torch.clamp(eta.detach() - sigma * g.sign(), -eps, eps)
        eta = torch.clamp(x + eta, 0.0, 1.0) - x
    return eta.detach()


def trades_kl(logits_adv: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """TRADES' KL(p_clean || softmax(logits_adv)), summed over the batch (KLDivLoss(sum))."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), p_clean, reduction="sum")


def trades_yopo_adversary(
    net, x: torch.Tensor, eta: torch.Tensor, m: int, n: int, sigma: float, eps: float
) -> torch.Tensor:
    """TRADES-YOPO-m-n's adversary (official CIFAR10-TRADES code, spec 2.3): the YOPO loop on
    the KL loss to the clean softmax, with the co-state p = -dKL/dz1 from m full passes and n
    layer-one steps after each; no parameter gradient is kept. Call with ``net`` in eval mode.
    Each full pass sees x + eta unclamped, as the official loop (``net(data + eta)``): only the
    first, at the 0.001 N(0, 1) start, can leave [0, 1]; the layer-one steps keep x + eta in it."""
    with torch.no_grad():
        p_clean = F.softmax(net(x), dim=1)
    for _ in range(m):
        logits, z1 = net.forward_with_z1(x + eta)
        (g,) = torch.autograd.grad(trades_kl(logits, p_clean), z1)
        eta = layer_one_steps(net, x, eta, -g.detach(), n, sigma, eps)
    return eta
