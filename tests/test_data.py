"""The data layer: canonical formats, real local copies, checksums and errors, download,
batch transforms, the epoch-seeded sampler, splits, Hydra configs and a real Trainer run."""

from __future__ import annotations

import dataclasses
import gzip
import io
import logging
import os
import pickle
import tarfile
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from canonical_data import (
    idx_bytes,
    write_cifar10,
    write_cifar100,
    write_cifar_batch,
    write_idx_gz,
    write_mnist,
)
from conftest import CONF, SHARED_DATA
from odelab.data import (
    CIFAR10,
    MNIST,
    CIFAR10DataModule,
    CIFAR100DataModule,
    DatasetError,
    EpochSeededRandomSampler,
    MNIST5kDataModule,
    MNISTDataModule,
    crop_flip,
    download_url,
    extract_archive,
    md5sum,
    normalize,
    random_crop_flip,
    read_idx,
)
from odelab.data.base import mix_seed, split_indices

CIFAR_DIR = "cifar10/cifar-10-batches-py"


def shared(sub: str) -> Path:
    """A folder of the local real-data copies, or skip the test."""
    path = SHARED_DATA / sub
    if not path.is_dir():
        pytest.skip(f"no local copy at {path} (set ODELAB_SHARED_DATA to the shared data folder)")
    return path


def fit_and_test(dm):
    dm.setup("fit")
    dm.setup("test")
    return dm


# ---- canonical formats: write, parse back ---------------------------------------------------


def test_cifar10_pickles_look_like_the_python2_originals(tmp_path):
    folder = write_cifar10(tmp_path, n_per_batch=10)
    raw = (folder / "data_batch_1").read_bytes()
    assert raw[:2] == b"\x80\x02" and b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    as_bytes = pickle.loads(raw, encoding="bytes")
    as_str = pickle.loads(raw, encoding="latin1")  # how torchvision reads them
    assert set(as_bytes) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert set(as_str) == {"batch_label", "labels", "data", "filenames"}
    assert as_bytes[b"data"].dtype == np.uint8 and as_bytes[b"data"].shape == (10, 3072)
    np.testing.assert_array_equal(as_str["data"], as_bytes[b"data"])
    assert sorted(as_bytes[b"labels"]) == list(range(10))
    assert sorted(os.listdir(folder)) == sorted(CIFAR10.files)


def test_cifar10_round_trip_and_channel_order(tmp_path):
    folder = write_cifar10(tmp_path, n_per_batch=10, batches=(1, 2))
    i, c, h, w = np.meshgrid(*map(np.arange, (6, 3, 32, 32)), indexing="ij")
    pattern = ((i + 3 * c + 5 * h + 7 * w) % 256).astype(np.uint8)  # value at [i, c, h, w]
    labels = [9, 0, 3, 3, 1, 2]
    write_cifar_batch(folder / "data_batch_1", pattern.reshape(6, 3072), labels, "b1")
    dm = CIFAR10DataModule(str(tmp_path), train_files=["data_batch_1"], verify="off")
    fit_and_test(dm)
    x, y = dm.data_train.tensors
    assert x.dtype == torch.uint8 and x.shape == (6, 3, 32, 32) and y.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(pattern)) and y.tolist() == labels
    with open(folder / "test_batch", "rb") as f:
        test = pickle.load(f, encoding="bytes")
    xt, yt = dm.data_test.tensors
    assert torch.equal(xt.reshape(10, 3072), torch.from_numpy(test[b"data"]))
    assert yt.tolist() == test[b"labels"] and dm.data_val is dm.data_test  # val_size=0
    assert dm.classes[0] == "airplane" and len(dm.classes) == 10
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 3, 32)
    assert dm.dataset_name == "cifar10"


def test_cifar100_round_trip(tmp_path):
    folder = write_cifar100(tmp_path, n_train=120, n_test=20)
    dm = fit_and_test(CIFAR100DataModule(str(tmp_path), verify="off"))
    with open(folder / "train", "rb") as f:
        train = pickle.load(f, encoding="bytes")
    x, y = dm.data_train.tensors
    assert x.shape == (120, 3, 32, 32) and len(dm.data_test) == 20
    assert y.tolist() == train[b"fine_labels"] and set(y.tolist()) == set(range(100))
    assert torch.equal(x[:, 2].reshape(120, -1), torch.from_numpy(train[b"data"][:, 2048:]))
    assert dm.classes[:2] == ["apple", "aquarium_fish"] and dm.num_classes == 100


