"""Training-speed paths (issue 10): device-resident data, speed switches, no per-step syncs.

Everything runs on CPU tensors: the device-resident loader is exercised with ``device=cpu``
(the same code moves the split to CUDA when the trainer runs there), and the CUDA generator
cannot be compared here.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from conftest import CONF, ROOT, compose
from odelab.callbacks.speed import SpeedSwitches, check_speed_config
from odelab.data.base import (
    BatchedTensorDataset,
    EpochSeededRandomSampler,
    TensorBatchLoader,
    collate_batch,
)
from odelab.data.transforms import random_crop_flip

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
TINY = ["trainer.max_epochs=1", "++trainer.limit_train_batches=3", "++trainer.limit_val_batches=1",
        "++trainer.limit_test_batches=1", "logger=none", "++trainer.enable_progress_bar=false",
        "data.train_subset=384", "data.test_subset=128"]  # fmt: skip


# ---- device-resident data --------------------------------------------------------------------


def _data(n=300):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(n)


def test_device_loader_serves_the_host_loaders_batches():
    """One device, shuffled: TensorBatchLoader == DataLoader(EpochSeededRandomSampler), per epoch;
    a fresh loader set to epoch e (a resumed run) gives epoch e's batches again."""
    x, y = _data()
    host = DataLoader(BatchedTensorDataset(x, y), batch_size=64, collate_fn=collate_batch,
                      sampler=EpochSeededRandomSampler(len(y), seed=5))  # fmt: skip
    dev = TensorBatchLoader((x, y), 64, shuffle=True, seed=5)
    seen = []
    for epoch in (0, 1, 2):
        host.sampler.set_epoch(epoch)
        dev.sampler.set_epoch(epoch)
        a, b = list(host), list(dev)
        assert len(a) == len(b) == len(dev) == math.ceil(300 / 64)
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        seen.append(torch.cat([yb for _, yb in b]))
        assert sorted(seen[-1].tolist()) == list(range(300))  # every image once
    assert not torch.equal(seen[0], seen[1])  # reshuffled each epoch
    resumed = TensorBatchLoader((x, y), 64, shuffle=True, seed=5)
    resumed.sampler.set_epoch(1)
    assert torch.equal(torch.cat([yb for _, yb in resumed]), seen[1])


@pytest.mark.parametrize("n,world", [(300, 2), (301, 3), (7, 4)])
def test_device_loader_shards_like_distributed_sampler(n, world):
    """Each rank gets ceil(n / world) indices; together they cover the epoch's permutation
    (padded by repeating its start, as DistributedSampler); shuffled per epoch, no shuffle
    for evaluation."""
    x, y = _data(n)
    for shuffle in (True, False):
        for epoch in (0, 3):
            shards = []
            for rank in range(world):
                ld = TensorBatchLoader((x, y), 16, shuffle, seed=1, rank=rank, world_size=world)
                ld.sampler.set_epoch(epoch)
                shards.append(torch.cat([b[1] for b in ld]))
            assert all(len(s) == math.ceil(n / world) for s in shards)
            merged = torch.stack(shards, 1).flatten()  # interleave back: rank r took r::world
            assert sorted(set(merged.tolist())) == list(range(n))
            assert torch.equal(merged[n:], merged[: len(merged) - n])  # the padding
            if not shuffle:
                assert torch.equal(merged[:n], torch.arange(n))
    with pytest.raises(ValueError, match="rank"):
        TensorBatchLoader((x, y), 4, rank=2, world_size=2)


