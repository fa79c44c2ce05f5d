"""Image restoration data: Train400 patches with a random degradation level, and fixed test sets.

Tasks (``task``):

- ``denoise``: additive white Gaussian noise, ``y = x + (sigma/255) n``, ``n ~ N(0, 1)``, on
  [0, 1] images; the noisy input is **not** clipped.
- ``jpeg``: JPEG compression of the 8-bit grey image with Pillow at quality ``q``
  (``Image.save(format="JPEG", quality=q)``, libjpeg's default 4:2:0 settings are irrelevant for
  one grey channel), decoded back to [0, 1].

Colour images (LIVE1) are converted to grey with Pillow's ``convert("L")``, the ITU-R BT.601
luma ``Y = (299 R + 587 G + 114 B) / 1000`` on the 0-255 scale (full range, rounded).

Training batches are ``(y, x, level)``: ``patch_size`` crops of Train400 images, each with one of
the eight flips/rotations and its own level drawn uniformly from ``train_levels`` (sigma on the
0-255 scale, or the integer quality factor), all drawn from a generator seeded by
``(seed, index)`` so that an epoch is reproducible and a resumed run sees the same patches.
Evaluation items are dicts ``{"y", "x", "level", "group"}``: every image of every test set at every
level in ``test_levels``, with the noise seeded by (eval seed, set name, image index in its set,
level) alone, so an image's noise does not depend on which other sets or levels a run lists;
``group`` names the (set, level) cell, e.g. ``"BSD68_s25"`` or ``"LIVE1_q10"``.
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from odelab.data.base import mix_seed
from odelab.data.download import VERIFY_MODES, fetch, require, unreadable
from odelab.data.restoration_md5 import MD5
from odelab.data.sources import Source

log = logging.getLogger(__name__)

TASKS = ("denoise", "jpeg")
_DNCNN = "https://raw.githubusercontent.com/cszn/DnCNN/e93b27812d3ff523a3a79d19e5e50d233d7a8d0a/"
# set name -> (folder under data_dir, folder in the cszn/DnCNN repository)
_SETS = {
    "Train400": ("bsd/Train400", "TrainingCodes/DnCNN_TrainingCodes_v1.0/data/Train400/"),
    "BSD68": ("bsd/BSD68", "testsets/BSD68/"),
    "Set12": ("bsd/Set12", "testsets/Set12/"),
    "LIVE1": ("jpeg/LIVE1", "testsets/LIVE1/"),
    "classic5": ("jpeg/classic5", "testsets/classic5/"),
}


def _source(name: str) -> Source:
    folder, repo_path = _SETS[name]
    files = dict(line.split() for line in MD5[folder].split("\n") if line.strip())
    return Source(name=name, folder=folder, files=files, mirrors=(_DNCNN + repo_path,))


RESTORATION_SOURCES: dict[str, Source] = {name: _source(name) for name in _SETS}


def load_grey_images(
    name: str, data_dir: str | Path, verify: str = "warn", limit: int | None = None
) -> tuple[list[str], list[torch.Tensor]]:
    """The images of set ``name`` as uint8 ``[1, H, W]`` tensors (sorted by file name).

    Missing files raise :class:`DatasetError` naming them and how to get them; files Pillow
    cannot decode raise it too (truncated or corrupt); md5s are checked as ``verify`` says.
    """
    from PIL import Image

    source = RESTORATION_SOURCES[name]
    names = sorted(source.files)[:limit]
    paths = require(source, data_dir, names, verify)
    images = []
    for n in names:
        try:
            with Image.open(paths[n]) as im:
                im.load()
                grey = im.convert("L")
        except Exception as e:  # PIL raises many types for broken files
            reason = f"Pillow cannot decode it ({type(e).__name__}: {e})"
            raise unreadable(source, data_dir, paths[n], reason) from e
        images.append(torch.from_numpy(np.array(grey, dtype=np.uint8))[None])
    return names, images


def add_noise(x: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``y = x + sigma/255 * n`` with ``n ~ N(0, 1)`` drawn from ``generator``; not clipped.

    ``sigma`` broadcasts against ``x`` (a scalar, or one value per image as ``[B, 1, 1, 1]``).
    """
    n = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + (sigma / 255.0) * n


def jpeg(x_uint8: torch.Tensor, quality: int) -> torch.Tensor:
    """Round trip of one grey uint8 image ``[1, H, W]`` through Pillow's JPEG at ``quality``."""
    from PIL import Image

    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality {quality} is outside 1..100")
    buf = io.BytesIO()
    Image.fromarray(x_uint8[0].numpy(), mode="L").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return torch.from_numpy(np.array(im.convert("L"), dtype=np.uint8))[None]


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the eight flips/rotations of the square's symmetry group (k in 0..7)."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def degrade(clean_u8: torch.Tensor, task: str, level: float, g: torch.Generator) -> torch.Tensor:
    """The degraded float image in [0, 1] scale (noise is not clipped) of one uint8 image."""
    if task == "denoise":
        return add_noise(clean_u8.float() / 255.0, torch.tensor(float(level)), g)
    return jpeg(clean_u8, int(level)).float() / 255.0


