"""DURR training in two stages inside one LightningModule, and its evaluation.

Stage 1 (``restorer``, the first ``restorer_epochs`` epochs): train the restoration unit so that
x_T(y) is close to x, with the terminal time T of each patch from its degradation level:
``train_T: fixed`` (T = ``fixed_T``) or ``schedule`` (the hand-set table ``T_schedule``,
``[[level_bound, T], ...]``: the first row whose bound >= level, read in order; JPEG tables list
quality factors). Loss: MSE(x_T, x) (``deep_supervision`` adds the mean MSE of every x_n).

Stage 2 (``policy``, the remaining epochs, restorer frozen): the stopping policy Q_phi is trained
by deep Q-learning. Episodes run from x_0 = y; at each n the epsilon-greedy action is ``stop``
(reward 0, terminal) or ``continue`` (x_{n+1} = step(x_n), reward
r_n = f(L(x_n)) - f(L(x_{n+1})), the decrease of the loss L = MSE(., x); f = identity scaled by
``reward_scale`` (``reward: mse``) or -PSNR (``reward: psnr``, the PSNR gain)); at n = step_cap
only ``stop`` is allowed. With ``explore_starts`` each episode first continues for a uniform
random number of steps in 0..step_cap (our choice, so that late steps are visited at all).
Transitions go to a replay buffer; minibatches from it minimise the
Huber loss to the target r + gamma * max_a Q_target(x_{n+1}, a) (r alone when x_{n+1} is the cap
state), with a target network copied every ``target_update`` updates. With gamma = 1 the
returns telescope: Q(x_n, continue) estimates f(L(x_n)) - f(L(x_stop)), so both reward choices
have the same optimal stopping time (the n of least loss along the trajectory).

``restorer_ckpt`` loads the restoration unit from an earlier run's checkpoint (stage 2 only).

Test (one trajectory x_0..x_cap per batch): PSNR at every fixed T (``fixed_curve``), the
learned stopping time (first n with argmax Q = stop), the hand-set schedule T(level) (needs the
true level: non-blind), the per-cell oracle T and the best single T chosen at ``ref_level``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from odelab.modules.restoration import CellStats, RestorationModule, psnr, ssim
from odelab.papers.durr.model import CONTINUE, STOP, PolicyNet, RecurrentRestorer

log = logging.getLogger(__name__)


def schedule_T(level: torch.Tensor, table: Sequence[Sequence[float]]) -> torch.Tensor:
    """T(level) from ``[[bound, T], ...]``: the T of the first row with level <= bound; levels
    beyond every bound get the last row's T."""
    out = torch.full_like(level, float(table[-1][1]))
    for bound, t in reversed(list(table)):
        out = torch.where(level <= float(bound), torch.full_like(level, float(t)), out)
    return out.long()