def _offsets(out: torch.Tensor, h: int, w: int, pad: int):
    """(top, left, flipped) of each crop of a coordinate image (value = 1 + row * w + col)."""
    c = out[:, 0, h // 2].long()
    flipped = c[:, w // 2 + 1] < c[:, w // 2]
    src = c[:, w // 2] - 1
    row, col = src // w, src % w
    top = row - h // 2 + pad
    left = torch.where(flipped, col - (w - 1 - w // 2), col - w // 2) + pad
    return top, left, flipped


def test_augmentation_distribution_and_identity_across_paths():
    """The crops and flips are uniform over the (2 pad + 1)^2 offsets and 1/2 (chi-square), and
    the device-resident pipeline reproduces the host pipeline's augmented batches bit for bit
    (same batches, same (seed, step, rank) generator)."""
    h = w = 16
    pad, n = 4, 20000
    img = (1 + torch.arange(h * w, dtype=torch.int32)).view(1, 1, h, w).expand(n, 1, h, w)
    g = torch.Generator().manual_seed(0)
    top, left, flipped = _offsets(random_crop_flip(img, pad, "zeros", True, g), h, w, pad)
    k = 2 * pad + 1
    counts = torch.bincount(top * k + left, minlength=k * k).double()
    chi2 = ((counts - n / k**2) ** 2 / (n / k**2)).sum().item()
    assert chi2 < 130, chi2  # 80 dof: P(chi2 > 130) ~ 4e-4 under uniformity
    assert abs(flipped.double().mean().item() - 0.5) < 4 * 0.5 / math.sqrt(n)
    # a known offset reproduces exactly (the decoding above is right)
    from odelab.data.transforms import crop_flip

    t = torch.tensor([1, 7])
    o = crop_flip(img[:2], t, t.flip(0), torch.tensor([False, True]), pad)
    tt, ll, ff = _offsets(o, h, w, pad)
    assert tt.tolist() == [1, 7] and ll.tolist() == [7, 1] and ff.tolist() == [False, True]


class _FakeTrainer:
    training, global_rank, world_size = True, 0, 1

    def __init__(self, step):
        self.global_step = step
        self.strategy = type("S", (), {"root_device": torch.device("cpu")})()


def test_datamodule_paths_agree(tmp_path):
    """CIFAR-10 datamodule: device_resident=true (on CPU) vs false gives identical normalised,
    augmented training batches and identical evaluation batches."""
    from canonical_data import write_cifar10
    from odelab.data import CIFAR10DataModule

    write_cifar10(tmp_path, n_per_batch=40)
    out = {}
    for resident in (False, True):
        dm = CIFAR10DataModule(str(tmp_path), batch_size=32, seed=3, device_resident=resident)
        dm.setup("fit")
        batches = []
        for step, loader in enumerate((dm.train_dataloader(), dm.val_dataloader())):
            dm.trainer = _FakeTrainer(step)
            dm.trainer.training = step == 0
            assert isinstance(loader, TensorBatchLoader if resident else DataLoader)
            for b in loader:
                batches.append(dm.on_after_batch_transfer(b, 0))
        out[resident] = batches
    assert len(out[True]) == len(out[False]) == math.ceil(200 / 32) + math.ceil(40 / 32)
    for (xa, ya), (xb, yb) in zip(out[False], out[True], strict=True):
        assert xa.dtype == torch.float32 and torch.equal(xa, xb) and torch.equal(ya, yb)
    with pytest.raises(ValueError, match="device_resident"):
        CIFAR10DataModule(str(tmp_path), device_resident="gpu")


def test_device_resident_run_equals_host_run(run_experiment, tmp_path):
    """The run path with data.device_resident=true trains to the same weights, bit for bit, as
    the host DataLoader path (CPU, augmentation on, 3 steps)."""
    from canonical_data import write_cifar10

    write_cifar10(tmp_path / "d", n_per_batch=40)
    base = ["experiment=lm_resnet20_cifar10", "model.net.depth=8", f"paths.data_dir={tmp_path}/d",
            "data.batch_size=32", "data.num_workers=0", "test=false", *TINY]  # fmt: skip
    states = []
    for resident in ("true", "false"):
        _, out = run_experiment([*base, f"data.device_resident={resident}"], name=resident)
        states.append(torch.load(out / "checkpoints" / "last.ckpt", weights_only=False))
    a, b = (s["state_dict"] for s in states)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- speed switches --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["trainer.precision=16-mixed", "trainer.accelerator=cpu"], "trainer.precision"),
        (["trainer.deterministic=true", "trainer.benchmark=true"], "trainer.benchmark"),
        (["speed.compile_mode=fastest"], "speed.compile_mode"),
        (["speed.channels_last=yes"], "speed.channels_last"),
        (["speed.matmul_precision=low"], "speed.matmul_precision"),
    ],
)
def test_impossible_switches_name_the_keys(overrides, match, tmp_path):
    cfg = compose(overrides, tmp_path)
    with pytest.raises(ValueError, match=match):
        check_speed_config(cfg)


def _one_per_paper() -> list[str]:
    import yaml

    first: dict[str, str] = {}
    for name in EXPERIMENTS:
        paper = (yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text()) or {}).get(
            "paper"
        )
        if paper:  # files that extend another experiment inherit its paper
            first.setdefault(paper, name)
    return sorted(first.values())


SWITCHES_ON = ["debug=fdr", "trainer.precision=bf16-mixed", "speed.channels_last=true",
               "speed.compile=true", "speed.compile_mode=max-autotune"]  # fmt: skip


def _compose_with_switches(names, tmp_path):
    import hydra

    for name in names:
        cfg = compose([f"experiment={name}", *SWITCHES_ON], tmp_path)
        check_speed_config(cfg)
        cb = hydra.utils.instantiate(cfg.speed)
        assert isinstance(cb, SpeedSwitches) and cb.compile and cb.channels_last is True
        assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.fast_dev_run


def test_switches_compose_with_one_experiment_per_paper(tmp_path):
    """bf16-mixed, channels_last and compile compose under debug=fdr, pass the combination check
    and build SpeedSwitches (the first experiment of each paper; all of them: the slow test)."""
    names = _one_per_paper()
    assert len(names) >= 6
    _compose_with_switches(names, tmp_path)


@pytest.mark.slow
def test_switches_compose_with_every_experiment(tmp_path):
    """The same for every experiment config (about 0.4 s each on 2 cores). Running all of them
    compiled is too slow on CPU: lm_resnet_mnist runs with every switch on below."""
    _compose_with_switches(EXPERIMENTS, tmp_path)


def _speed_on(backend="aot_eager"):
    return ["trainer.precision=bf16-mixed", "speed.channels_last=true", "speed.compile=true",
            f"speed.compile_backend={backend}"]  # fmt: skip


def test_switches_run_and_compiled_checkpoint_round_trip(run_experiment):
    """lm_resnet_mnist trains with bf16-mixed + channels_last + compile; the checkpoint's keys
    carry no ``_orig_mod.`` prefix and load into an uncompiled model, which then computes the
    same logits as the compiled one."""
    import hydra

    _, out = run_experiment(
        [
            "experiment=lm_resnet_mnist",
            "test=false",
            "model.net.depth=8",
            *TINY[:-2],
            "++trainer.limit_val_batches=0",
            *_speed_on(),
        ]
    )
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    keys = list(ckpt["state_dict"])
    assert keys and not any("_orig_mod" in k for k in keys)
    cfg = compose(["experiment=lm_resnet_mnist", "model.net.depth=8"], out)
    plain = hydra.utils.instantiate(cfg.model)
    plain.load_state_dict(ckpt["state_dict"])  # strict
    compiled = hydra.utils.instantiate(cfg.model)
    compiled.load_state_dict(ckpt["state_dict"])
    cb = SpeedSwitches(compile=True, compile_backend="eager", channels_last=True)
    cb.active_channels_last = True
    compiled.to(memory_format=torch.channels_last)
    cb._prepare(compiled, final=True)
    assert list(compiled.state_dict()) == keys
    x = torch.randn(4, 1, 28, 28)
    plain.eval(), compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), plain(x), rtol=1e-4, atol=1e-4)


