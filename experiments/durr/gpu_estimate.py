"""Cost of one batch of the full-size DURR and DnCNN-B recipes, and the H100 time it implies.

Times (best of ``--repeats``; process CPU time on ``--device cpu``, synchronised wall time on
``cuda``) and counts the FLOPs (``torch.utils.flop_counter``, forward + backward) of: one stage-1
batch of ``durr_denoise`` (the 185,857-parameter restorer unrolled to the largest T of the batch,
as ``DURRModule`` does: 11 steps at sigma ~ U[0, 55], 128 patches of 40x40, forward + backward +
Adam), one stage-2 batch (an epsilon-greedy episode of up to 20 steps for 128 patches plus 4 DQN
updates of 64, through ``DURRModule._policy_step`` itself), one ``dncnn_denoise`` batch
(DnCNN-B, 20 layers x 64 with BN, forward + backward + Adam) and one full-size test image
(321x481, BSD68's size: a DURR trajectory of 20 steps plus the policy; one DnCNN-B pass).

On the CPU the GPU times are *estimated* two ways: (1) divided by a CPU/GPU ratio calibrated on
a measured pair, the plain ResNet-20 training step of ``benchmarks/lm_step_overhead.py`` (batch
128 CIFAR-sized, SGD), timed here the same way, against ``--ref-gpu-ms`` = 6.1 ms on the lent
H200 (benchmarks/README.md; that step is launch-bound, so this is an upper bound for the wider
DURR/DnCNN convolutions); (2) the counted FLOPs at an assumed achieved ``--assume-tflops`` (TF32
convolutions of 64 channels). On ``cuda`` the times are measured. ``--out`` writes the rows as
JSON. The H100 has the H200's compute (less memory bandwidth).

Usage: OMP_NUM_THREADS=1 python experiments/durr/gpu_estimate.py [--device cuda] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from odelab.papers.durr import DnCNN, DURRModule, PolicyNet, RecurrentRestorer


def timed(fn, repeats: int, device: torch.device) -> float:
    """Best seconds of ``repeats`` calls (after one warm-up call on a GPU)."""
    cuda = device.type == "cuda"
    if cuda:
        fn()
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter() if cuda else time.process_time()
        fn()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() if cuda else time.process_time()) - t0)
    return best


def counted(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """(best seconds, FLOPs of one call). On the CPU one call is timed under the FLOP counter
    (its overhead is small beside seconds of convolutions); on a GPU the timed calls run
    without it and one more call is counted."""
    if device.type == "cpu" and repeats <= 1:
        with FlopCounterMode(display=False) as counter:
            t0 = time.process_time()
            fn()
            s = time.process_time() - t0
        return s, float(counter.get_total_flops())
    s = timed(fn, repeats, device)
    with FlopCounterMode(display=False) as counter:
        fn()
    return s, float(counter.get_total_flops())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--ref-gpu-ms", type=float, default=6.1, help="plain ResNet-20 ms/step on the H200"
    )
    p.add_argument("--ref-cpu-ms", type=float, help="skip the calibration: ResNet-20 ms here")
    p.add_argument("--assume-tflops", type=float, default=50.0)
    p.add_argument("--repeats", type=int, default=1, help="timed calls (GPU: default 5)")
    p.add_argument("--batch", type=int, default=128, help="training patches per batch")
    p.add_argument("--image", type=int, nargs=2, default=[321, 481], help="test image H W")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        a.repeats = max(a.repeats, 5)
    torch.manual_seed(0)
    ratio = None
    if dev.type == "cpu" and a.ref_cpu_ms:
        ratio = a.ref_cpu_ms / a.ref_gpu_ms
    elif dev.type == "cpu":
        from odelab.papers.lm_resnet import LMResNet  # a calibration tool, not a paper module

        ref = LMResNet(depth=20, lm=False).train()
        opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        xc, yc = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))

        def ref_step():
            loss = F.cross_entropy(ref(xc), yc)
            opt_ref.zero_grad(set_to_none=True)
            loss.backward()
            opt_ref.step()

        ref_step()
        ratio = timed(ref_step, 2, dev) * 1e3 / a.ref_gpu_ms

    b, size = a.batch, 40
    x = torch.rand(b, 1, size, size, device=dev)
    sigma = torch.rand(b, device=dev) * 55
    y = x + sigma.view(-1, 1, 1, 1) / 255 * torch.randn_like(x)
    table = [[10, 2], [20, 4], [30, 6], [40, 8], [50, 10], [55, 11]]  # conf/model/durr.yaml
    restorer, policy = RecurrentRestorer().to(dev), PolicyNet(step_cap=20).to(dev)
    m = DURRModule(restorer, policy, partial(torch.optim.Adam, lr=1e-3), train_T="schedule",
                   T_schedule=table, step_cap=20, eps_decay_steps=10**9).to(dev)  # fmt: skip
    opt_r = torch.optim.Adam(restorer.parameters(), lr=1e-3)
    opt_p = torch.optim.Adam(policy.parameters(), lr=1e-4)
    m.optimizers = lambda: [opt_r, opt_p]  # outside a Trainer: the pieces _policy_step calls
    m.log = lambda *args, **kw: None
    m.manual_backward = lambda loss: loss.backward()

    def stage1():
        steps = m.train_steps(sigma)
        xn = y
        for n in range(int(steps.max())):
            xn = torch.where((steps > n).view(-1, 1, 1, 1), restorer.step(xn, y), xn)
        loss = F.mse_loss(xn, x)
        opt_r.zero_grad()
        loss.backward()
        opt_r.step()

    def stage2():
        m._policy_step((y, x, sigma))

    dncnn = DnCNN().to(dev)
    opt_d = torch.optim.Adam(dncnn.parameters(), lr=1e-3)

    def dncnn_step():
        loss = F.mse_loss(dncnn(y), x)
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()

    big = torch.rand(1, 1, *a.image, device=dev)

    @torch.no_grad()
    def durr_image():
        m.learned_steps(restorer.trajectory(big, 20), big)

    @torch.no_grad()
    def dncnn_image():
        dncnn.eval()
        dncnn(big)
        dncnn.train()

    m._rollout(y, x)  # fill the replay buffer past one DQN batch
    m._rollout(y, x)
    rows = [
        ("durr_stage1_batch", stage1),
        ("durr_stage2_batch", stage2),
        ("dncnn_batch", dncnn_step),
        ("durr_test_image", durr_image),
        ("dncnn_test_image", dncnn_image),
    ]
    head = f"device {dev}, threads {torch.get_num_threads()}"
    if ratio is not None:
        head += f", CPU/GPU ratio {ratio:.1f} (plain ResNet-20 step here / {a.ref_gpu_ms} ms)"
    print(head)
    out = {"device": str(dev), "ratio": ratio, "assume_tflops": a.assume_tflops, "rows": {}}
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
    for name, fn in rows:
        s, f = counted(fn, a.repeats, dev)
        gflop = f / 1e9
        row = {"s": s, "gflop": gflop, "tflops_achieved": gflop / 1e3 / s}
        rate = row["tflops_achieved"]
        line = f"{name}: {s * 1e3:.1f} ms, {gflop:.0f} GFLOP ({rate:.2f} TFLOP/s)"
        if ratio is not None:
            row["gpu_ms_by_ratio"] = s / ratio * 1e3
            row["gpu_ms_by_flops"] = gflop / a.assume_tflops
            line += (
                f"; estimated GPU {row['gpu_ms_by_ratio']:.1f} ms by the ratio, "
                f"{row['gpu_ms_by_flops']:.1f} ms at {a.assume_tflops:g} TFLOP/s"
            )
        out["rows"][name] = row
        print(line, flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