def test_mnist_round_trip_and_idx_header(tmp_path):
    folder = write_mnist(tmp_path, n_train=30, n_test=20)
    i, h, w = np.meshgrid(np.arange(30), np.arange(28), np.arange(28), indexing="ij")
    pattern = ((i + 3 * h + 5 * w) % 256).astype(np.uint8)
    write_idx_gz(folder / "train-images-idx3-ubyte.gz", pattern)
    raw = gzip.decompress((folder / "train-images-idx3-ubyte.gz").read_bytes())
    assert raw[:16] == bytes.fromhex("00000803 0000001e 0000001c 0000001c".replace(" ", ""))
    dm = fit_and_test(MNISTDataModule(str(tmp_path), verify="off"))
    x, y = dm.data_train.tensors
    assert x.shape == (30, 1, 28, 28) and torch.equal(x[:, 0], torch.from_numpy(pattern))
    assert sorted(set(y.tolist())) == list(range(10)) and len(dm.data_test) == 20
    assert dm.augment is False and dm.flip is False and dm.in_channels == 1


def test_read_idx_validates_header_and_size():
    labels = np.arange(10, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(idx_bytes(labels)), labels)
    with pytest.raises(ValueError, match="magic"):
        read_idx(b"\x00\x00\x0b\x01" + idx_bytes(labels)[4:])  # int16 type code
    with pytest.raises(ValueError, match="payload"):
        read_idx(idx_bytes(labels)[:-1])


# ---- the real local copies --------------------------------------------------------------------


def test_shared_mnist_matches_official_files():
    folder = shared("mnist/raw")
    for name, md5 in MNIST.files.items():
        assert md5sum(folder / name) == md5, name
    dm = MNISTDataModule(str(folder.parents[1]), verify="strict")
    dm.setup("test")
    x, y = dm.data_test.tensors
    assert x.shape == (10_000, 1, 28, 28)
    counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.bincount(y).tolist() == counts


def test_shared_cifar10_full_training_set(caplog):
    """The shared copy holds all 50,000 training images (five batches, real pixels, but not the
    official batch membership): the default train_files reads them all, warns that each md5
    differs from the official one, and the classes are balanced at 5,000 each."""
    root = shared(CIFAR_DIR).parents[1]
    dm = CIFAR10DataModule(str(root))
    assert dm.train_files == [f"data_batch_{i}" for i in range(1, 6)]
    with caplog.at_level(logging.WARNING, logger="odelab.data"):
        fit_and_test(dm)
    for name in ("data_batch_1", "data_batch_5", "test_batch"):
        assert f"differs from the official {CIFAR10.files[name]}" in caplog.text, name
    x, y = dm.data_train.tensors
    assert x.shape == (50_000, 3, 32, 32) and torch.bincount(y).tolist() == [5000] * 10
    assert len(torch.unique(x.reshape(50_000, -1)[:2000], dim=0)) == 2000  # no repeated batch
    xt, yt = dm.data_test.tensors
    assert xt.shape == (10_000, 3, 32, 32) and torch.bincount(yt).tolist() == [1000] * 10
    # a subset of the batches still reads what it names, and nothing else
    two = fit_and_test(CIFAR10DataModule(str(root), train_files=["data_batch_1", "data_batch_2"]))
    assert len(two.data_train) == 20_000
    assert torch.equal(two.data_train.tensors[0], x[:20_000])


# ---- missing, corrupt and mismatching files -------------------------------------------------


def test_partial_cifar10_copy_names_the_batches_to_train_on(tmp_path):
    """A copy with only some training batches: the error names the missing ones with their
    official md5s and gives the override that trains on what is there."""
    write_cifar10(tmp_path, n_per_batch=10, batches=(1, 2))
    with pytest.raises(DatasetError) as err:
        CIFAR10DataModule(str(tmp_path), verify="off").setup("fit")
    msg = str(err.value)
    for needle in (
        "data_batch_3",
        "data_batch_5",
        CIFAR10.files["data_batch_4"],
        "data.train_files=[data_batch_1,data_batch_2]",
        "data.download=true",
    ):
        assert needle in msg, needle


def assert_helpful(err: DatasetError, path: Path, md5: str) -> None:
    msg = str(err)
    for needle in (str(path), md5, "data.download=true", "ODELAB_DATA_DIR", "paths.data_dir"):
        assert needle in msg, (needle, msg)


