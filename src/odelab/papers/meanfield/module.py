"""The LightningModule for mean-field ResNets: classification plus the theory's diagnostics.

Besides ``{train,val,test}/{loss,acc}`` it records the training loss of every step (for the
loss-vs-step plots, in ``results.json``) and, on the test split:

- ``test/perm_loss``, ``test/perm_acc`` (and ``*_std``): mean ± std over ``eval_permutations``
  random block orders (fixed seed ``perm_seed``), each stage's blocks permuted;
- ``test/ensemble_r2``: 1 - Σ(z - z_1)² / Σ(z - z̄)² with z the logits and z_1 the logits of the
  first-order (shallow-ensemble) expansion, over the test set and classes;
- ``test/ensemble_r2_res``: the same for the residual part z - z_0 (z_0: every branch zeroed),
  which does not credit the expansion for the shared skip path;
- ``test/residual_share``: ||z - z_0|| / ||z||, how much of the logits the residual blocks make.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from odelab.modules import ImageClassifier


class MeanFieldClassifier(ImageClassifier):
    """:class:`ImageClassifier` for :class:`MeanFieldResMLP` / :class:`MeanFieldResNet`.

    Args:
        block_lr: learning-rate multiplier of the unit parameters θ_{l,m}: a number, ``"LM"``
            for L·M (the mean-field time scale: with s = 1/(L·M) each unit's gradient is
            O(1/(L·M)); ours, spec §2.4), or ``"auto"``: L·M for ``mean_field``, 1 for
            ``standard``. Other parameters use the optimiser's lr.
        eval_permutations: random block orders evaluated on the test split (0: none).
        perm_seed: seed of those orders (the same orders for every run and checkpoint).
        **kwargs: see :class:`ImageClassifier`.
    """

    def __init__(
        self,
        *args,
        block_lr: float | str = "auto",
        eval_permutations: int = 10,
        perm_seed: int = 0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if isinstance(block_lr, str) and block_lr not in ("LM", "auto"):
            raise ValueError(f"model.block_lr={block_lr!r}: use a number, 'LM' or 'auto'")
        self.block_lr = block_lr
        self.eval_permutations = int(eval_permutations)
        self.perm_seed = int(perm_seed)
        self.train_curve: list = []  # per-step losses (detached tensors: no device sync)
        self._test_orders: list[list[int]] = []
        self._diag: dict[str, list] = {}

    def block_lr_multiplier(self) -> float:
        net = self.net
        if self.block_lr == "LM" or (self.block_lr == "auto" and net.scaling == "mean_field"):
            return float(net.num_blocks * net.units)
        return 1.0 if self.block_lr == "auto" else float(self.block_lr)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.train_curve.append(loss.detach())
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["train_loss_curve"] = self.loss_curve()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # a resumed fit continues the curve; testing a checkpoint after fit keeps the full one
        if not self.train_curve:
            self.train_curve = list(checkpoint.get("train_loss_curve", []))

    def loss_curve(self) -> list[float]:
        """The training loss of every optimiser step so far."""
        return [float(v) for v in self.train_curve]

    # ---- test-time diagnostics ---------------------------------------------------------------
    def on_test_epoch_start(self) -> None:
        g = torch.Generator().manual_seed(self.perm_seed)
        self._test_orders = [self.net.sample_order(g) for _ in range(self.eval_permutations)]
        self._diag = {"perm_loss": [], "perm_correct": [], "n": [], "z": [], "z1": [], "z0": []}

    def test_step(self, batch, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        x, y = batch
        d = self._diag
        d["n"].append(y.numel())
        losses, correct = [], []
        for order in self._test_orders:
            z = self.net(x, order=order)
            losses.append(float(F.cross_entropy(z, y, reduction="sum")))
            correct.append(int((z.argmax(1) == y).sum()))
        d["perm_loss"].append(losses)
        d["perm_correct"].append(correct)
        d["z"].append(self.net(x).cpu())
        d["z1"].append(self.net.first_order(x).cpu())
        d["z0"].append(self.net(x, zero_branches=True).cpu())

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        d = self._diag
        n = sum(d["n"])
        if self._test_orders and n:
            k_orders = len(self._test_orders)
            per_loss = [sum(b[k] for b in d["perm_loss"]) / n for k in range(k_orders)]
            per_acc = [sum(b[k] for b in d["perm_correct"]) / n for k in range(k_orders)]
            self.log("test/perm_loss", sum(per_loss) / k_orders, sync_dist=True)
            self.log("test/perm_loss_std", _sd(per_loss), sync_dist=True)
            self.log("test/perm_acc", sum(per_acc) / k_orders, sync_dist=True)
            self.log("test/perm_acc_std", _sd(per_acc), sync_dist=True)
        if n:
            z, z1, z0 = (torch.cat(d[k]).double() for k in ("z", "z1", "z0"))
            self.log("test/ensemble_r2", float(r_squared(z, z1)), sync_dist=True)
            self.log("test/ensemble_r2_res", float(r_squared(z - z0, z1 - z0)), sync_dist=True)
            self.log("test/residual_share", float((z - z0).norm() / z.norm()), sync_dist=True)

    # ---- optimiser: unit parameters get the block lr -----------------------------------------
    def param_groups(self) -> list[dict]:
        hp = self.hparams
        prefixes = self.net.block_parameter_names()
        base_lr = self.optimizer_factory.keywords.get("lr")
        mult = self.block_lr_multiplier()
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in self.net.named_parameters():
            if not p.requires_grad:
                continue
            is_block = any(name == s or name.startswith(s) for s in prefixes)
            no_wd = any(s in "net." + name for s in hp.no_weight_decay)
            groups.setdefault((is_block, no_wd), []).append(p)
        params = []
        for (is_block, no_wd), ps in groups.items():
            g = {"params": ps}
            if is_block and mult != 1.0:
                if base_lr is None:
                    raise ValueError("model.block_lr needs model.optimizer.lr to be set")
                g["lr"] = base_lr * mult
            if no_wd:
                g["weight_decay"] = 0.0
            params.append(g)
        return params

    def results_summary(self) -> dict:
        """The per-step training loss and the model's L, M, scaling, order, lr multiplier."""
        net = self.net
        return {
            "train_loss_curve": self.loss_curve(),
            "model_summary": {
                "depth_L": net.num_blocks,
                "units_M": net.units,
                "scaling": net.scaling,
                "block_order": net.block_order,
                "scale_s": net.scale,
                "block_lr_multiplier": self.block_lr_multiplier(),
            },
        }


def r_squared(target: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    """1 - Σ(target - approx)² / Σ(target - mean(target))², means over samples (per column)."""
    resid = (target - approx).pow(2).sum()
    total = (target - target.mean(0, keepdim=True)).pow(2).sum()
    return 1.0 - resid / total


def _sd(values: list[float]) -> float:
    """Sample std; nan/inf survive (a diverged run), where statistics.stdev would raise."""
    return float(torch.tensor(values, dtype=torch.float64).std()) if len(values) > 1 else 0.0
