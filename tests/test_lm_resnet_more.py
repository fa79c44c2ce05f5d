"""LM-ResNeXt on CIFAR-100, LM-ResNet-50/101 on ImageNet, the ImageNet folder datamodule and
the learned-k analysis (issue 11)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from odelab.data import DatasetError, ImageNetDataModule
from odelab.data.imagenet import (
    ImageFileDataset,
    SeededIndexSampler,
    center_box,
    random_resized_box,
)
from odelab.papers.lm_resnet import LMResNeXt
from odelab.papers.lm_resnet.analysis import k_summary, plot_k

COVERED_EXPERIMENTS = [
    "lm_resnext29_8x64d_cifar100",
    "lm_resnext29_16x64d_cifar100",
    "resnext29_8x64d_cifar100",
    "lm_resnet50_imagenet",
    "lm_resnet101_imagenet",
    "resnet50_imagenet",
    "resnet101_imagenet",
]
RESNEXT = COVERED_EXPERIMENTS[:3]
IMAGENET = COVERED_EXPERIMENTS[3:]
# Narrow variants for the default suite (the full widths run under -m slow): C x d = 2 x 8,
# ImageNet bottleneck planes 8/16/32/64.
TINY_RESNEXT = ["model.net.cardinality=2", "model.net.base_width=8", "model.net.widths=[8,16,32]"]
TINY_IMAGENET = ["model.net.widths=[8,16,32,64]"]


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def tiny_resnext(**kw) -> LMResNeXt:
    base = dict(depth=20, cardinality=2, base_width=16, widths=(8, 16, 32), num_classes=5)
    return LMResNeXt(**{**base, **kw})


# ---- architecture ---------------------------------------------------------------------------


@pytest.mark.parametrize(("depth", "count"), [(50, 25_557_032), (101, 44_549_160)])
def test_imagenet_resnet_parameter_counts(depth, count):
    """torchvision's ResNet-50/101 counts (its layout: v1.5 bottlenecks, conv-BN projections),
    here reached by construction; LM adds one k per block that is not a stage's first."""
    plain = LMResNeXt(depth=depth, stem="imagenet", cardinality=1, num_classes=1000, lm=False)
    assert n_params(plain) == count
    lm = LMResNeXt(depth=depth, stem="imagenet", cardinality=1, num_classes=1000)
    assert n_params(lm) - count == len(lm.ks) == sum(plain.layers) - 4


def test_resnext29_parameter_counts():
    """Xie et al. (Table 7) list ResNeXt-29 8x64d at 34.4M and 16x64d at 68.1M parameters
    (recalled, R); ours (10-class head) are 34,426,698 and 68,155,210, i.e. those values
    truncated to 0.1M."""
    counts = {}
    for c in (8, 16):
        m = LMResNeXt(depth=29, cardinality=c, num_classes=10, lm=False)
        counts[c] = n_params(m)
        conv2 = m.branches[0][3]
        assert conv2.groups == c and conv2.in_channels == c * 64  # D = C * d in stage 1
        del m
    assert counts == {8: 34_426_698, 16: 68_155_210}
    assert [math.floor(v / 1e5) / 10 for v in counts.values()] == [34.4, 68.1]


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_lm_resnext_k_zero_is_the_plain_resnext(granularity):
    torch.manual_seed(0)
    lm, plain = tiny_resnext(k_granularity=granularity), tiny_resnext(lm=False)
    missing, unexpected = plain.load_state_dict(lm.state_dict(), strict=False)
    assert not missing and all(k.startswith("ks.") for k in unexpected)
    widths = [b.out_planes for b, kind in zip(lm.branches, lm.kinds) if kind == "lm"]
    extra = len(widths) if granularity == "layer" else sum(widths)
    assert n_params(lm) - n_params(plain) == extra
    with torch.no_grad():
        for k in lm.ks.values():
            k.zero_()
    x = torch.randn(3, 3, 8, 8)
    for mode in ("train", "eval"):
        getattr(lm, mode)()
        getattr(plain, mode)()
        torch.testing.assert_close(lm(x), plain(x), rtol=0, atol=0)