def test_missing_file_names_path_md5_and_remedy(tmp_path):
    folder = write_cifar10(tmp_path, n_per_batch=10)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError) as err:
        CIFAR10DataModule(str(tmp_path)).setup("fit")
    assert_helpful(err.value, folder / "data_batch_3", CIFAR10.files["data_batch_3"])
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in str(err.value)
    with pytest.raises(DatasetError) as err:
        MNISTDataModule(str(tmp_path / "nowhere")).setup("test")
    path = tmp_path / "nowhere/mnist/raw/t10k-images-idx3-ubyte.gz"
    assert_helpful(err.value, path, MNIST.files[path.name])


@pytest.mark.parametrize("verify", ["off", "warn", "strict"])
def test_truncated_cifar_batch_always_fails(tmp_path, verify):
    folder = write_cifar10(tmp_path, n_per_batch=10)
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:20_000])
    dm = CIFAR10DataModule(str(tmp_path), verify=verify)
    expected = "md5" if verify == "strict" else "truncated or corrupt"
    with pytest.raises(DatasetError, match=expected):
        dm.setup("test")


def test_corrupt_files_name_path_and_md5(tmp_path):
    folder = write_cifar10(tmp_path, n_per_batch=10)
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:20_000])
    with pytest.raises(DatasetError) as err:
        CIFAR10DataModule(str(tmp_path), verify="off").setup("test")
    assert_helpful(err.value, path, CIFAR10.files["test_batch"])
    write_cifar_batch(path, np.zeros((4, 1024), np.uint8), [0, 1, 2, 3], "wrong shape")
    with pytest.raises(DatasetError, match="3072"):
        CIFAR10DataModule(str(tmp_path), verify="off").setup("test")
    mnist = write_mnist(tmp_path) / "t10k-labels-idx1-ubyte.gz"
    mnist.write_bytes(mnist.read_bytes()[:-9])
    with pytest.raises(DatasetError) as err:
        MNISTDataModule(str(tmp_path), verify="off").setup("test")
    assert_helpful(err.value, mnist, MNIST.files[mnist.name])
    write_idx_gz(mnist, np.zeros(19, np.uint8))  # 20 test images but 19 labels
    with pytest.raises(DatasetError, match="20 images but 19 labels"):
        MNISTDataModule(str(tmp_path), verify="off").setup("test")


def test_md5_mismatch_strict_errors_warn_warns_off_is_silent(tmp_path, caplog):
    write_mnist(tmp_path)
    path = tmp_path / "mnist/raw/t10k-images-idx3-ubyte.gz"
    with pytest.raises(DatasetError) as err:
        MNISTDataModule(str(tmp_path), verify="strict").setup("test")
    assert_helpful(err.value, path, MNIST.files[path.name])
    with caplog.at_level(logging.WARNING, logger="odelab.data"):
        MNISTDataModule(str(tmp_path), verify="warn").setup("test")
    assert f"{path}: md5" in caplog.text and MNIST.files[path.name] in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="odelab.data"):
        MNISTDataModule(str(tmp_path), verify="off").setup("test")
    assert caplog.text == ""


# ---- download and extraction (offline, file:// URLs) -----------------------------------------


def test_download_url_verifies_and_leaves_nothing_behind(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"odelab" * 1000)
    dest = tmp_path / "out" / "copy.bin"
    assert download_url(src.as_uri(), dest, md5sum(src)) == dest
    assert dest.read_bytes() == src.read_bytes()
    bad = tmp_path / "bad" / "copy.bin"
    with pytest.raises(DatasetError, match="discarded"):
        download_url(src.as_uri(), bad, "0" * 32)
    assert list(bad.parent.iterdir()) == []
    with pytest.raises(OSError):
        download_url((tmp_path / "absent").as_uri(), bad)
    assert list(bad.parent.iterdir()) == []


