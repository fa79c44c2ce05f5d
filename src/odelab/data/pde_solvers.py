"""PDE solvers that generate PDE-Net / PDE-Net 2.0 data (float64, batched, seeded).

Grid convention (as in the official code): fields are ``[..., H, W]`` on [0, 2π]²; axis 0 of the
field (rows, ``H``) is **y** and axis 1 (columns, ``W``) is **x**; node ``(r, c)`` sits at
``(y, x) = (r·δ, c·δ)`` with δ = 2π/n. A derivative order is written ``(i, j)`` = (order in y,
order in x), i.e. ∂_y^i ∂_x^j.

- :class:`SpectralLinear2d`: PDE-Net v1 linear data, u_t = Σ a_ij(x, y) ∂_y^i ∂_x^j u, Fourier
  pseudo-spectral (``spectral_size`` modes) with 3/2-rule de-aliased coefficient products, RK4.
- :func:`convdiff_coefficients`: the variable-coefficient convection-diffusion equation of the
  official code: u_t = a(x,y) u_x + b(x,y) u_y + 0.3 u_xx + 0.2 u_yy with
  a = 2(cos y + sin x) + 0.8, b = 0.5(cos y + x(2π − x) sin x) + 0.6.
- :class:`DirichletReactionDiffusion2d`: PDE-Net v1 nonlinear data, u_t = ν Δu + s·sin(u), zero
  Dirichlet boundary, 5-point Laplacian, explicit Euler.
- :class:`UpwindConvectionDiffusion2d`: PDE-Net 2.0 data (Burgers, heat, convection-diffusion-
  reaction): second-order upwind convection, central Laplacian, RK2 (Heun).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

TWO_PI = 2.0 * math.pi
Order = tuple[int, int]


def grid(n: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, x) coordinates ``[n, n]`` of the periodic grid r·2π/n (rows = y, columns = x)."""
    s = torch.arange(n, dtype=dtype) * (TWO_PI / n)
    return torch.meshgrid(s, s, indexing="ij")