def test_post_activation_lm_step_matches_the_recurrence_in_float64():
    """u_{n+1} = relu((1 - k_n) u_n + k_n u_{n-1} + f_n(u_n)); stage-first blocks take
    relu(f_n(u_n) + P(u_n)) and hand P(u_n) on as u_{n-1}."""
    torch.manual_seed(1)
    net = tiny_resnext(k_granularity="channel").double().eval()
    with torch.no_grad():
        for k in net.ks.values():
            k.uniform_(-0.8, 0.8)
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
        u = net.stem(x)
        prev = u
        for i, kind in enumerate(net.kinds):
            f = net.branches[i](u)
            if kind == "lm":
                k = net.ks[str(i)]
                new = torch.relu((1 - k) * u + k * prev + f)
                prev = u
            else:
                proj = net.shortcut0 if kind == "first" else net.projections[str(i)]
                prev = proj(u)
                new = torch.relu(f + prev)
            u = new
        want = net.fc(net.head(u))
        torch.testing.assert_close(net(x), want, rtol=1e-12, atol=1e-12)
    assert net.kinds.count("lm") == 3 and net.kinds[0] == "first"


def test_stochastic_depth_and_impossible_configs():
    net = tiny_resnext(stochastic_depth=True, p_L=0.5)
    assert net.death_rates[0] == 0.0 and net.death_rates[-1] == pytest.approx(0.5)
    net.train()
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    with pytest.raises(ValueError, match="9n\\+2"):
        LMResNeXt(depth=28)
    with pytest.raises(ValueError, match="50, 101, 152"):
        LMResNeXt(depth=34, stem="imagenet")
    with pytest.raises(ValueError, match="stage widths"):
        LMResNeXt(depth=29, widths=(64, 128))
    with pytest.raises(ValueError, match="each group needs"):
        LMResNeXt(depth=29, base_width=4, widths=(8, 16, 32))


# ---- ImageNet datamodule --------------------------------------------------------------------


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    """Two tiny ILSVRC-2012 layouts: val as class folders, and flat val + LOC_val_solution.csv."""
    from canonical_data import write_imagenet

    roots = {}
    for layout in ("folders", "flat"):
        roots[layout] = tmp_path_factory.mktemp(f"imagenet_{layout}")
        write_imagenet(roots[layout], val_layout=layout)
    return roots


def dm_for(root: Path, **kw) -> ImageNetDataModule:
    base = dict(data_dir=str(root), batch_size=4, num_workers=0, image_size=24, resize_size=28)
    base["pin_memory"] = False
    return ImageNetDataModule(**{**base, **kw})


@pytest.mark.parametrize("layout", ["folders", "flat"])
def test_imagenet_layouts_and_batches(imagenet_root, layout):
    dm = dm_for(imagenet_root[layout])
    dm.setup("fit")
    assert dm.num_classes == 3 and dm.classes == ["n01440764", "n01443537", "n01484850"]
    assert len(dm.data_train) == 9 and len(dm.data_val) == 6
    # both layouts give image k of class c the same label
    val = sorted((Path(p).name, y) for p, y in dm.data_val.samples)
    assert [y for _, y in val] == [0, 0, 1, 1, 2, 2]
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 24, 24) and y.dtype == torch.int64
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape == (4, 3, 24, 24)
    out, _ = dm.on_after_batch_transfer((xv, y), 0)  # no trainer: normalise only
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1)
    std = torch.tensor(dm.std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (xv.float() / 255 - mean) / std)


