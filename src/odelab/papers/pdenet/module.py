"""LightningModules for PDE-Net (v1) and PDE-Net 2.0: staged L-BFGS training and evaluation.

One Lightning epoch = one curriculum stage. ``blocks[s]`` is the number of δt-blocks of stage
s; 0 is the warm-up (1 block, filters frozen, no regulariser). Each stage gets a fresh batch
from the datamodule (``reload_dataloaders_every_n_epochs: 1``) and runs one L-BFGS solve of
``max_iter`` iterations from the previous stage's parameters (manual optimisation, float64).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from odelab.papers.pdenet.models import PDENetV1Block, PolyPDE2d, rollout

log = logging.getLogger(__name__)


def huber_l1(x: torch.Tensor, s: float) -> torch.Tensor:
    """Σ smoothed |x|: x²/(2s) + s/2 for |x| < s, |x| otherwise (PDE-Net 2.0 ``sparse``)."""
    a = x.abs()
    return torch.where(a < s, x**2 / (2 * s) + s / 2, a).sum()


def rel_err(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """sqrt(Σ_c mean((û − u)²) / Σ_c var(u)) per sample and time: ``[B, T]`` from
    ``[B, T, C, H, W]`` (PDE-Net's relative error, square-rooted as in its plots)."""
    num = ((pred - true) ** 2).mean(dim=(-2, -1)).sum(-1)
    den = true.var(dim=(-2, -1)).sum(-1).clamp_min(1e-300)
    return (num / den).sqrt()


class StagedPDELearner(pl.LightningModule):
    """Shared staged-L-BFGS loop, rollout evaluation, percentile bands and their plot.

    Args:
        net: the δt-block (:class:`PDENetV1Block` or :class:`PolyPDE2d`).
        blocks: δt-blocks per stage (0 = warm-up with one block).
        max_iter: L-BFGS iterations per stage; ``history_size``: its memory m.
        eval_stages: stages whose parameters are also rolled out at test time (the bands per
            number of trained blocks); ``None`` = every stage.
    """

    def __init__(
        self,
        net: nn.Module,
        blocks: Sequence[int],
        max_iter: int = 300,
        history_size: int = 50,
        tolerance_grad: float = 1e-12,
        tolerance_change: float = 1e-15,
        eval_stages: Sequence[int] | None = None,
        monitor: str = "val/rel_l2",
    ):
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net"])
        self.automatic_optimization = False
        self.net = net
        self.blocks = [int(b) for b in blocks]
        self.stage_states: dict[int, dict[str, torch.Tensor]] = {}
        self._test_errs: dict[str, list[torch.Tensor]] = {}
        self._test_u: list[torch.Tensor] = []
        self.summary: dict[str, Any] = {}

    # -- schedule ---------------------------------------------------------------------------
    def stage(self) -> int:
        return min(self.current_epoch, len(self.blocks) - 1)

    def n_steps(self, stage: int) -> int:
        return max(1, self.blocks[stage])

    def is_warmup(self, stage: int) -> bool:
        return self.blocks[stage] == 0

    def setup(self, stage: str) -> None:
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        if trainer is None or dm is None or stage != "fit":
            return
        if trainer.max_epochs is not None and trainer.max_epochs > len(self.blocks):
            raise ValueError(
                f"impossible config: trainer.max_epochs={trainer.max_epochs} but model.blocks "
                f"has {len(self.blocks)} stages; set trainer.max_epochs<={len(self.blocks)}"
            )
        if max(self.n_steps(s) for s in range(len(self.blocks))) > dm.n_steps:
            raise ValueError(
                f"impossible config: model.blocks needs {max(self.blocks)} steps but data.n_steps"
                f"={dm.n_steps}; set data.n_steps>={max(self.blocks)}"
            )
        if trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError(
                "PDE-Net stages need fresh data each epoch: set "
                "trainer.reload_dataloaders_every_n_epochs=1"
            )

    def filter_params(self) -> list[nn.Parameter]:
        return [p for b in self.net.filter_banks() for p in b.parameters()]

    def configure_optimizers(self):
        return torch.optim.LBFGS(
            self.parameters(),
            lr=1.0,
            max_iter=self.hparams.max_iter,
            max_eval=int(self.hparams.max_iter * 1.25) + 1,
            history_size=self.hparams.history_size,
            tolerance_grad=self.hparams.tolerance_grad,
            tolerance_change=self.hparams.tolerance_change,
            line_search_fn="strong_wolfe",
        )

    # -- training ---------------------------------------------------------------------------
    def loss(self, u: torch.Tensor, stage: int) -> torch.Tensor:
        raise NotImplementedError

    def on_train_epoch_start(self) -> None:
        s = self.stage()
        for p in self.filter_params():  # warm-up: filters frozen, coefficients only
            p.requires_grad_(not self.is_warmup(s))
        opt = self.optimizers()
        opt = getattr(opt, "optimizer", opt)
        opt.state.clear()  # every stage is a fresh L-BFGS solve, as scipy per stage

    def training_step(self, batch, batch_idx: int) -> None:
        u = batch[0]
        s = self.stage()
        opt = self.optimizers()

        params = [p for p in self.net.parameters() if p.requires_grad]
        best: dict[str, Any] = {"loss": float("inf"), "params": None}

        def closure():
            opt.zero_grad()
            loss = self.loss(u, s)
            value = float(loss.detach())  # the CPU float64 loss; L-BFGS syncs on it anyway
            if value < best["loss"]:  # False for NaN
                best["loss"] = value
                best["params"] = [p.detach().clone() for p in params]
            self.manual_backward(loss)
            return loss

        opt.step(closure=closure)
        with torch.no_grad():
            final = self.loss(u, s)
            diverged = not torch.isfinite(final) or any(
                not torch.isfinite(p).all() for p in params
            )
            if diverged and best["params"] is not None:
                # scipy's L-BFGS-B (the official code) stops on a failed line search with its
                # last good point; torch's LBFGS can step into NaN/inf and keep it. Restore the
                # lowest finite loss this stage evaluated (at worst the stage's starting point).
                for p, b in zip(params, best["params"], strict=True):
                    p.copy_(b)
                final = self.loss(u, s)
                log.warning(
                    "stage %d: L-BFGS ended at a non-finite loss or parameters; restored the "
                    "best finite iterate of the stage (loss %.6g)",
                    s,
                    best["loss"],
                )
        self.log("train/stage_restored", float(diverged))
        # this stage's parameters (kept here, before any end-of-epoch checkpoint is written)
        self.stage_states[s] = copy.deepcopy(self.net.state_dict())
        state = getattr(opt, "optimizer", opt).state
        st = next(iter(state.values()), {}) if state else {}
        self.log("train/loss", final, prog_bar=True)
        self.log("train/stage", float(s))
        self.log("train/n_blocks", float(self.n_steps(s)))
        self.log("train/lbfgs_iters", float(st.get("n_iter", 0)))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["pdenet_stage_states"] = self.stage_states

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.stage_states = checkpoint.get("pdenet_stage_states", {})

    # -- validation -------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx: int) -> None:
        u = batch[0]
        pred = rollout(self.net, u[:, 0], u.shape[1] - 1)
        err = rel_err(pred[:, -1:], u[:, -1:])[:, 0]
        self.log("val/rel_l2", err.median(), prog_bar=True)

    # -- test: long rollouts of the final and the per-stage models ------------------------
    def _eval_nets(self) -> dict[str, nn.Module]:
        stages = self.hparams.eval_stages
        stages = sorted(self.stage_states) if stages is None else list(stages)
        nets = {"final": self.net}
        for s in stages:
            if s in self.stage_states and s != max(self.stage_states):
                net = copy.deepcopy(self.net)
                net.load_state_dict(self.stage_states[s])
                nets[f"stage{s}_blocks{self.n_steps(s)}"] = net
        return nets

    def on_test_epoch_start(self) -> None:
        self._nets = self._eval_nets()
        self._test_errs = {k: [] for k in self._nets}
        self._test_u = []

    def test_step(self, batch, batch_idx: int) -> None:
        u = batch[0]
        for name, net in self._nets.items():
            pred = rollout(net, u[:, 0], u.shape[1] - 1)
            self._test_errs[name].append(rel_err(pred, u).cpu())
        self._test_u.append(u[:, 0].cpu())

    def on_test_epoch_end(self) -> None:
        dt = self.trainer.datamodule.dt if self.trainer.datamodule is not None else 1.0
        bands = {}
        for name, errs in self._test_errs.items():
            e = torch.cat(errs).numpy()
            bands[name] = np.nanpercentile(e, [25, 50, 75], axis=0)
        final = bands["final"]
        T = final.shape[1] - 1
        half = T // 2
        self.log("test/rollout_T", T * dt)
        self.log("test/rollout_rel_l2_p25", float(final[0, -1]))
        self.log("test/rollout_rel_l2_median", float(final[1, -1]))
        self.log("test/rollout_rel_l2_p75", float(final[2, -1]))
        self.log("test/rollout_rel_l2_median_half", float(final[1, half]))
        for name, b in bands.items():
            if name != "final":
                self.log(f"test/{name}_rel_l2_median", float(b[1, -1]))
        self.summary["rollout_bands"] = {
            name: {"t_end": T * dt, "p25": b[0, -1], "p50": b[1, -1], "p75": b[2, -1]}
            for name, b in bands.items()
        }
        self._evaluate_recovery()
        self._save_bands(bands, dt)

    def _evaluate_recovery(self) -> None:
        raise NotImplementedError

    def _save_bands(self, bands: dict[str, np.ndarray], dt: float) -> None:
        if self.trainer.fast_dev_run:
            return
        out = Path(self.trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        t = np.arange(next(iter(bands.values())).shape[1]) * dt
        np.savez(out / "rollout_bands.npz", t=t, **{k: v for k, v in bands.items()})
        path = out / "rollout_bands.png"
        from odelab.papers.pdenet.report import plot_bands

        plot_bands({"": (t, bands)}, path, title=self.__class__.__name__)
        self.summary["rollout_plot"] = str(path)
        for lg in self.loggers:
            if hasattr(lg, "log_image"):
                try:
                    lg.log_image(key="test/rollout_bands", images=[str(path)])
                except Exception as e:  # W&B must never break a finished run
                    log.warning("could not log the rollout plot: %s", e)

    def results_summary(self) -> dict:
        """Recovered coefficients / expressions and rollout bands, for results.json."""
        return {"pdenet": _jsonable(self.summary)}


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray | torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, np.floating | np.integer):
        return x.item()
    return x


class PDENetV1Module(StagedPDELearner):
    """PDE-Net v1: loss mean((PDENet(u0, k) − u(kδt))²) / var(u0); coefficient recovery."""

    def __init__(self, net: PDENetV1Block, *args, **kwargs):
        super().__init__(net, *args, **kwargs)

    def loss(self, u: torch.Tensor, stage: int) -> torch.Tensor:
        k = self.n_steps(stage)
        x = u[:, 0]
        for _ in range(k):
            x = self.net(x)
        return ((x - u[:, k]) ** 2).mean() / u[:, 0].var()

    def _evaluate_recovery(self) -> None:
        dm = self.trainer.datamodule
        true = dm.true_coefficient_fields()
        learned = {o: c.detach().cpu() for o, c in self.net.coefficient_fields().items()}
        names = dict(zip(self.net.coef_orders, _order_names(self.net.coef_orders), strict=True))
        rel, spurious = {}, {}
        for o, c in learned.items():
            if o in true:
                t = true[o]
                rel[names[o]] = float((c - t).norm() / t.norm())
                self.log(f"test/coef_rel_l2_{names[o]}", rel[names[o]])
            else:
                spurious[names[o]] = float(c.pow(2).mean().sqrt())
        if rel:
            self.log("test/coef_rel_l2", float(np.mean(list(rel.values()))))
            self.log("test/coef_rel_l2_max", max(rel.values()))
        if spurious:
            self.log("test/coef_spurious_rms_max", max(spurious.values()))
        self.summary["coef_rel_l2"] = rel
        self.summary["coef_spurious_rms"] = spurious
        self.summary["coef_mean"] = {names[o]: float(c.mean()) for o, c in learned.items()}
        if self.net.f is not None:
            u = torch.cat(self._test_u)
            lo, hi = float(u.min()), float(u.max())
            s = torch.linspace(lo, hi, 201, dtype=torch.float64)
            f = self.net.f(s.to(self.device)).detach().cpu()
            src = 15.0 * torch.sin(s)
            err = float((f - src).norm() / src.norm())
            self.log("test/f_rel_l2", err)
            self.summary["f"] = {"u_range": [lo, hi], "rel_l2": err}


def _order_names(orders) -> list[str]:
    return ["u" if i + j == 0 else "u_" + "x" * j + "y" * i for i, j in orders]


class PDENet2Module(StagedPDELearner):
    """PDE-Net 2.0: every step supervised, Σ_k mean(((û_k − u_k)/δt)²) + K·λ₁ sparse(SymNet)
    + K·λ₂ sparse(moments); evaluation reads the SymNet out as a PDE and scores its terms."""

    def __init__(
        self,
        net: PolyPDE2d,
        *args,
        sparsity: float = 0.005,
        moment_sparsity: float = 0.001,
        sparse_threshold: float = 1e-3,
        moment_threshold: float = 1e-2,
        calprec: int = 4,
        **kwargs,
    ):
        super().__init__(net, *args, **kwargs)

    def loss(self, u: torch.Tensor, stage: int) -> torch.Tensor:
        hp = self.hparams
        k = self.n_steps(stage)
        dt = self.net.dt
        x, data = u[:, 0], 0.0
        for step in range(1, k + 1):
            x = self.net(x)
            data = data + (((x - u[:, step]) / dt) ** 2).mean()
        if self.is_warmup(stage):
            return data
        sym = torch.cat([p.flatten() for p in self.net.polys.parameters()])
        reg = hp.sparsity * huber_l1(sym, hp.sparse_threshold)
        mom = self.net.bank.free_moments()
        if mom.numel():
            reg = reg + hp.moment_sparsity * huber_l1(mom, hp.moment_threshold)
        return data + k * reg

    def _evaluate_recovery(self) -> None:
        import sympy

        dm = self.trainer.datamodule
        truth = dm.true_terms()
        syms = sympy.symbols(self.net.names)
        errs, spurious, terms, exprs, readout = [], [], {}, {}, []
        u0 = torch.cat(self._test_u)[:4].to(self.device)
        feats = self.net.features(u0, self.net.bank.kernels())
        local = dict(zip(self.net.names, syms, strict=True))
        for c, net in zip(self.net.channel_names, self.net.polys, strict=True):
            learned = net.polynomial()
            readout.append(net.readout_error(feats, learned))
            true_poly = sympy.Poly(sympy.sympify(truth[c], locals=local), *syms).as_dict()
            true_poly = {tuple(int(e) for e in m): float(v) for m, v in true_poly.items()}
            rows = {}
            for m, v in true_poly.items():
                got = learned.get(m, 0.0)
                rows[_mono_name(m, self.net.names)] = {"true": v, "learned": got}
                errs.append(abs(got - v) / abs(v))
            others = [
                (abs(v), f"{c}: {_mono_name(m, self.net.names)}", v)
                for m, v in learned.items()
                if m not in true_poly
            ]
            spurious += sorted(others, reverse=True)[:5]
            terms[c] = rows
            exprs[c] = str(net.expression(self.net.names, self.hparams.calprec, poly=learned))
        spurious.sort(reverse=True)
        self.log("test/coef_rel_err_max", max(errs))
        self.log("test/coef_rel_err_mean", float(np.mean(errs)))
        self.log("test/spurious_max", spurious[0][0] if spurious else 0.0)
        self.log("test/readout_rel_err", max(readout))
        self.summary["expressions"] = exprs
        self.summary["terms"] = terms
        self.summary["largest_spurious"] = [{"term": n, "coeff": v} for _, n, v in spurious[:5]]
        for c, e in exprs.items():
            log.info("recovered %s_t = %s", c, e)


def _mono_name(mono: tuple[int, ...], names: Sequence[str]) -> str:
    parts = [n if e == 1 else f"{n}**{e}" for n, e in zip(names, mono, strict=True) if e]
    return "*".join(parts) or "1"
