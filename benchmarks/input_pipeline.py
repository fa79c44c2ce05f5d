"""Input pipeline headroom: images/s the image datamodule delivers (batches gathered, cropped,
flipped and normalised exactly as training gets them) vs images/s the model consumes in training
steps (LM-ResNet-20, forward + backward + SGD), one process, one clock.

Data paths measured:

- ``host``: the CPU path (``DataLoader`` over ``BatchedTensorDataset``, one gather per batch);
- ``resident``: ``data.device_resident=true`` (``TensorBatchLoader``; here on CPU tensors);
- ``per-sample``: the previous loader (``TensorDataset`` + default collate: one ``__getitem__``
  per image, then ``torch.stack``), for comparison.

Each is timed ``--repeats`` times over ``--batches`` batches and the best is kept (process CPU
time by default: the machine may be shared). Ends with

    ratio cifar10 data/model 25.3

(the host path, the default on CPU) and one line per other path.

Usage: OMP_NUM_THREADS=1 python benchmarks/input_pipeline.py [--data-dir /work/shared/data]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


class _Trainer:
    """What ``on_after_batch_transfer`` reads from the trainer during training."""

    training, global_rank, world_size, global_step = True, 0, 1, 0
    strategy = type("S", (), {"root_device": torch.device("cpu")})()


def data_rate(dm, loader, batches: int, repeats: int, clock) -> float:
    """Images per second through ``loader`` + ``dm.on_after_batch_transfer`` (best of repeats)."""
    best = float("inf")
    for r in range(repeats):
        n, it = 0, iter(loader)
        t0 = clock()
        for i in range(batches):
            try:
                b = next(it)
            except StopIteration:
                it = iter(loader)
                b = next(it)
            dm.trainer.global_step = r * batches + i
            x, _ = dm.on_after_batch_transfer(b, 0)
            n += x.shape[0]
        best = min(best, (clock() - t0) / n)
    return 1.0 / best


def model_rate(dm, batch_size: int, steps: int, repeats: int, clock) -> float:
    """Images per second of LM-ResNet-20 training steps (SGD, the paper's hyper-parameters)."""
    from odelab.papers.lm_resnet import LMResNet

    torch.manual_seed(0)
    net = LMResNet(depth=20, num_classes=dm.num_classes, in_channels=dm.in_channels).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    size = dm.image_size
    x = torch.randn(batch_size, dm.in_channels, size, size)
    y = torch.randint(0, dm.num_classes, (batch_size,))
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        for _ in range(steps):
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        best = min(best, (clock() - t0) / (steps * batch_size))
    return 1.0 / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("ODELAB_SHARED_DATA", ""))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--model-steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clock", choices=["process", "wall"], default="process")
    a = p.parse_args()
    clock = time.process_time if a.clock == "process" else time.perf_counter
    from odelab.data import CIFAR10DataModule
    from odelab.data.base import EpochSeededRandomSampler

    data_dir = Path(a.data_dir) if a.data_dir else Path(tempfile.mkdtemp()) / "data"
    if not (data_dir / "cifar10" / "cifar-10-batches-py" / "data_batch_1").is_file():
        from canonical_data import write_cifar10

        write_cifar10(data_dir, n_per_batch=10000, batches=(1, 2))  # synthetic: timing only
    kw = dict(batch_size=a.batch_size, train_files=["data_batch_1", "data_batch_2"], seed=0)
    dm = CIFAR10DataModule(str(data_dir), device_resident=False, **kw)
    dm.setup("fit")
    dm.trainer = _Trainer()
    n = len(dm.data_train)
    print(f"cifar10 train images {n}, batch {a.batch_size}, threads {torch.get_num_threads()}, "
          f"clock {clock.__name__}, torch {torch.__version__}", flush=True)  # fmt: skip
    legacy = DataLoader(TensorDataset(*dm.data_train.tensors), batch_size=a.batch_size,
                        sampler=EpochSeededRandomSampler(n, 0))  # fmt: skip
    rates = {
        "host": data_rate(dm, dm.train_dataloader(), a.batches, a.repeats, clock),
        "resident": data_rate(
            dm,
            dm._device_loader("train", dm.data_train, a.batch_size, shuffle=True),
            a.batches,
            a.repeats,
            clock,
        ),  # fmt: skip
        "per-sample": data_rate(dm, legacy, a.batches, a.repeats, clock),
    }
    model = model_rate(dm, a.batch_size, a.model_steps, a.repeats, clock)
    for k, v in rates.items():
        print(f"data {k}: {v:,.0f} images/s", flush=True)
    print(f"model lm_resnet20 training: {model:,.0f} images/s")
    print(f"ratio cifar10 data/model {rates['host'] / model:.1f}")
    print(f"ratio cifar10 resident-data/model {rates['resident'] / model:.1f}")
    print(f"ratio cifar10 per-sample-data/model {rates['per-sample'] / model:.1f}")
    print(f"ratio cifar10 host/per-sample data {rates['host'] / rates['per-sample']:.1f}")


if __name__ == "__main__":
    main()