def test_eval_crop_equals_resize_then_centre_crop(tmp_path):
    """The one-call crop (resize with a box) against the two-step torchvision recipe."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
    path = tmp_path / "a.png"  # lossless: the check is about geometry, not JPEG
    img.save(path)
    ds = ImageFileDataset([(str(path), 0)], size=32, train=False, resize=40)
    got = ds[0][0].permute(1, 2, 0).numpy().astype(float)
    two_step = img.resize((60, 40), Image.Resampling.BILINEAR)  # shorter side 60 -> 40
    left, top = (60 - 32) // 2, (40 - 32) // 2
    want = np.asarray(two_step.crop((left, top, left + 32, top + 32)), dtype=float)
    # same geometry, different resampling grids: compare low-pass content
    assert abs(got.mean() - want.mean()) < 2.0
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.5
    assert center_box(90, 60, 40, 32) == pytest.approx((21.0, 6.0, 69.0, 54.0))


def test_random_resized_crop_draws():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = random_resized_box(80, 50, rng, (0.08, 1.0), (3 / 4, 4 / 3))
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 80 and 0 <= top < bottom <= 50
        assert 0.08 * 4000 * 0.9 <= w * h <= 4000
    # the fallback: a 10:1 strip gets the central crop with ratio clamped to 4/3
    assert random_resized_box(100, 10, rng, (0.99, 1.0), (1.0, 4 / 3)) == (43, 0, 56, 10)


def test_train_crops_are_a_function_of_seed_epoch_index(imagenet_root):
    dm = dm_for(imagenet_root["folders"])
    dm.setup("fit")
    s = SeededIndexSampler(len(dm.data_train), seed=3)
    first = list(s)
    assert sorted(i for i, _ in first) == list(range(9))
    again = list(SeededIndexSampler(len(dm.data_train), seed=3))
    assert first == again
    s.set_epoch(1)
    assert [seed for _, seed in s] != [seed for _, seed in first]
    i, seed = first[0]
    torch.testing.assert_close(dm.data_train[(i, seed)][0], dm.data_train[(i, seed)][0])


def test_corrupt_image_is_a_clear_error_from_a_worker(tmp_path):
    from canonical_data import write_imagenet

    base = write_imagenet(tmp_path, n_train=1, n_val=1)
    bad = base / "val" / "n01443537" / "ILSVRC2012_val_00000002.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated, not a JPEG")
    dm = dm_for(tmp_path, num_workers=1, batch_size=3)
    dm.setup("validate")
    with pytest.raises(DatasetError, match="ILSVRC2012_val_00000002.JPEG"):
        next(iter(dm.val_dataloader()))


def test_missing_folders_and_labels_are_clear_errors(tmp_path, imagenet_root):
    with pytest.raises(DatasetError, match="training folder .* is missing"):
        dm_for(tmp_path).setup("fit")
    from canonical_data import write_imagenet

    base = write_imagenet(tmp_path / "x", val_layout="flat")
    (base / "LOC_val_solution.csv").unlink()
    with pytest.raises(DatasetError, match="no label file"):
        dm_for(tmp_path / "x").setup("fit")
    with pytest.raises(DatasetError, match="val_labels file .* is missing"):
        dm_for(tmp_path / "x", val_labels="nope.txt").setup("fit")
    # an explicit '<file> <wnid>' label file works
    lines = [f"ILSVRC2012_val_{k:08d}.JPEG n01440764" for k in range(1, 7)]
    (base / "labels.txt").write_text("\n".join(lines))
    dm = dm_for(tmp_path / "x", val_labels="labels.txt")
    dm.setup("validate")
    assert [y for _, y in dm.data_val.samples] == [0] * 6


# ---- runs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar100_data(tmp_path_factory):
    from canonical_data import write_cifar100

    root = tmp_path_factory.mktemp("c100")
    write_cifar100(root, n_train=8, n_test=4)
    return root


def fdr(run_experiment, experiment: str, data: Path, extra: list[str]) -> dict:
    overrides = [f"experiment={experiment}", "debug=fdr", "logger=csv", f"paths.data_dir={data}"]
    _, out = run_experiment(overrides + extra)
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "finished" and res["experiment"] == experiment
    assert 0.0 <= res["metrics"]["test/acc"] <= 1.0
    lm = res["config"]["model"]["net"]["lm"]
    assert bool(res["k"]) == lm and (out / "k_per_block.png").exists() == lm
    return res


def imagenet_overrides(root: Path) -> list[str]:
    return [
        "data.batch_size=4",  # batch 2 at 1x1 final resolution makes BN degenerate (NaN)
        "data.image_size=64",
        "data.resize_size=72",
        "model.net.num_classes=3",
    ]


@pytest.mark.parametrize("experiment", RESNEXT)
def test_resnext_fast_dev_run_narrow(experiment, run_experiment, cifar100_data):
    res = fdr(run_experiment, experiment, cifar100_data, ["data.batch_size=2", *TINY_RESNEXT])
    assert res["config"]["model"]["optimizer"]["weight_decay"] == 5.0e-4


@pytest.mark.parametrize("experiment", IMAGENET)
def test_imagenet_fast_dev_run_narrow(experiment, run_experiment, imagenet_root):
    root = imagenet_root["flat" if "101" in experiment else "folders"]
    fdr(run_experiment, experiment, root, imagenet_overrides(root) + TINY_IMAGENET)


@pytest.mark.parametrize(
    ("experiment", "data"),
    [("lm_resnext29_8x64d_cifar100", "cifar100"), ("lm_resnet50_imagenet", "imagenet")],
)
def test_per_channel_k_and_stochastic_depth_switches(
    experiment, data, run_experiment, cifar100_data, imagenet_root
):
    root = cifar100_data if data == "cifar100" else imagenet_root["folders"]
    extra = TINY_RESNEXT + ["data.batch_size=2"] if data == "cifar100" else []
    if data == "imagenet":
        extra = imagenet_overrides(root) + TINY_IMAGENET
    switches = [
        "model.net.k_granularity=channel",
        "model.net.stochastic_depth=true",
        "model.net.p_L=0.5",
    ]
    res = fdr(run_experiment, experiment, root, extra + switches)
    assert all(len(v) > 1 for v in res["k"].values())  # one k per channel


@pytest.mark.slow
@pytest.mark.parametrize("experiment", COVERED_EXPERIMENTS)
def test_full_width_fast_dev_run(experiment, run_experiment, cifar100_data, imagenet_root):
    """The paper-size networks (34-68M and 25-45M parameters), one batch of 2 on CPU."""
    if experiment in RESNEXT:
        fdr(run_experiment, experiment, cifar100_data, ["data.batch_size=2"])
    else:
        root = imagenet_root["folders"]
        fdr(run_experiment, experiment, root, imagenet_overrides(root))


# ---- the k analysis -------------------------------------------------------------------------


def test_k_summary_and_plot(tmp_path):
    blocks, st = k_summary({"7": [0.5], "1": [-0.2, 0.1, 0.4]})
    assert blocks == [1, 7]
    np.testing.assert_allclose(st, [[0.1, -0.2, 0.4], [0.5, 0.5, 0.5]])
    path = plot_k({"a": {"1": [0.1], "2": [-0.3]}, "b": {"1": [0.0, 0.2]}}, tmp_path / "k.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100


def test_kept_records_rebuild_the_compression_table(tmp_path):
    """experiments/lm_resnet/compression.md is what the report's compression view makes of the
    kept records."""
    from conftest import ROOT
    from odelab.report.views import render_view

    folder = ROOT / "experiments" / "lm_resnet"
    render_view("lm_resnet", "compression", tmp_path)
    assert (tmp_path / "compression.md").read_text() == (folder / "compression.md").read_text()
    for png in ("k_per_block.png", "compression.png"):
        with Image.open(tmp_path / png) as img:
            assert img.format == "PNG"
    readme = (folder / "README.md").read_text()
    for line in (tmp_path / "compression.md").read_text().splitlines():
        if line.startswith("| train"):
            assert line.split("|")[-2].strip() in readme  # every mean ± std is quoted


def test_fit_end_saves_the_k_plot_and_logs_it_to_wandb(tmp_path):
    """on_fit_end writes <run dir>/k_per_block.png and hands it to a W&B logger's log_image."""
    from types import SimpleNamespace

    from odelab.papers.lm_resnet import LMResNetClassifier

    class WandbLogger:  # stands in for lightning's (matched by class name, as in the module)
        def __init__(self):
            self.images = []

        def log_image(self, key, images):
            self.images.append((key, images))

    wb = WandbLogger()
    module = LMResNetClassifier(net=tiny_resnext(), optimizer=None, scheduler=None)
    fake = SimpleNamespace(
        default_root_dir=str(tmp_path), is_global_zero=True, loggers=[wb], current_epoch=3
    )
    module.trainer = fake
    module.on_fit_end()
    assert (tmp_path / "k_per_block.png").exists()
    assert wb.images == [("k/per_block", [str(tmp_path / "k_per_block.png")])]
