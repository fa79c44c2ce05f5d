"""PDE-Net data and model costs: solver throughput at the papers' grids and one δt-block's
forward + backward, printed with the grid sizes (ratios within one run).

    python benchmarks/pde_solvers.py [--quick] [--threads 1]

- v1 linear: spectral RK4 (30 modes, 45-point de-aliasing), 250² generator grid sampled to 50²,
  trajectories of 20 blocks of δt = 0.015 (one curriculum stage's batch).
- v1 nonlinear: explicit Euler on 250², 20 blocks of δt = 0.01.
- v2 Burgers: upwind-2 + RK2 on 128² (16 sub-steps per δt = 0.01), 18 blocks.
- δt-blocks: PDE-Net v1 (7×7, max order 4, 50²) and PDE-Net 2.0 (5×5 upwind SymNet, 32²).
- v2 data start at t = 0 here (the experiments first evolve half of each batch to t = 1).
Times are the best of the repeats in process CPU time (the stable number on a shared machine;
wall time is printed beside it). ``--quick`` shrinks every size (a smoke run; its numbers are
not the papers' grids).
"""

from __future__ import annotations

import argparse
import time

import torch

from odelab.data.pde_data import generate
from odelab.papers.pdenet.models import PDENetV1Block, PolyPDE2d, rollout


def timed(fn, repeat: int = 1) -> tuple[float, float]:
    """(best wall seconds, best process-CPU seconds) over ``repeat`` calls after one warm-up.
    On a shared machine the CPU time is the stable number (one thread: CPU ≈ wall when idle)."""
    fn()  # warm-up
    walls, cpus = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=4)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    q = a.quick
    B = 2 if q else a.batch
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float64, batch {B}")
    gens = [
        ("v1 convdiff spectral", "convdiff", 50, 5, 0.015, 20, {}),
        ("v1 nonlinear Dirichlet", "nonlinear", 50, 5, 0.01, 20, {}),
        ("v2 burgers upwind RK2", "burgers", 32, 4, 0.01, 18, {}),
    ]
    print("\n== solver throughput (one stage's trajectories) ==")
    for label, eq, n, up, dt, steps, kw in gens:
        if q:
            n, up, steps = 16, 2, 2
        w, c = timed(lambda: generate(eq, B, steps, 0, grid_size=n, upsample=up, dt=dt, **kw))  # noqa: B023
        print(
            f"{label:26s} generator {n * up}^2 -> {n}^2, {steps} blocks: "
            f"{B / c:8.3f} trajectories/CPU-s ({c:.2f} CPU-s, {w:.2f} wall-s per {B})"
        )
    print(f"\n== one delta-t block, forward + backward (batch of {B}) ==")
    n1 = 16 if q else 50
    v1 = PDENetV1Block(n1, 0.015, "linear", 4, 7, "moment", coef_cells=20)
    n2 = 16 if q else 32
    v2 = PolyPDE2d(2, n2, 0.01, 5, 2, "frozen", "upwind", hidden_layers=5)
    v2_lite = PolyPDE2d(2, n2, 0.01, 5, 2, "frozen", "upwind", hidden_layers=3)
    for label, net, shape in [
        (f"PDE-Net v1 7x7 order<=4 {n1}^2", v1, (B, 1, n1, n1)),
        (f"PDE-Net 2.0 SymNet-5 upwind {n2}^2", v2, (B, 2, n2, n2)),
        (f"PDE-Net 2.0 SymNet-3 upwind {n2}^2 (lite)", v2_lite, (B, 2, n2, n2)),
    ]:
        u = torch.randn(shape, dtype=torch.float64)

        def fwd_bwd(net=net, u=u):
            net.zero_grad()
            rollout(net, u, 1)[:, -1].pow(2).mean().backward()

        def fwd(net=net, u=u):
            with torch.no_grad():
                net(u)

        (wf, tf), (wb, tb) = timed(fwd, 5), timed(fwd_bwd, 5)
        print(
            f"{label:43s} forward {tf * 1e3:8.2f} ms, forward+backward {tb * 1e3:8.2f} ms "
            f"CPU (ratio {tb / tf:.2f}; wall {wf * 1e3:.2f} / {wb * 1e3:.2f} ms)"
        )


if __name__ == "__main__":
    main()