class ReplayBuffer:
    """A ring buffer of transitions (x_n, y, n, a, r, x_{n+1}, done) on the CPU."""

    def __init__(self, capacity: int):
        self.capacity, self.size, self.pos = int(capacity), 0, 0
        self.data: dict[str, torch.Tensor] = {}

    def push(self, **batch: torch.Tensor) -> None:
        k = next(iter(batch.values())).shape[0]
        if not self.data:
            self.data = {
                name: torch.zeros((self.capacity, *v.shape[1:]), dtype=v.dtype)
                for name, v in batch.items()
            }
        idx = (self.pos + torch.arange(k)) % self.capacity
        for name, v in batch.items():
            self.data[name][idx] = v.detach().cpu()
        self.pos = int((self.pos + k) % self.capacity)
        self.size = min(self.size + k, self.capacity)

    def sample(self, k: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(self.size, (k,), generator=generator)
        return {name: v[idx] for name, v in self.data.items()}

    def __len__(self) -> int:
        return self.size


class DURRModule(RestorationModule):
    """DURR: recurrent restorer (stage 1) + DQN stopping policy (stage 2), one run path."""

    grid_key = "images/test_durr"

    def __init__(
        self,
        restorer: RecurrentRestorer,
        policy: PolicyNet,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        task: str = "denoise",
        restorer_epochs: int = 1,
        restorer_ckpt: str | None = None,
        train_T: str = "fixed",
        fixed_T: int = 8,
        T_schedule: Sequence[Sequence[float]] = ((15, 3), (25, 5), (35, 7), (45, 9), (55, 11)),
        deep_supervision: bool = False,
        step_cap: int = 20,
        policy_lr: float = 1e-4,
        gamma: float = 1.0,
        reward: str = "psnr",
        reward_scale: float = 1000.0,
        replay_capacity: int = 4096,
        dqn_batch: int = 64,
        dqn_updates: int = 4,
        target_update: int = 100,
        eps_start: float = 1.0,
        eps_end: float = 0.05,
        eps_decay_steps: int = 1000,
        explore_starts: bool = True,
        ref_level: float = 25,
        eval_mode: str = "auto",
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters(
            logger=False, ignore=["restorer", "policy", "optimizer", "scheduler"]
        )
        if train_T not in ("fixed", "schedule"):
            raise ValueError(f"model.train_T={train_T!r}: use fixed or schedule")
        if reward not in ("mse", "psnr"):
            raise ValueError(f"model.reward={reward!r}: use mse or psnr")
        if eval_mode not in ("auto", "learned", "fixed", "schedule"):
            raise ValueError(f"model.eval_mode={eval_mode!r}: auto|learned|fixed|schedule")
        if policy.step_cap != step_cap:
            raise ValueError(
                f"model.policy.step_cap={policy.step_cap} differs from model.step_cap={step_cap}"
            )
        max_T = max([fixed_T, *(int(t) for _, t in T_schedule)])
        if max_T > step_cap:
            raise ValueError(f"a training T ({max_T}) exceeds model.step_cap={step_cap}")
        self.automatic_optimization = False
        self.restorer, self.policy = restorer, policy
        self.target = copy.deepcopy(policy).requires_grad_(False)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.register_buffer("policy_trained", torch.tensor(False))
        self.replay = ReplayBuffer(replay_capacity)
        self._g = torch.Generator().manual_seed(seed)
        self._policy_steps = 0
        self._dqn_updates = 0
        if restorer_ckpt:
            self.load_restorer(restorer_ckpt)

    # ---- pieces ---------------------------------------------------------------------------
    def load_restorer(self, path: str) -> None:
        """Restorer weights from a Lightning checkpoint of this module (keys ``restorer.*``)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"model.restorer_ckpt={path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        sub = {k[len("restorer.") :]: v for k, v in state.items() if k.startswith("restorer.")}
        if not sub:
            raise ValueError(f"{path} has no restorer.* weights (is it a DURR checkpoint?)")
        self.restorer.load_state_dict(sub)
        self.hparams.restorer_epochs = 0
        log.info("restorer loaded from %s; training the policy only", path)

    @property
    def stage(self) -> str:
        return "restorer" if self.current_epoch < self.hparams.restorer_epochs else "policy"

    def train_steps(self, level: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        if hp.train_T == "fixed":
            return torch.full_like(level, hp.fixed_T).long()
        return schedule_T(level, hp.T_schedule)

    def _f(self, mse: torch.Tensor) -> torch.Tensor:
        """The reward potential: r_n = f(L_n) - f(L_{n+1})."""
        if self.hparams.reward == "psnr":
            return 10 * torch.log10(mse.clamp_min(1e-12))
        return self.hparams.reward_scale * mse

    @staticmethod
    def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).pow(2).flatten(1).mean(1)

    def epsilon(self) -> float:
        hp = self.hparams
        frac = min(1.0, self._policy_steps / max(1, hp.eps_decay_steps))
        return hp.eps_start + frac * (hp.eps_end - hp.eps_start)

    # ---- training -------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> None:
        if self.stage == "restorer":
            self._restorer_step(batch)
        else:
            self._policy_step(batch)

    def _restorer_step(self, batch) -> None:
        y, x, level = batch
        opt = self.optimizers()[0]
        steps = self.train_steps(level)
        xn, sup = y, []
        for n in range(int(steps.max())):
            run = (steps > n).view(-1, 1, 1, 1)
            xn = torch.where(run, self.restorer.step(xn, y), xn)
            if self.hparams.deep_supervision:
                sup.append(F.mse_loss(xn, x))
        loss = F.mse_loss(xn, x)
        if sup:
            loss = loss + torch.stack(sup).mean()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/T_mean", steps.float().mean())

    @torch.no_grad()
    def _rollout(self, y: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
        """One epsilon-greedy episode per image; transitions go to the replay buffer."""
        cap, eps = self.hparams.step_cap, self.epsilon()
        self.restorer.eval()
        b = y.shape[0]
        active = torch.ones(b, dtype=torch.bool, device=y.device)
        xn, f_n = y, self._f(self._mse(y, x))
        lengths = torch.zeros(b, device=y.device)
        # exploring starts: continue for a uniform number of steps first, so that late steps
        # (needed at high levels) are visited; epsilon-greedy alone rarely gets past n ~ 5
        force = torch.zeros(b, dtype=torch.long, device=y.device)
        if self.hparams.explore_starts:
            force = torch.randint(cap + 1, (b,), generator=self._g).to(y.device)
        for n in range(cap + 1):
            idx = active.nonzero().flatten()
            if idx.numel() == 0:
                break
            nn_ = torch.full((idx.numel(),), n, device=y.device)
            greedy = self.policy(xn[idx], y[idx], nn_).argmax(1)
            rand = torch.rand(idx.numel(), generator=self._g).to(y.device) < eps
            coin = torch.randint(2, (idx.numel(),), generator=self._g).to(y.device)
            a = torch.where(rand, coin, greedy)
            a = torch.where(force[idx] > n, torch.full_like(a, CONTINUE), a)
            if n == cap:
                a = torch.full_like(a, STOP)
            stop = idx[a == STOP]
            if stop.numel():
                self.replay.push(
                    x=xn[stop], y=y[stop], n=torch.full((stop.numel(),), n),
                    a=torch.full((stop.numel(),), STOP), r=torch.zeros(stop.numel()),
                    x_next=xn[stop], done=torch.ones(stop.numel(), dtype=torch.bool),
                )  # fmt: skip
                active[stop] = False
            go = idx[a == CONTINUE]
            if go.numel():
                x_next = self.restorer.step(xn[go], y[go])
                f_next = self._f(self._mse(x_next, x[go]))
                r = f_n[go] - f_next
                self.replay.push(
                    x=xn[go], y=y[go], n=torch.full((go.numel(),), n),
                    a=torch.full((go.numel(),), CONTINUE), r=r,
                    x_next=x_next, done=torch.zeros(go.numel(), dtype=torch.bool),
                )  # fmt: skip
                xn = xn.clone()
                xn[go] = x_next
                f_n = f_n.clone()
                f_n[go] = f_next
                lengths[go] += 1
        return float(lengths.mean()), eps

    def _policy_step(self, batch) -> None:
        hp = self.hparams
        y, x, _ = batch
        if not bool(self.policy_trained):
            self.policy_trained.fill_(True)
        mean_len, eps = self._rollout(y, x)
        self._policy_steps += 1
        opt = self.optimizers()[1]
        losses = []
        for _ in range(hp.dqn_updates):
            if len(self.replay) < hp.dqn_batch:
                break
            s = {
                k: v.to(self.device) for k, v in self.replay.sample(hp.dqn_batch, self._g).items()
            }
            q = self.policy(s["x"], s["y"], s["n"]).gather(1, s["a"].view(-1, 1)).squeeze(1)
            with torch.no_grad():
                n1 = s["n"] + 1
                q_next = self.target(s["x_next"], s["y"], n1).max(1).values
                # at the cap only `stop` (value 0) is allowed; max(Q) would overestimate
                q_next = torch.where(n1 >= hp.step_cap, torch.zeros_like(q_next), q_next)
                target = s["r"] + hp.gamma * torch.where(s["done"], 0.0, q_next)
            loss = F.smooth_l1_loss(q, target)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            losses.append(loss.detach())
            self._dqn_updates += 1
            if self._dqn_updates % hp.target_update == 0:
                self.target.load_state_dict(self.policy.state_dict())
        if losses:
            self.log("train/q_loss", torch.stack(losses).mean(), prog_bar=True)
        self.log("train/episode_len", mean_len)
        self.log("train/eps", eps)

    def on_train_epoch_end(self) -> None:
        sch = self.lr_schedulers()
        if sch is not None and self.stage == "restorer":
            sch.step()

    def configure_optimizers(self):
        opt_r = self.optimizer_factory(params=self.restorer.parameters())
        opt_p = torch.optim.Adam(self.policy.parameters(), lr=self.hparams.policy_lr)
        if self.scheduler_factory is None:
            return [opt_r, opt_p]
        return [opt_r, opt_p], [self.scheduler_factory(optimizer=opt_r)]

    # ---- evaluation -----------------------------------------------------------------------
    def main_mode(self) -> str:
        mode = self.hparams.eval_mode
        if mode == "auto":
            return "learned" if bool(self.policy_trained) else self.hparams.train_T
        return mode

    @torch.no_grad()
    def learned_steps(self, xs: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """First n with argmax Q(x_n) = stop (the cap if never)."""
        cap = len(xs) - 1
        steps = torch.full((y.shape[0],), cap, device=y.device, dtype=torch.long)
        undecided = torch.ones_like(steps, dtype=torch.bool)
        for n in range(cap):
            q = self.policy(xs[n], y, torch.full((y.shape[0],), n, device=y.device))
            stop = undecided & (q.argmax(1) == STOP)
            steps = torch.where(stop, torch.full_like(steps, n), steps)
            undecided &= ~stop
            if not undecided.any():
                break
        return steps

    @torch.no_grad()
    def _eval_step(self, batch: dict, split: str) -> None:
        y, x, level, groups = batch["y"], batch["x"], batch["level"], list(batch["group"])
        xs = self.restorer.trajectory(y, self.hparams.step_cap)
        curve = torch.stack([psnr(xn, x) for xn in xs], 1)  # [B, cap + 1]
        t_learned = self.learned_steps(xs, y)
        t_sched = schedule_T(level, self.hparams.T_schedule).clamp_max(len(xs) - 1)
        t_fixed = torch.full_like(t_learned, self.hparams.fixed_T)
        choice = {"learned": t_learned, "schedule": t_sched, "fixed": t_fixed}[self.main_mode()]
        stack = torch.stack(xs, 1)
        rows = torch.arange(y.shape[0], device=y.device)
        x_hat = stack[rows, choice]
        per_image = {
            "psnr": curve[rows, choice],
            "ssim": ssim(x_hat, x),
            "steps": t_learned.float(),
            "psnr_sched": curve[rows, t_sched],
        }
        per_image.update({f"curve{n:02d}": curve[:, n] for n in range(curve.shape[1])})
        self.stats[split].add(groups, **per_image)
        if split == "test":
            self._save_grids(groups, y, x_hat, x)

    def _log_cells(self, split: str) -> dict[str, dict[str, float]]:
        stats = self.stats[split]
        table: dict[str, dict[str, float]] = {}
        for g in stats.groups():
            row = {n: stats.mean(g, n) for n in stats.values[g] if not n.startswith("curve")}
            curve = [stats.mean(g, f"curve{n:02d}") for n in range(self.hparams.step_cap + 1)]
            row["steps_std"] = stats.std(g, "steps")
            row["oracle_T"] = int(np.argmax(curve))
            row["psnr_oracle"] = float(np.max(curve))
            row["fixed_curve"] = curve
            row["n_images"] = len(stats.values[g]["psnr"])
            table[g] = row
        if not table:
            return table
        self.log(f"{split}/psnr", float(np.mean([t["psnr"] for t in table.values()])))
        self.log(f"{split}/ssim", float(np.mean([t["ssim"] for t in table.values()])))
        if split != "test":
            return table
        best_T = self._best_T_at_ref(table)
        for g, row in table.items():
            if best_T is not None:
                row["best_T_ref"] = best_T
                row["psnr_bestT"] = row["fixed_curve"][best_T]
            for key in ("psnr", "ssim", "steps", "psnr_sched", "psnr_oracle", "psnr_bestT"):
                if key in row:
                    self.log(f"test/{key}_{g}", float(row[key]), sync_dist=False)
        return table

    def _best_T_at_ref(self, table: dict) -> int | None:
        """The single T with the best mean PSNR over the cells at ``ref_level`` (all sets)."""
        tag = (
            "s" if self.hparams.task == "denoise" else "q"
        ) + f"{float(self.hparams.ref_level):g}"
        curves = [row["fixed_curve"] for g, row in table.items() if g.endswith(f"_{tag}")]
        return int(np.argmax(np.mean(curves, 0))) if curves else None

    def on_test_cells(self, stats: CellStats) -> None:
        self.summary["main_mode"] = self.main_mode()
        root = self._run_dir()
        if root is not None and self.summary.get("cells"):
            from odelab.papers.durr.report import plot_steps

            path = plot_steps(self.summary["cells"], root / "steps_vs_level.png")
            if path is not None:
                from odelab.modules.restoration import log_images_to_wandb

                log_images_to_wandb(self.trainer, "plots/steps_vs_level", [path])