def test_switches_reach_networks_built_in_setup(tmp_path):
    """A network the LightningModule builds in its own ``setup`` (as the translation module
    does, from the data's vocabulary) is compiled at fit start and gets channels_last inputs."""
    import lightning.pytorch as pl

    seen = []

    class Late(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = None

        def setup(self, stage):
            self.net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(1))
            self.net[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].stride()))

        def training_step(self, batch, i):
            return self.net(batch[0]).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = DataLoader(BatchedTensorDataset(torch.randn(4, 3, 5, 5)), batch_size=2,
                      collate_fn=collate_batch)  # fmt: skip
    cb = SpeedSwitches(compile=True, compile_backend="eager", channels_last=True)
    module = Late()
    pl.Trainer(fast_dev_run=1, accelerator="cpu", callbacks=[cb], logger=False,
               enable_progress_bar=False, enable_model_summary=False,
               default_root_dir=tmp_path).fit(module, data)  # fmt: skip
    assert module.net._compiled_call_impl is not None
    assert (
        seen and seen[0] == torch.empty(2, 3, 5, 5).to(memory_format=torch.channels_last).stride()
    )


def test_targets_and_errors():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.restorer, self.policy = nn.Linear(2, 2), nn.Linear(2, 1)

    assert list(SpeedSwitches().targets(Two())) == ["restorer", "policy"]
    assert list(SpeedSwitches(modules=[]).targets(Two())) == ["<LightningModule>"]
    with pytest.raises(ValueError, match="speed.modules"):
        SpeedSwitches(modules=["net"]).targets(Two())