def make_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_extract_archive_tar_gz_gz_and_path_traversal(tmp_path):
    arc = make_tar(tmp_path / "a.tar.gz", {"top/x.txt": b"x", "top/sub/y.txt": b"y"})
    extract_archive(arc, tmp_path / "out")
    assert (tmp_path / "out/top/sub/y.txt").read_bytes() == b"y"
    gz = tmp_path / "z.bin.gz"
    gz.write_bytes(gzip.compress(b"zzz"))
    extract_archive(gz, tmp_path / "gz")
    assert (tmp_path / "gz/z.bin").read_bytes() == b"zzz"
    evil = make_tar(tmp_path / "evil.tar.gz", {"ok.txt": b"1", "../evil.txt": b"2"})
    with pytest.raises(DatasetError, match="unsafe member"):
        extract_archive(evil, tmp_path / "safe")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "safe/ok.txt").exists()
    link = tmp_path / "link.tar.gz"
    with tarfile.open(link, "w:gz") as tar:
        info = tarfile.TarInfo("l")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DatasetError, match="unsafe member"):
        extract_archive(link, tmp_path / "safe")


def test_cifar10_prepare_data_downloads_and_extracts(tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    write_cifar10(staging, n_per_batch=10)
    server = tmp_path / "server"
    server.mkdir()
    archive = server / CIFAR10.archive
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / CIFAR_DIR, arcname="cifar-10-batches-py")
    source = dataclasses.replace(
        CIFAR10, mirrors=(server.as_uri() + "/",), archive_md5=md5sum(archive)
    )
    monkeypatch.setattr(CIFAR10DataModule, "source", source)
    data = tmp_path / "data"
    with pytest.raises(DatasetError, match="data.download=true"):
        CIFAR10DataModule(str(data)).setup("fit")
    dm = CIFAR10DataModule(str(data), download=True, verify="off")
    dm.prepare_data()
    fit_and_test(dm)
    assert len(dm.data_train) == 50 and len(dm.data_test) == 10
    assert sorted(p.name for p in (data / "cifar10").iterdir()) == [
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]
    monkeypatch.setattr(CIFAR10DataModule, "source", dataclasses.replace(source, archive_md5="0"))
    (data / CIFAR_DIR / "test_batch").unlink()
    (data / "cifar10" / CIFAR10.archive).unlink()
    with pytest.raises(DatasetError, match="could not download"):
        CIFAR10DataModule(str(data), download=True).prepare_data()
    assert sorted(p.name for p in (data / "cifar10").iterdir()) == ["cifar-10-batches-py"]


def test_mnist_prepare_data_falls_back_to_the_next_mirror(tmp_path, monkeypatch):
    folder = write_mnist(tmp_path / "server")
    files = {name: md5sum(folder / name) for name in MNIST.files}
    dead = (tmp_path / "dead").as_uri() + "/"
    source = dataclasses.replace(MNIST, files=files, mirrors=(dead, folder.as_uri() + "/"))
    monkeypatch.setattr(MNISTDataModule, "source", source)
    dm = MNISTDataModule(str(tmp_path / "data"), download=True, verify="strict")
    dm.prepare_data()
    fit_and_test(dm)
    assert len(dm.data_train) == 60 and len(dm.data_test) == 20


# ---- batch transforms -----------------------------------------------------------------------


def reference_crop(img: torch.Tensor, top: int, left: int, flipped: bool, pad: int, mode: str):
    """Per-sample reference: pad with F.pad, slice the crop, maybe mirror."""
    padded = F.pad(img[None].float(), (pad,) * 4, mode="constant" if mode == "zeros" else mode)
    out = padded[0, :, top : top + img.shape[1], left : left + img.shape[2]]
    return out.flip(-1) if flipped else out


@pytest.mark.parametrize("pad_mode", ["zeros", "reflect"])
def test_crop_flip_matches_per_sample_reference(pad_mode):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, 3, 7, 9), dtype=torch.uint8, generator=g)
    pad = 3
    top, left = (torch.randint(0, 2 * pad + 1, (12,), generator=g) for _ in range(2))
    flipped = torch.rand(12, generator=g) < 0.5
    out = crop_flip(x, top, left, flipped, pad, pad_mode)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for b in range(12):
        ref = reference_crop(x[b], int(top[b]), int(left[b]), bool(flipped[b]), pad, pad_mode)
        assert torch.equal(out[b].float(), ref), b
    centre = torch.full((12,), pad)
    assert torch.equal(crop_flip(x, centre, centre, flipped & False, pad, pad_mode), x)


