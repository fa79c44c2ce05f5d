"""PDE-Net trajectory data: generators for each equation and the staged, cached datamodule.

A batch is a float64 tensor ``[B, T+1, C, n, n]`` = (u0, u(δt), ..., u(Tδt)) on the learned
n × n grid (rows = y, columns = x; see :mod:`odelab.data.pde_solvers`). The generator runs on
the fine grid ``n · upsample`` and samples every ``upsample``-th node.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from odelab.data.pde_solvers import (
    TWO_PI,
    DirichletReactionDiffusion2d,
    SpectralLinear2d,
    UpwindConvectionDiffusion2d,
    convdiff_coefficients,
    downsample,
    grid,
    numpy_seed,
    random_lowpass_field,
    trajectory,
)

log = logging.getLogger(__name__)

EQUATIONS = ("convdiff", "nonlinear", "burgers", "heat", "cdr")
CACHE_VERSION = 1

# The true right-hand sides of the PDE-Net 2.0 examples, per channel, in the SymNet's names
# (u_x = ∂u/∂x along columns, u_y along rows); A = u² + v² expanded for CDR with ν = 0.1, β = 1.
TRUE_TERMS = {
    "burgers": {
        "u": "-u*u_x - v*u_y + {nu}*u_xx + {nu}*u_yy",
        "v": "-u*v_x - v*v_y + {nu}*v_xx + {nu}*v_yy",
    },
    "heat": {"u": "{nu}*u_xx + {nu}*u_yy"},
    "cdr": {
        "u": "-u*u_x - v*u_y + {nu}*u_xx + {nu}*u_yy + u - u**3 - u*v**2 + {beta}*u**2*v"
        " + {beta}*v**3",
        "v": "-u*v_x - v*v_y + {nu}*v_xx + {nu}*v_yy + v - v**3 - u**2*v - {beta}*u**3"
        " - {beta}*u*v**2",
    },
}


def channels_of(equation: str) -> int:
    return 2 if equation in ("burgers", "cdr") else 1


def generate(
    equation: str,
    n_traj: int,
    n_steps: int,
    seed: int,
    grid_size: int = 50,
    upsample: int = 5,
    dt: float = 0.015,
    noise: float = 0.0,
    start_time: float = 0.0,
    init_freq: int = 4,
    init_scale: float = 1.0,
    nu: float | None = None,
    beta: float = 1.0,
    spectral_size: int = 30,
    max_dt: float | None = None,
    random_offset: bool = True,
) -> dict[str, torch.Tensor]:
    """Trajectories of ``equation`` as ``{"u": noisy [B,T+1,C,n,n], "clean": same, no noise}``.

    - ``convdiff`` (v1 linear): u0 = low-passed noise with f ~ U{init_freq..2·init_freq},
      normalised to max |u0| = 1, × ``init_scale``; spectral solve; sampled at a random offset
      of the fine grid per trajectory (``DownSample`` with a random offset).
    - ``nonlinear`` (v1): u0 = 16 · g · b(x) b(y), b(s) = s(2π − s)/(2π)², max|g| = 1; zero
      Dirichlet, interior nodes of the learned grid (n − 1 per axis; ``grid_size`` = n).
    - ``burgers`` / ``heat`` / ``cdr`` (v2): u0 = 2 g + a per-channel shift U(−2, 2) (±1 for cdr);
      the first half of the batch is evolved for ``start_time`` first.

    Noise: every frame gets ``noise · std(u0) · N(0, 1)`` (per trajectory and channel).
    """
    if equation not in EQUATIONS:
        raise ValueError(f"data.equation must be one of {EQUATIONS}, got {equation!r}")
    g = torch.Generator().manual_seed(numpy_seed(seed))
    n, fine = grid_size, grid_size * upsample
    C = channels_of(equation)
    if equation == "convdiff":
        solver = SpectralLinear2d(
            convdiff_coefficients, spectral_size=spectral_size, max_dt=max_dt or 5e-3
        )
        u0 = random_lowpass_field((n_traj,), fine, (init_freq, 2 * init_freq), g)
        u0 = init_scale * u0 / u0.abs().amax(dim=(-2, -1), keepdim=True)
        uh = trajectory(solver.advance, solver.to_spectrum(u0), dt, n_steps)  # [B,T+1,S,S]
        if random_offset:
            offs = torch.randint(0, upsample, (n_traj, 2), generator=g)
        else:
            offs = torch.zeros(n_traj, 2, dtype=torch.long)
        h = TWO_PI / fine
        clean = torch.stack(
            [
                solver.to_grid(uh[b], n, (float(offs[b, 0]) * h, float(offs[b, 1]) * h))
                for b in range(n_traj)
            ]
        )[:, :, None]
    elif equation == "nonlinear":
        solver = DirichletReactionDiffusion2d(fine, nu=nu if nu is not None else 0.3)
        gfield = random_lowpass_field((n_traj,), fine, init_freq, g)[..., 1:, 1:]
        gfield = gfield / gfield.abs().amax(dim=(-2, -1), keepdim=True)
        s = torch.arange(1, fine, dtype=torch.float64) * (TWO_PI / fine)
        bump = s * (TWO_PI - s) / TWO_PI**2
        u0 = 16.0 * gfield * bump[:, None] * bump[None, :]
        traj = trajectory(solver.advance, u0, dt, n_steps)
        # interior fine nodes 1..fine-1; learned nodes are fine indices upsample, 2·upsample, ...
        clean = downsample(traj, upsample, (upsample - 1, upsample - 1))[:, :, None]
    else:
        default_nu = {"burgers": 0.05, "heat": 0.1, "cdr": 0.1}[equation]
        solver = UpwindConvectionDiffusion2d(
            fine,
            kind=equation,
            nu=nu if nu is not None else default_nu,
            beta=beta,
            max_dt=max_dt or (1e-4 if equation == "cdr" else 1.0 / 1600),
        )
        field = random_lowpass_field((n_traj, C), fine, init_freq, g)
        field = field / field.abs().amax(dim=(-2, -1), keepdim=True)
        amp = 1.0 if equation == "cdr" else 2.0
        shift = (torch.rand((n_traj, C, 1, 1), generator=g, dtype=torch.float64) * 2 - 1) * amp
        u0 = init_scale * 2.0 * field + shift
        if start_time > 0:
            half = n_traj // 2
            u0[:half] = solver.advance(u0[:half], start_time)
        clean = downsample(trajectory(solver.advance, u0, dt, n_steps), upsample)
    std = clean[:, :1].std(dim=(-2, -1), keepdim=True)
    eps = torch.randn(clean.shape, generator=g, dtype=torch.float64)
    return {"u": clean + noise * std * eps, "clean": clean}


def true_coefficient_fields(equation: str, grid_size: int) -> dict[tuple[int, int], torch.Tensor]:
    """v1: the true c_ij(y, x) on the learned grid, keyed by (order y, order x); absent = 0."""
    if equation == "convdiff":
        y, x = grid(grid_size)
        return convdiff_coefficients(y, x)
    if equation == "nonlinear":
        one = torch.ones(grid_size - 1, grid_size - 1, dtype=torch.float64)
        return {(2, 0): 0.3 * one, (0, 2): 0.3 * one}
    raise ValueError(f"no coefficient fields for {equation!r} (a PDE-Net 2.0 equation)")


def true_terms(equation: str, nu: float | None = None, beta: float = 1.0) -> dict[str, str]:
    """v2: the true right-hand side of each channel as a sympy-readable string."""
    default_nu = {"burgers": 0.05, "heat": 0.1, "cdr": 0.1}[equation]
    nu = default_nu if nu is None else nu
    return {c: t.format(nu=nu, beta=beta) for c, t in TRUE_TERMS[equation].items()}


class PDETrajectoryDataModule(pl.LightningDataModule):
    """Seeded, cached trajectories for PDE-Net's staged training.

    - train: stage s (= epoch s) gets a **fresh** batch of ``batch_size`` trajectories of
      ``n_steps`` δt-steps (seed derived from (seed, "train", s)); one batch per epoch. The
      trainer must set ``reload_dataloaders_every_n_epochs: 1``.
    - val: ``n_val`` trajectories of ``n_steps`` steps (fixed across stages).
    - test: ``n_test`` noise-free trajectories of ``test_steps`` steps from ``test_start_time``
      (the long-time rollout protocol), served in batches of ``test_batch_size``.

    Every generated set is cached at ``cache_dir/<sha256 of its parameters>.pt``; an unreadable
    or mismatched file is regenerated with a warning.
    """

    def __init__(
        self,
        equation: str = "convdiff",
        grid_size: int = 50,
        upsample: int = 5,
        dt: float = 0.015,
        n_steps: int = 20,
        batch_size: int = 24,
        n_val: int = 24,
        n_test: int = 600,
        test_steps: int = 80,
        test_batch_size: int = 100,
        test_start_time: float = 0.0,
        noise: float = 0.015,
        start_time: float = 0.0,
        init_freq: int = 4,
        init_scale: float = 1.0,
        nu: float | None = None,
        beta: float = 1.0,
        spectral_size: int = 30,
        max_dt: float | None = None,
        random_offset: bool = True,
        seed: int = 0,
        cache_dir: str | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
    ):
        super().__init__()
        if equation not in EQUATIONS:
            raise ValueError(f"data.equation must be one of {EQUATIONS}, got {equation!r}")
        self.equation = equation
        self.grid_size, self.upsample, self.dt = grid_size, upsample, dt
        self.n_steps, self.batch_size = n_steps, batch_size
        self.n_val, self.n_test, self.test_steps = n_val, n_test, test_steps
        self.test_batch_size, self.test_start_time = test_batch_size, test_start_time
        self.seed = seed
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.num_workers, self.pin_memory = int(num_workers), bool(pin_memory)
        self.gen_kwargs = dict(
            grid_size=grid_size,
            upsample=upsample,
            dt=dt,
            noise=noise,
            start_time=start_time,
            init_freq=init_freq,
            init_scale=init_scale,
            nu=nu,
            beta=beta,
            spectral_size=spectral_size,
            max_dt=max_dt,
            random_offset=random_offset,
        )
        self.nu, self.beta = nu, beta
        self.val_data: torch.Tensor | None = None
        self.test_data: torch.Tensor | None = None

    # -- facts the model reads --------------------------------------------------------------
    @property
    def channels(self) -> int:
        return channels_of(self.equation)

    @property
    def boundary(self) -> str:
        return "dirichlet" if self.equation == "nonlinear" else "periodic"

    @property
    def dx(self) -> float:
        return TWO_PI / self.grid_size

    def true_coefficient_fields(self):
        return true_coefficient_fields(self.equation, self.grid_size)

    def true_terms(self):
        return true_terms(self.equation, self.nu, self.beta)

    # -- generation + cache -----------------------------------------------------------------
    def params(self, split: str, index: int, n_traj: int, n_steps: int, **extra) -> dict:
        """Everything that determines one generated set (the cache key)."""
        kw = {**self.gen_kwargs, **extra}
        return {
            "version": CACHE_VERSION,
            "equation": self.equation,
            "split": split,
            "index": index,
            "seed": self.seed,
            "n_traj": n_traj,
            "n_steps": n_steps,
            **kw,
        }

    @staticmethod
    def cache_key(params: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:32]

    def load_or_generate(self, params: dict[str, Any]) -> dict[str, torch.Tensor]:
        path = self.cache_dir / f"{self.cache_key(params)}.pt" if self.cache_dir else None
        if path is not None and path.is_file():
            try:
                blob = torch.load(path, weights_only=True)
                if blob.get("params") != json.dumps(params, sort_keys=True):
                    raise ValueError("parameters stored in the file differ")
                return {"u": blob["u"], "clean": blob["clean"]}
            except Exception as e:
                log.warning("cached PDE data %s is unreadable (%s); regenerating it", path, e)
        p = {k: v for k, v in params.items() if k not in ("version", "split", "index")}
        split_id = {"train": 0, "val": 1, "test": 2}[params["split"]]
        p["seed"] = numpy_seed(params["seed"], split_id, params["index"])
        data = generate(params["equation"], p.pop("n_traj"), p.pop("n_steps"), **_drop(p))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            blob = {**data, "params": json.dumps(params, sort_keys=True)}
            torch.save(blob, tmp)
            tmp.replace(path)
        return data

    def stage_batch(self, stage: int) -> torch.Tensor:
        """The noisy training batch of curriculum stage ``stage``."""
        return self.load_or_generate(self.params("train", stage, self.batch_size, self.n_steps))[
            "u"
        ]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.val_data is None:
            self.val_data = self.load_or_generate(self.params("val", 0, self.n_val, self.n_steps))[
                "u"
            ]
        if stage in (None, "test") and self.test_data is None:
            params = self.params("test", 0, self.n_test, self.test_steps)
            params.update(noise=0.0, start_time=self.test_start_time)
            self.test_data = self.load_or_generate(params)["clean"]

    # -- loaders ----------------------------------------------------------------------------
    def _stage(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else 0

    def _loader(self, data: torch.Tensor, batch_size: int) -> DataLoader:
        return DataLoader(
            TensorDataset(data),
            batch_size=batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        batch = self.stage_batch(self._stage())
        return self._loader(batch, len(batch))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_data, len(self.val_data))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_data, min(self.test_batch_size, len(self.test_data)))


def _drop(p: dict) -> dict:
    """Generator keyword arguments (the cache key's bookkeeping removed)."""
    return {k: v for k, v in p.items() if k != "equation"}