def test_deterministic_mode_is_bit_identical(run_experiment):
    """Two runs with trainer.deterministic=true and the same seed: same weights and metrics."""
    import json

    runs = []
    for i in range(2):
        _, out = run_experiment(["experiment=lm_resnet_mnist", "trainer.deterministic=true",
                                 "model.net.depth=8", "test=false", *TINY[:-2]],
                                name=f"det{i}")  # fmt: skip
        ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
        metrics = json.loads((out / "results.json").read_text())["metrics"]
        runs.append((ckpt["state_dict"], {k: v for k, v in metrics.items() if "time" not in k}))
    (a, ma), (b, mb) = runs
    assert all(torch.equal(a[k], b[k]) for k in a) and ma == mb
    assert torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)


# ---- no device synchronisation per step ------------------------------------------------------

_SYNCS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__")


def _from_torch_optim() -> bool:
    """Called by torch.optim (Adam's step counters are CPU tensors even on a GPU: no sync)."""
    import sys

    f = sys._getframe(2)
    return f is not None and "torch/optim/" in f.f_code.co_filename.replace("\\", "/")


class _SyncProbe:
    """Counts Python-level host synchronisations (``Tensor.item``, ``bool(t)``, ``float(t)``,
    ``.tolist()``, ``.cpu()``, ``.numpy()``) from the first callback's ``on_train_batch_start``
    to the last callback's ``on_train_batch_end``, per step. (Syncs inside C++ ops, e.g.
    boolean-mask indexing, are invisible on CPU; on a GPU ``torch.cuda.set_sync_debug_mode``
    sees those.)"""

    def __init__(self, monkeypatch):
        import lightning.pytorch as pl

        self.on, self.counts = False, []
        probe = self
        for name in _SYNCS:
            orig = getattr(torch.Tensor, name)

            def counted(t, *a, _orig=orig, _name=name, **k):
                if probe.on and not _from_torch_optim():
                    probe.counts[-1].append(_name)
                return _orig(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, counted)

        class Start(pl.Callback):
            def on_train_batch_start(self, *args):
                probe.counts.append([])
                probe.on = True

        class End(pl.Callback):
            def on_train_batch_end(self, *args):
                probe.on = False

        self.start, self.end = Start(), End()


def _fit_with_probe(cfg, probe):
    from odelab.train import instantiate_all

    objs = instantiate_all(cfg)
    trainer = objs["trainer"]
    trainer.callbacks.insert(0, probe.start)
    trainer.callbacks.append(probe.end)
    trainer.fit(objs["model"], datamodule=objs["datamodule"])
    return probe.counts