def wavenumbers(n: int, dtype=torch.float64) -> torch.Tensor:
    """Integer wavenumbers of an n-point FFT on [0, 2π] (the Nyquist mode of even n set to 0)."""
    k = torch.fft.fftfreq(n, d=1.0 / n).to(dtype)
    if n % 2 == 0:
        k[n // 2] = 0.0
    return k


def _dealias_mask(n: int) -> torch.Tensor:
    """Keep |k| < n/2 per axis (drops the Nyquist mode of an even grid)."""
    k = torch.fft.fftfreq(n, d=1.0 / n)
    keep = k.abs() < n / 2
    return keep[:, None] & keep[None, :]


def resample_spectrum(uh: torch.Tensor, m: int) -> torch.Tensor:
    """Zero-pad or truncate a spectrum (``norm='forward'`` layout, last two axes) to m × m."""
    n = uh.shape[-1]
    if m == n:
        return uh
    s = torch.fft.fftshift(uh, dim=(-2, -1))
    if m > n:
        lo = m // 2 - n // 2
        out = s.new_zeros((*uh.shape[:-2], m, m))
        out[..., lo : lo + n, lo : lo + n] = s
    else:
        lo = n // 2 - m // 2
        out = s[..., lo : lo + m, lo : lo + m]
    return torch.fft.ifftshift(out, dim=(-2, -1))


def random_lowpass_field(
    shape: tuple[int, ...], n: int, freq: int | tuple[int, int], generator: torch.Generator
) -> torch.Tensor:
    """Gaussian white noise on an n × n grid, low-passed to |k| ≤ f per axis (``initgen``).

    ``freq`` an int fixes f; a pair ``(lo, hi)`` draws f uniformly from ``lo..hi`` per sample.
    """
    noise = torch.randn((*shape, n, n), generator=generator, dtype=torch.float64)
    k = torch.fft.fftfreq(n, d=1.0 / n).abs()
    if isinstance(freq, int):
        f = torch.full(shape, float(freq), dtype=torch.float64)
    else:
        f = torch.randint(freq[0], freq[1] + 1, shape, generator=generator).to(torch.float64)
    f = f[..., None, None]
    mask = (k[:, None] <= f) & (k[None, :] <= f)
    return torch.fft.ifft2(torch.fft.fft2(noise) * mask).real


def downsample(u: torch.Tensor, factor: int, offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Every ``factor``-th node of the last two axes, starting at ``offset`` (``DownSample``)."""
    return u[..., offset[0] :: factor, offset[1] :: factor]


# --------------------------------------------------------------------------------------------
# v1 linear: Fourier pseudo-spectral + RK4
# --------------------------------------------------------------------------------------------


def convdiff_coefficients(y: torch.Tensor, x: torch.Tensor) -> dict[Order, torch.Tensor]:
    """True coefficients of PDE-Net's linear example at (y, x): keys are (order y, order x).

    u_t = a u_x + b u_y + 0.3 u_xx + 0.2 u_yy, a = 2(cos y + sin x) + 0.8,
    b = 0.5(cos y + x(2π − x) sin x) + 0.6 (the official code's ``a01`` and ``a10``).
    """
    a = 2.0 * (torch.cos(y) + torch.sin(x)) + 0.8
    b = 0.5 * (torch.cos(y) + x * (TWO_PI - x) * torch.sin(x)) + 0.6
    one = torch.ones_like(x)
    return {(0, 1): a, (1, 0): b, (0, 2): 0.3 * one, (2, 0): 0.2 * one}


class SpectralLinear2d:
    """u_t = Σ_(i,j) a_ij(y, x) ∂_y^i ∂_x^j u on the periodic [0, 2π]², pseudo-spectral + RK4.

    The state is the spectrum of the ``spectral_size`` lowest modes; each product a_ij · ∂u is
    formed on a ``dealias_size`` grid (3/2 rule: 45 for 30 modes) and truncated back.

    Args:
        coefficients: ``(y, x) -> {order: field}``; fields are sampled on the de-aliasing grid.
        spectral_size: modes kept per axis (the official ``spectral_size=30``).
        max_dt: the largest RK4 sub-step (5e-3 officially).
    """

    def __init__(
        self,
        coefficients: Callable[[torch.Tensor, torch.Tensor], dict[Order, torch.Tensor]],
        spectral_size: int = 30,
        dealias_size: int | None = None,
        max_dt: float = 5e-3,
    ):
        self.n = spectral_size
        self.m = dealias_size or (3 * spectral_size + 1) // 2
        self.max_dt = max_dt
        y, x = grid(self.m)
        self.coefficients = {o: c.clone() for o, c in coefficients(y, x).items()}
        k = wavenumbers(self.n)
        self.ky, self.kx = k[:, None], k[None, :]
        self.mask = _dealias_mask(self.n)

    def to_spectrum(self, u: torch.Tensor) -> torch.Tensor:
        """Spectrum (``norm='forward'``) of a field on any n×n grid, truncated to the modes."""
        uh = torch.fft.fft2(u, norm="forward")
        return resample_spectrum(uh, self.n) * self.mask

    def to_grid(self, uh: torch.Tensor, n: int, offset: tuple[float, float] = (0.0, 0.0)):
        """The truncated Fourier series on the n×n grid shifted by ``offset`` (radians)."""
        if offset != (0.0, 0.0):
            uh = uh * torch.exp(1j * (self.ky * offset[0] + self.kx * offset[1]))
        return torch.fft.ifft2(resample_spectrum(uh, n), norm="forward").real

    def rhs(self, uh: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(uh)
        for (i, j), c in self.coefficients.items():
            dh = uh * (1j * self.ky) ** i * (1j * self.kx) ** j
            d = torch.fft.ifft2(resample_spectrum(dh, self.m), norm="forward").real
            out = out + resample_spectrum(torch.fft.fft2(c * d, norm="forward"), self.n)
        return out * self.mask

    def step(self, uh: torch.Tensor, dt: float) -> torch.Tensor:
        """One classical RK4 step."""
        k1 = self.rhs(uh)
        k2 = self.rhs(uh + 0.5 * dt * k1)
        k3 = self.rhs(uh + 0.5 * dt * k2)
        k4 = self.rhs(uh + dt * k3)
        return uh + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)

    def advance(self, uh: torch.Tensor, T: float) -> torch.Tensor:
        """Integrate over time T with equal sub-steps no longer than ``max_dt``."""
        n_sub = max(1, math.ceil(T / self.max_dt - 1e-9))
        for _ in range(n_sub):
            uh = self.step(uh, T / n_sub)
        return uh


# --------------------------------------------------------------------------------------------
# v1 nonlinear: zero Dirichlet, 5-point Laplacian, explicit Euler
# --------------------------------------------------------------------------------------------


class DirichletReactionDiffusion2d:
    """u_t = ν Δu + s·sin(u) on [0, 2π]² with u = 0 on the boundary; explicit Euler.

    The field ``[..., n-1, n-1]`` holds the interior nodes (r, c) = 1..n−1 of the grid with
    spacing h = 2π/n. Sub-steps are at most ``cfl · h²/(4ν)`` (the official max_dt for cfl=1).
    """

    def __init__(self, n: int, nu: float = 0.3, source: float = 15.0, cfl: float = 1.0):
        self.n, self.nu, self.source = n, nu, source
        self.h = TWO_PI / n
        self.max_dt = cfl * self.h**2 / (4.0 * nu)

    def laplacian(self, u: torch.Tensor) -> torch.Tensor:
        p = torch.nn.functional.pad(u, (1, 1, 1, 1))
        c = p[..., 1:-1, 1:-1]
        return (
            p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:] - 4 * c
        ) / self.h**2

    def rhs(self, u: torch.Tensor) -> torch.Tensor:
        return self.nu * self.laplacian(u) + self.source * torch.sin(u)

    def advance(self, u: torch.Tensor, T: float) -> torch.Tensor:
        n_sub = max(1, math.ceil(T / self.max_dt - 1e-9))
        for _ in range(n_sub):
            u = u + (T / n_sub) * self.rhs(u)
        return u


# --------------------------------------------------------------------------------------------
# v2: second-order upwind convection + central diffusion + reaction, RK2
# --------------------------------------------------------------------------------------------


def _roll(u: torch.Tensor, shift: int, dim: int) -> torch.Tensor:
    return torch.roll(u, shifts=shift, dims=dim)


def upwind2(u: torch.Tensor, velocity: torch.Tensor, h: float, dim: int) -> torch.Tensor:
    """Second-order upwind ∂u along ``dim`` (periodic) for the transport term ``velocity·∂u``.

    velocity ≥ 0: (3u_i − 4u_{i−1} + u_{i−2})/(2h);
    velocity < 0: (−3u_i + 4u_{i+1} − u_{i+2})/(2h).
    """
    back = (3 * u - 4 * _roll(u, 1, dim) + _roll(u, 2, dim)) / (2 * h)
    fwd = (-3 * u + 4 * _roll(u, -1, dim) - _roll(u, -2, dim)) / (2 * h)
    return torch.where(velocity >= 0, back, fwd)


def laplacian_periodic(u: torch.Tensor, h: float) -> torch.Tensor:
    """Second-order central 5-point Laplacian on the periodic grid."""
    return (_roll(u, 1, -2) + _roll(u, -1, -2) + _roll(u, 1, -1) + _roll(u, -1, -1) - 4 * u) / h**2


class UpwindConvectionDiffusion2d:
    """u^c_t + (w·∇) u^c = ν Δu^c + R_c(u) for a field ``[..., C, n, n]``; upwind-2 + RK2.

    ``kind``:

    - ``burgers``: C = 2, w = (u, v) (the field itself), R = 0;
    - ``heat``: C = 1, no convection, R = 0;
    - ``cdr``: C = 2, w = (u, v), R_u = (1 − A) u + β A v, R_v = −β A u + (1 − A) v, A = u² + v²;
    - ``advection``: w = ``velocity`` (a constant (w_x, w_y)), R = 0 (for tests).
    """

    KINDS = ("burgers", "heat", "cdr", "advection")

    def __init__(
        self,
        n: int,
        kind: str = "burgers",
        nu: float = 0.05,
        beta: float = 1.0,
        max_dt: float = 1.0 / 1600,
        velocity: tuple[float, float] = (0.0, 0.0),
    ):
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        self.n, self.kind, self.nu, self.beta, self.max_dt = n, kind, nu, beta, max_dt
        self.velocity = velocity
        self.h = TWO_PI / n

    def rhs(self, u: torch.Tensor) -> torch.Tensor:
        """The semi-discrete right-hand side, from one circularly padded copy of ``u``.

        Same stencils as :func:`laplacian_periodic` and :func:`upwind2` (a test holds them
        equal to round-off), written for speed: every shift is a view of the padded copy, the
        upwind choice is ``max(w, 0)·back + min(w, 0)·fwd`` (no ``where``), and the updates
        are in place; about half the memory traffic of the composed form.
        """
        h = self.h
        n0, n1 = u.shape[-2], u.shape[-1]
        flat = u.reshape(-1, 1, n0, n1)
        pad = torch.nn.functional.pad(flat, (2, 2, 2, 2), mode="circular")
        pad = pad.reshape(*u.shape[:-2], n0 + 4, n1 + 4)

        def shifted(dy: int, dx: int) -> torch.Tensor:  # u[i + dy, j + dx]
            return pad[..., 2 + dy : 2 + dy + n0, 2 + dx : 2 + dx + n1]

        out = shifted(1, 0) + shifted(-1, 0)
        out.add_(shifted(0, 1)).add_(shifted(0, -1)).add_(u, alpha=-4.0).mul_(self.nu / h**2)
        if self.kind in ("burgers", "cdr"):
            velocity = (u[..., 0:1, :, :], u[..., 1:2, :, :])
        elif self.kind == "advection":
            velocity = tuple(torch.full_like(u[..., :1, :, :], w) for w in self.velocity)
        else:
            velocity = ()
        for w, (dy, dx) in zip(velocity, ((0, 1), (1, 0))):
            # back = 3u_i − 4u_{i−1} + u_{i−2}; fwd = −(3u_i − 4u_{i+1} + u_{i+2})
            back = torch.add(shifted(-2 * dy, -2 * dx), u, alpha=3.0)
            back.add_(shifted(-dy, -dx), alpha=-4.0)
            fwd = torch.add(shifted(2 * dy, 2 * dx), u, alpha=3.0)
            fwd.add_(shifted(dy, dx), alpha=-4.0)
            out.addcmul_(w.clamp(min=0), back, value=-0.5 / h)
            out.addcmul_(w.clamp(max=0), fwd, value=0.5 / h)
        if self.kind == "cdr":
            uu, vv = u[..., 0:1, :, :], u[..., 1:2, :, :]
            a = uu * uu
            a.addcmul_(vv, vv)
            one_minus_a = 1 - a
            ou, ov = out[..., 0:1, :, :], out[..., 1:2, :, :]
            ou.addcmul_(one_minus_a, uu).addcmul_(a, vv, value=self.beta)
            ov.addcmul_(a, uu, value=-self.beta).addcmul_(one_minus_a, vv)
        return out

    def step(self, u: torch.Tensor, dt: float) -> torch.Tensor:
        """Heun's RK2: u* = u + dt f(u); u⁺ = u + dt/2 (f(u) + f(u*))."""
        k1 = self.rhs(u)
        k2 = self.rhs(torch.add(u, k1, alpha=dt))
        return torch.add(u, k1.add_(k2), alpha=0.5 * dt)

    def advance(self, u: torch.Tensor, T: float) -> torch.Tensor:
        n_sub = max(1, math.ceil(T / self.max_dt - 1e-9))
        for _ in range(n_sub):
            u = self.step(u, T / n_sub)
        return u


def trajectory(advance: Callable, u0: torch.Tensor, dt: float, n_steps: int) -> torch.Tensor:
    """(u0, u(δt), ..., u(n_steps·δt)) stacked on a new axis 1."""
    out = [u0]
    u = u0
    for _ in range(n_steps):
        u = advance(u, dt)
        out.append(u)
    return torch.stack(out, dim=1)


def numpy_seed(*ints: int) -> int:
    """A 63-bit seed from several non-negative ints (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence(list(ints)).generate_state(1, np.uint64)[0] >> np.uint64(1))