@pytest.mark.parametrize("pad_mode", ["zeros", "reflect"])
def test_random_crops_are_genuine_shifts_with_uniform_offsets(pad_mode):
    pad, n = 2, 300
    x = torch.randint(0, 256, (n, 2, 6, 6), dtype=torch.uint8, generator=torch.Generator())
    out = random_crop_flip(x, pad, pad_mode, True, torch.Generator().manual_seed(1))
    seen = set()
    for b in range(n):
        found = [
            (t, l, f)
            for t in range(2 * pad + 1)
            for l in range(2 * pad + 1)  # noqa: E741
            for f in (False, True)
            if torch.equal(out[b].float(), reference_crop(x[b], t, l, f, pad, pad_mode))
        ]
        assert found, f"sample {b} is not a crop of its padded image"
        seen.add(found[0])
    assert {(t, l) for t, l, _ in seen} == {(t, l) for t in range(5) for l in range(5)}  # noqa: E741


def test_flip_rate_and_reproducibility():
    x = torch.randint(0, 256, (4000, 1, 2, 3), dtype=torch.uint8, generator=torch.Generator())
    out = random_crop_flip(x, 0, "zeros", True, torch.Generator().manual_seed(7))
    flipped = (out != x).flatten(1).any(1)
    assert torch.equal(out[flipped], x[flipped].flip(-1))
    assert 0.45 < flipped.float().mean() < 0.55
    again = random_crop_flip(x, 0, "zeros", True, torch.Generator().manual_seed(7))
    other = random_crop_flip(x, 0, "zeros", True, torch.Generator().manual_seed(8))
    assert torch.equal(out, again) and not torch.equal(out, other)
    assert torch.equal(random_crop_flip(x, 0, "zeros", False), x)


def test_normalize():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = normalize(x, [0.0, 0.2, 0.5], [1.0, 0.5, 0.25])
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.0, 0.0, 2.0]))


def test_on_after_batch_transfer_train_vs_eval(tmp_path):
    write_cifar10(tmp_path, n_per_batch=16, batches=(1,))
    dm = CIFAR10DataModule(str(tmp_path), train_files=["data_batch_1"], verify="off", seed=3)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    plain = normalize(x, dm.mean, dm.std)
    for trainer in (None, SimpleNamespace(training=False, global_step=5, global_rank=0)):
        dm.trainer = trainer
        xe, ye = dm.on_after_batch_transfer((x, y), 0)
        assert torch.equal(xe, plain) and ye is y
    dm.trainer = SimpleNamespace(training=True, global_step=5, global_rank=0)
    a, _ = dm.on_after_batch_transfer((x, y), 0)
    b, _ = dm.on_after_batch_transfer((x, y), 0)
    g = torch.Generator().manual_seed(mix_seed(3, 5, 0))
    expected = normalize(random_crop_flip(x, 4, "zeros", True, g), dm.mean, dm.std)
    assert torch.equal(a, b) and torch.equal(a, expected) and not torch.equal(a, plain)
    dm.trainer.global_step = 6
    assert not torch.equal(dm.on_after_batch_transfer((x, y), 0)[0], a)
    dm.augment = False
    assert torch.equal(dm.on_after_batch_transfer((x, y), 0)[0], plain)


# ---- sampler and splits ---------------------------------------------------------------------


def test_epoch_seeded_sampler():
    s = EpochSeededRandomSampler(100, seed=4)
    first = list(s)
    assert sorted(first) == list(range(100)) and len(s) == 100
    assert list(EpochSeededRandomSampler(100, seed=4)) == first == list(s)
    s.set_epoch(1)
    second = list(s)
    assert second != first and sorted(second) == list(range(100))
    resumed = EpochSeededRandomSampler(100, seed=4)
    resumed.set_epoch(1)
    assert list(resumed) == second
    assert list(EpochSeededRandomSampler(100, seed=5)) != first


def test_split_indices():
    train, val = split_indices(50, 10, None, seed=0)
    assert len(val) == 10 and len(train) == 40 and not set(train) & set(val)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(50))
    train1, val1 = split_indices(50, 10, None, seed=1)
    assert not np.array_equal(val, val1)
    sub0, _ = split_indices(50, 0, 20, seed=0)
    assert np.array_equal(sub0, split_indices(50, 0, 20, seed=9)[0]) and len(sub0) == 20
    with pytest.raises(ValueError, match="no training images"):
        split_indices(50, 50, None, seed=0)