def _probe_cfg(tmp_path, experiment, extra=()):
    return compose([f"experiment={experiment}", "trainer.max_epochs=1", "logger=none",
                    "++trainer.limit_train_batches=3", "++trainer.limit_val_batches=0",
                    "++trainer.enable_progress_bar=false", *extra], tmp_path)  # fmt: skip


def test_no_host_sync_in_training_steps(tmp_path, monkeypatch):
    """The shared classifier, the shared callbacks and the data path: zero Python-level syncs in
    training steps (Lightning's own logging every log_every_n_steps excluded by the setting)."""
    probe = _SyncProbe(monkeypatch)
    counts = _fit_with_probe(_probe_cfg(tmp_path, "lm_resnet_mnist", ["model.net.depth=8"]), probe)
    assert len(counts) == 3 and counts[1:] == [[], []], counts


def test_no_host_sync_in_translation_steps(tmp_path, monkeypatch):
    """The shared translation module (Macaron net of macaron_multi30k, label-smoothed loss, Adam
    + inverse_sqrt, step loss to the progress bar, off here) on synthetic token batches: no syncs
    per step."""
    import hydra
    import lightning.pytorch as pl

    cfg = compose(["experiment=macaron_multi30k", "+model.vocab_size=40"], tmp_path)
    module = hydra.utils.instantiate(cfg.model)
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, 40, (12, 7), generator=g)
    prev, tgt = (
        torch.randint(4, 40, (12, 6), generator=g),
        torch.randint(4, 40, (12, 6), generator=g),
    )
    tgt[:, -1] = module.net.padding_idx  # padded targets take the masked path
    data = DataLoader(BatchedTensorDataset(src, prev, tgt, torch.arange(12)), batch_size=4,
                      collate_fn=collate_batch)  # fmt: skip
    probe = _SyncProbe(monkeypatch)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         callbacks=[probe.start, probe.end],
                         default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, data)
    assert len(probe.counts) == 3 and probe.counts[1:] == [[], []], probe.counts


def test_sync_probe_catches_an_item_per_step(tmp_path, monkeypatch):
    """The probe is not vacuous: a module that calls ``loss.item()`` each step is caught."""
    from odelab.modules.classifier import ImageClassifier

    orig = ImageClassifier.training_step

    def leaky(self, batch, batch_idx):
        loss = orig(self, batch, batch_idx)
        self._last = loss.item()
        return loss

    monkeypatch.setattr(ImageClassifier, "training_step", leaky)
    probe = _SyncProbe(monkeypatch)
    counts = _fit_with_probe(_probe_cfg(tmp_path, "lm_resnet_mnist", ["model.net.depth=8"]), probe)
    assert len(counts) == 3 and all("item" in c for c in counts), counts


# ---- benchmarks' testable parts --------------------------------------------------------------


def _bench(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_flop_count_matches_hand_count():
    """gpu_speed.count_flops (forward + backward, multiply-add = 2 FLOPs) on a tiny conv net:
    conv 3->4, 3x3, pad 1 on 8x8 (MACs 8*8*4*3*9 = 6912), linear 256 -> 10 (2560 MACs); the
    backward of a layer costs 2x its forward except the first layer's input gradient."""
    gs = _bench("gpu_speed")
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(),
                        nn.Linear(256, 10, bias=False))  # fmt: skip
    b = 5
    fwd = 2 * b * (6912 + 2560)
    bwd = 2 * b * (6912 + 2 * 2560)  # conv: weight grad only (input needs no grad)
    assert gs.count_flops(net, torch.randn(b, 3, 8, 8), backward=False) == fwd
    assert gs.count_flops(net, torch.randn(b, 3, 8, 8)) == fwd + bwd
    assert gs.fraction_of_peak(flops=1e12, seconds=2.0, peak_tflops=1.0) == pytest.approx(0.5)