def level_tag(task: str, level: float) -> str:
    """``s25`` (sigma) or ``q10`` (JPEG quality): the level part of a metric name."""
    prefix = "s" if task == "denoise" else "q"
    return f"{prefix}{float(level):g}"


class PatchDataset(Dataset):
    """Random degraded patches of ``images``; item ``i`` is a pure function of ``(seed, i)``."""

    def __init__(
        self,
        images: Sequence[torch.Tensor],
        patch_size: int,
        task: str,
        levels: tuple[float, float],
        length: int,
        seed: int,
        augment: bool = True,
    ):
        small = [tuple(im.shape[-2:]) for im in images if min(im.shape[-2:]) < patch_size]
        if small:
            raise ValueError(f"patch_size={patch_size} is larger than training images {small[0]}")
        self.images, self.patch_size, self.task = list(images), int(patch_size), task
        self.levels, self.length, self.seed, self.augment = levels, int(length), seed, augment

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, int(i)))
        im = self.images[int(torch.randint(len(self.images), (1,), generator=g))]
        h, w = im.shape[-2:]
        p = self.patch_size
        top = int(torch.randint(h - p + 1, (1,), generator=g))
        left = int(torch.randint(w - p + 1, (1,), generator=g))
        patch = im[:, top : top + p, left : left + p]
        if self.augment:
            patch = dihedral(patch, int(torch.randint(8, (1,), generator=g)))
        lo, hi = self.levels
        u = float(torch.rand((), generator=g))
        level = lo + (hi - lo) * u if self.task == "denoise" else round(lo + (hi - lo) * u)
        y = degrade(patch.contiguous(), self.task, level, g)
        return y, patch.float() / 255.0, torch.tensor(float(level))


class EpochIndexSampler(Sampler[int]):
    """Indices ``epoch * n ... epoch * n + n - 1``: every epoch draws new (seeded) patches."""

    def __init__(self, num_samples: int):
        self.num_samples, self.epoch = num_samples, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.epoch * self.num_samples, (self.epoch + 1) * self.num_samples))


def eval_noise_seed(seed: int, set_name: str, index: int, level: float) -> int:
    """The seed of one evaluation degradation: a function of the set's name (CRC-32), the image's
    index in its sorted set and the level only, never of the other sets or levels listed."""
    return mix_seed(seed, zlib.crc32(set_name.encode()), index, round(level * 100))