def test_val_size_and_subsets(tmp_path):
    write_cifar10(tmp_path, n_per_batch=20)
    dm = fit_and_test(CIFAR10DataModule(str(tmp_path), val_size=10, verify="off"))
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (90, 10, 20)
    pool = torch.cat([dm.data_train.tensors[0], dm.data_val.tensors[0]])
    assert len({bytes(t.numpy()) for t in pool}) == 100
    kw = dict(train_subset=30, test_subset=7, verify="off")
    a = fit_and_test(CIFAR10DataModule(str(tmp_path), seed=0, **kw))
    b = fit_and_test(CIFAR10DataModule(str(tmp_path), seed=1, **kw))
    assert len(a.data_train) == 30 and len(a.data_test) == 7 and a.data_val is a.data_test
    assert torch.equal(a.data_train.tensors[0], b.data_train.tensors[0])
    assert torch.equal(a.data_test.tensors[0], b.data_test.tensors[0])
    loader = a.val_dataloader()
    assert loader.batch_size == 128 and len(list(loader)) == 1
    with pytest.raises(ValueError, match="pad_mode"):
        CIFAR10DataModule(str(tmp_path), pad_mode="edge")
    with pytest.raises(ValueError, match="train_files"):
        CIFAR10DataModule(str(tmp_path), train_files=["data_batch_6"])


# ---- embedded MNIST-5k ----------------------------------------------------------------------


def test_mnist5k_split_is_fixed_and_stratified():
    a = fit_and_test(MNIST5kDataModule(val_size=500, seed=0))
    b = fit_and_test(MNIST5kDataModule(val_size=500, seed=1))
    assert (len(a.data_train), len(a.data_val), len(a.data_test)) == (3500, 500, 1000)
    assert a.data_train.tensors[0].shape[1:] == (1, 28, 28)
    assert torch.bincount(a.data_test.tensors[1]).tolist() == [100] * 10
    pool = torch.cat([a.data_train.tensors[1], a.data_val.tensors[1]])
    assert torch.bincount(pool).tolist() == [400] * 10
    assert torch.equal(a.data_test.tensors[0], b.data_test.tensors[0])
    assert not torch.equal(a.data_val.tensors[0], b.data_val.tensors[0])
    x = a.data_test.tensors[0].float() / 255
    assert 0.1 < x.mean() < 0.16 and a.dataset_name == "mnist5k"


# ---- Hydra configs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, cls",
    [
        ("cifar10", CIFAR10DataModule),
        ("cifar100", CIFAR100DataModule),
        ("mnist", MNISTDataModule),
        ("mnist_embedded", MNIST5kDataModule),
    ],
)
def test_data_configs_instantiate(name, cls, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    node = OmegaConf.load(CONF / "data" / f"{name}.yaml")
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "seed": 3, "data": node})
    dm = instantiate(cfg.data)
    assert type(dm) is cls and dm.seed == 3 and dm.data_dir == str(tmp_path)
    assert len(dm.mean) == dm.in_channels and dm.val_size == 0
    if name == "mnist_embedded":
        assert dm.num_workers == 0 and not dm.augment


# ---- a real Trainer ---------------------------------------------------------------------------


class Recorder(pl.LightningModule):
    """A linear classifier that keeps every batch it is given."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 32 * 32, 10)
        self.batches = {"train": [], "val": []}

    def training_step(self, batch, batch_idx):
        self.batches["train"].append(batch[0].clone())
        return F.cross_entropy(self.fc(batch[0].flatten(1)), batch[1])

    def validation_step(self, batch, batch_idx):
        self.batches["val"].append(batch[0].clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_sees_seeded_order_and_augmentation(tmp_path):
    write_cifar10(tmp_path, n_per_batch=8, batches=(1,))
    dm = CIFAR10DataModule(
        str(tmp_path), train_files=["data_batch_1"], batch_size=4, seed=2, verify="off"
    )
    model = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=2, limit_train_batches=1, limit_val_batches=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    raw = dm.data_train.tensors[0]
    assert len(model.batches["train"]) == 2 and len(model.batches["val"]) == 2
    for epoch, got in enumerate(model.batches["train"]):
        order = EpochSeededRandomSampler(8, seed=2)
        order.set_epoch(epoch)
        idx = list(order)[:4]
        g = torch.Generator().manual_seed(mix_seed(2, epoch, 0))  # global_step == epoch here
        want = normalize(random_crop_flip(raw[idx], 4, "zeros", True, g), dm.mean, dm.std)
        assert torch.equal(got, want), epoch
    val = model.batches["val"][0]
    assert torch.equal(val, normalize(dm.data_test.tensors[0][:4], dm.mean, dm.std))