class EvalDataset(Dataset):
    """Every image of every set at every level, degraded once with a per-(set, image, level)
    seed (:func:`eval_noise_seed`)."""

    def __init__(
        self,
        sets: dict[str, list[torch.Tensor]],
        task: str,
        levels: Sequence[float],
        seed: int,
        crop: int | None = None,
    ):
        self.task, self.seed = task, seed
        self.images: list[torch.Tensor] = []
        # (set name, index in the set, index in self.images, level, group)
        self.items: list[tuple[str, int, int, float, str]] = []
        for name, images in sets.items():
            for j, im in enumerate(images):
                if crop is not None:
                    h, w = im.shape[-2:]
                    c = min(crop, h, w)
                    im = im[:, (h - c) // 2 : (h - c) // 2 + c, (w - c) // 2 : (w - c) // 2 + c]
                self.images.append(im.contiguous())
                for level in levels:
                    group = f"{name}_{level_tag(task, level)}"
                    self.items.append((name, j, len(self.images) - 1, float(level), group))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        name, j, k, level, group = self.items[i]
        im = self.images[k]
        g = torch.Generator().manual_seed(eval_noise_seed(self.seed, name, j, level))
        y = degrade(im, self.task, level, g)
        return {"y": y, "x": im.float() / 255.0, "level": torch.tensor(level), "group": group}


class RestorationDataModule(pl.LightningDataModule):
    """Train400 patches for training; BSD68/Set12 (denoise) or LIVE1/classic5 (jpeg) for testing.

    Args:
        data_dir: folder with ``bsd/Train400``, ``bsd/BSD68``, ``bsd/Set12``, ``jpeg/LIVE1``,
            ``jpeg/classic5`` (the cszn/DnCNN files; ``download=true`` fetches missing ones from
            the pinned cszn/DnCNN commit and checks their md5).
        task: ``denoise`` or ``jpeg``.
        train_set: the training images (``Train400``); ``train_subset`` keeps the first N.
        train_levels: ``[low, high]`` of the uniform training level (sigma; or JPEG quality).
        patch_size, patches_per_epoch: size and number of training crops per epoch.
        test_sets, test_levels: what ``test`` evaluates: every set at every level (levels
            above the training range test generalisation).
        test_subset, test_crop: keep the first N images of each test set / a centred square
            crop (None: all / full images; full images of mixed sizes are served one by one).
        val_set, val_levels, val_subset, val_crop: the validation cells (monitoring only).
        seed: patch draws and test noise; ``eval_seed`` (default ``seed``) for the test noise.
    """

    def __init__(
        self,
        data_dir: str,
        task: str = "denoise",
        train_set: str = "Train400",
        train_levels: Sequence[float] = (0, 55),
        patch_size: int = 40,
        patches_per_epoch: int = 12800,
        batch_size: int = 128,
        eval_batch_size: int = 1,
        test_sets: Sequence[str] = ("BSD68", "Set12"),
        test_levels: Sequence[float] = (15, 25, 35, 45, 55, 65, 75),
        test_subset: int | None = None,
        test_crop: int | None = None,
        val_set: str | None = "Set12",
        val_levels: Sequence[float] = (15, 25, 50),
        val_subset: int | None = 4,
        val_crop: int | None = 128,
        train_subset: int | None = None,
        augment: bool = True,
        seed: int = 0,
        eval_seed: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        download: bool = False,
        verify: str = "warn",
    ):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"data.task={task!r}: use one of {TASKS}")
        unknown = [s for s in [train_set, *test_sets, val_set] if s and s not in _SETS]
        if unknown:
            raise ValueError(f"unknown restoration set(s) {unknown}; known: {sorted(_SETS)}")
        if verify not in VERIFY_MODES:
            raise ValueError(f"data.verify={verify!r}: use one of {VERIFY_MODES}")
        lo, hi = (float(v) for v in train_levels)
        if lo > hi or (task == "jpeg" and not 1 <= lo <= hi <= 100) or lo < 0:
            raise ValueError(f"data.train_levels={list(train_levels)} is not a valid range")
        self.data_dir, self.task, self.train_set = str(data_dir), task, train_set
        self.train_levels = (lo, hi)
        self.patch_size, self.patches_per_epoch = int(patch_size), int(patches_per_epoch)
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.test_sets, self.test_levels = list(test_sets), [float(v) for v in test_levels]
        self.test_subset, self.test_crop = test_subset, test_crop
        self.val_set, self.val_levels = val_set, [float(v) for v in val_levels]
        self.val_subset, self.val_crop = val_subset, val_crop
        self.train_subset, self.augment = train_subset, bool(augment)
        self.seed = int(seed)
        self.eval_seed = self.seed if eval_seed is None else int(eval_seed)
        self.num_workers, self.pin_memory = int(num_workers), bool(pin_memory)
        self.download, self.verify = bool(download), verify
        self.data_train: PatchDataset | None = None
        self.data_val: EvalDataset | None = None
        self.data_test: EvalDataset | None = None

    # the (set, level) cells, in evaluation order
    def groups(self, sets: Sequence[str], levels: Sequence[float]) -> list[str]:
        return [f"{s}_{level_tag(self.task, v)}" for s in sets for v in levels]

    @property
    def test_groups(self) -> list[str]:
        return self.groups(self.test_sets, self.test_levels)

    def prepare_data(self) -> None:
        if not self.download:
            return
        for name in {self.train_set, *self.test_sets, *([self.val_set] if self.val_set else [])}:
            fetch(RESTORATION_SOURCES[name], self.data_dir, RESTORATION_SOURCES[name].files)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.data_train is None:
            _, train = load_grey_images(
                self.train_set, self.data_dir, self.verify, self.train_subset
            )
            self.data_train = PatchDataset(
                train,
                self.patch_size,
                self.task,
                self.train_levels,
                self.patches_per_epoch,
                self.seed,
                self.augment,
            )
            if self.val_set:
                _, val = load_grey_images(
                    self.val_set, self.data_dir, self.verify, self.val_subset
                )
                self.data_val = EvalDataset(
                    {self.val_set: val}, self.task, self.val_levels, self.eval_seed, self.val_crop
                )
        if stage in (None, "test", "predict") and self.data_test is None:
            sets = {
                s: load_grey_images(s, self.data_dir, self.verify, self.test_subset)[1]
                for s in self.test_sets
            }
            self.data_test = EvalDataset(
                sets, self.task, self.test_levels, self.eval_seed, self.test_crop
            )

    def train_dataloader(self) -> DataLoader:
        if self.data_train is None:
            self.setup("fit")
        return DataLoader(
            self.data_train,
            batch_size=self.batch_size,
            sampler=EpochIndexSampler(len(self.data_train)),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def _eval_loader(self, data: EvalDataset) -> DataLoader:
        # full images of different sizes cannot share a batch
        same_size = len({tuple(im.shape) for im in data.images}) <= 1
        return DataLoader(
            data,
            batch_size=self.eval_batch_size if same_size else 1,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.data_train is None:
            self.setup("fit")
        return self._eval_loader(self.data_val) if self.data_val is not None else []

    def test_dataloader(self) -> DataLoader:
        if self.data_test is None:
            self.setup("test")
        return self._eval_loader(self.data_test)
