"""ImageNet (ILSVRC-2012) from its standard folder layout, decoded in DataLoader workers.

Layout under ``<data_dir>/<folder>/`` (``folder`` defaults to ``imagenet``):

- ``train/<wnid>/*.JPEG``: one folder per class; the sorted folder names define the labels.
- ``val/``, either
  - **class folders** ``val/<wnid>/*.JPEG`` (what the common ``valprep.sh`` script produces), or
  - **flat** ``val/ILSVRC2012_val_00000001.JPEG ...`` plus a label file (``val_labels``):
    lines ``<file name> <wnid>`` (space or comma separated; a header line is skipped), or
    Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString`` whose first token is the
    wnid). The devkit's ``ILSVRC2012_validation_ground_truth.txt`` holds devkit class ids, not
    wnids, and needs ``meta.mat`` to map: convert it to ``<file> <wnid>`` lines first.

Work split: a worker process opens each JPEG with Pillow, crops and resizes it in one
``Image.resize(box=...)`` call (random-resized crop for training, resize + centre crop for
evaluation) and returns a uint8 ``[3, S, S]`` tensor; the horizontal flip, the conversion to
float and the normalisation run on the device batch
(:meth:`ImageNetDataModule.on_after_batch_transfer`).
The random crop of image ``i`` in epoch ``e`` is a pure function of ``(seed, e, i)``, also
under DDP (Lightning's ``DistributedSamplerWrapper`` shards the (index, seed) pairs).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from odelab.data.base import EpochSeededRandomSampler, mix_seed, subset_indices
from odelab.data.errors import DatasetError
from odelab.data.transforms import normalize

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
VAL_LABEL_FILES = ("LOC_val_solution.csv", "val_labels.txt")  # looked for next to train/ and val/
_LAYOUT_HINT = (
    "expected <root>/train/<wnid>/*.JPEG and either <root>/val/<wnid>/*.JPEG or a flat "
    "<root>/val/*.JPEG with a label file (<file> <wnid> per line, or Kaggle's "
    "LOC_val_solution.csv); ImageNet cannot be downloaded automatically: get ILSVRC-2012 from "
    "image-net.org and extract it there (see odelab/data/imagenet.py)"
)


def _images(folder: Path) -> list[Path]:
    return sorted(
        Path(e.path)
        for e in os.scandir(folder)
        if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def find_classes(train_dir: Path) -> list[str]:
    """The sorted class-folder names (wnids) of ``train_dir``."""
    if not train_dir.is_dir():
        raise DatasetError(f"ImageNet training folder {train_dir} is missing: {_LAYOUT_HINT}")
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    if not classes:
        raise DatasetError(
            f"ImageNet training folder {train_dir} has no class folders: {_LAYOUT_HINT}"
        )
    return classes


def scan_class_folders(root: Path, classes: Sequence[str]) -> list[tuple[str, int]]:
    """(path, label) of every image in ``root/<class>/``; unknown class folders are an error."""
    index = {c: i for i, c in enumerate(classes)}
    found = sorted(e.name for e in os.scandir(root) if e.is_dir())
    unknown = [c for c in found if c not in index]
    if unknown:
        raise DatasetError(
            f"{root} has class folders that train/ lacks: {unknown[:5]}; the two splits must "
            "use the same wnids"
        )
    samples = [(str(p), index[c]) for c in found for p in _images(root / c)]
    if not samples:
        raise DatasetError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}: {_LAYOUT_HINT}"
        )
    return samples


def read_val_labels(path: Path, classes: Sequence[str]) -> dict[str, int]:
    """File name (without extension) -> label, from ``<file> <wnid>`` lines or
    ``LOC_val_solution.csv``."""
    index = {c: i for i, c in enumerate(classes)}
    labels: dict[str, int] = {}
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f)):
            fields = row if len(row) > 1 else (row[0].split() if row else [])
            if not fields:
                continue
            name, target = fields[0].strip(), fields[1].strip().split()
            wnid = target[0] if target else ""
            if wnid not in index:
                if n == 0:
                    continue  # a header line
                raise DatasetError(
                    f"{path} line {n + 1}: class {wnid!r} is not a train/ class folder; expected "
                    "'<file name> <wnid>' lines or LOC_val_solution.csv"
                )
            labels[Path(name).stem] = index[wnid]
    return labels


def load_rgb(path: str, shorter: int | None = None) -> Image.Image:
    """Decode an image to RGB; a corrupt or unreadable file is a :class:`DatasetError`.

    ``shorter``: a JPEG may be decoded at a reduced scale (``Image.draft``: 1/2, 1/4, 1/8) as
    long as its shorter side stays >= ``shorter`` (much faster for evaluation resizes).
    """
    try:
        with Image.open(path) as img:
            w, h = img.size
            if shorter is not None and min(w, h) > shorter:
                f = min(w, h) / shorter
                img.draft("RGB", (math.ceil(w / f), math.ceil(h / f)))
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(
            f"corrupt or unreadable image {path} ({type(e).__name__}: {e}); replace it with a "
            "good copy from the ILSVRC-2012 archive or delete it"
        ) from e


def random_resized_box(
    w: int, h: int, rng: np.random.Generator, scale: Sequence[float], ratio: Sequence[float]
) -> tuple[float, float, float, float]:
    """The Inception crop: area fraction ~ U(scale), log aspect ratio ~ U(log ratio); 10 tries,
    then the central crop with the aspect ratio clamped to ``ratio`` (as torchvision)."""
    area = w * h
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        r = math.exp(rng.uniform(*log_r))
        cw, ch = round(math.sqrt(target * r)), round(math.sqrt(target / r))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            return left, top, left + cw, top + ch
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        cw, ch = round(h * ratio[1]), h
    else:
        cw, ch = w, h
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def center_box(w: int, h: int, resize: int, size: int) -> tuple[float, float, float, float]:
    """The region of the original image that "resize the shorter side to ``resize``, then take
    the central ``size`` x ``size``" keeps, in original pixel coordinates."""
    s = min(w, h) / resize  # original pixels per resized pixel
    cw = ch = size * s
    left, top = (w - cw) / 2, (h - ch) / 2
    return left, top, left + cw, top + ch


def to_uint8_chw(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


class ImageFileDataset(Dataset):
    """(path, label) samples -> (uint8 ``[3, size, size]``, label), cropped in the worker.

    ``train``: indices come as ``(i, seed)`` pairs from :class:`SeededIndexSampler` and the
    random-resized crop of sample ``i`` draws from ``default_rng(seed)``; otherwise the resize +
    centre crop is deterministic.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        size: int,
        train: bool,
        resize: int = 256,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
    ):
        self.samples = list(samples)
        self.size, self.train, self.resize = int(size), bool(train), int(resize)
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, seed = index if isinstance(index, tuple) else (index, index)
        path, label = self.samples[i]
        out = (self.size, self.size)
        if self.train:
            img = load_rgb(path)
            box = random_resized_box(
                *img.size, np.random.default_rng(seed), self.scale, self.ratio
            )
        else:
            img = load_rgb(path, shorter=self.resize)
            box = center_box(*img.size, self.resize, self.size)
        img = img.resize(out, Image.Resampling.BILINEAR, box=box)
        return to_uint8_chw(img), label


class SeededIndexSampler(EpochSeededRandomSampler):
    """The epoch's permutation, each index ``i`` paired with its crop seed
    ``mix(seed, epoch) + i`` (``default_rng`` hashes it; cheap for 1.28M indices per epoch)."""

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        base = mix_seed(self.seed, self.epoch)
        for i in super().__iter__():
            yield i, (base + i) % 2**64


class ImageNetDataModule(pl.LightningDataModule):
    """ILSVRC-2012 classification: the training folder, and the validation set for both val
    and test (ImageNet results are reported on the validation set).

    Args:
        data_dir: ``paths.data_dir``; the dataset lives in ``data_dir/folder``.
        val_labels: label file for a flat ``val/`` (absolute, or relative to the dataset
            folder); None looks for ``LOC_val_solution.csv`` / ``val_labels.txt`` there.
        image_size: training and evaluation crop (224); ``resize_size``: shorter side before
            the evaluation centre crop (256).
        scale, ratio: random-resized-crop area fraction and aspect-ratio ranges.
        augment: random-resized crop + flip for training (False: the evaluation transform).
        train_subset, val_subset: keep at most N images (a fixed permutation), for small runs.
    """

    in_channels = 3

    def __init__(
        self,
        data_dir: str,
        folder: str = "imagenet",
        train_dir: str = "train",
        val_dir: str = "val",
        val_labels: str | None = None,
        seed: int = 0,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int = 8,
        pin_memory: bool = True,
        image_size: int = 224,
        resize_size: int = 256,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        augment: bool = True,
        flip: bool = True,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        train_subset: int | None = None,
        val_subset: int | None = None,
    ):
        super().__init__()
        if image_size < 1 or resize_size < image_size:
            raise ValueError(
                f"image_size={image_size}, resize_size={resize_size}: need 1 <= image_size <= "
                "resize_size"
            )
        if not (0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]):
            raise ValueError(f"scale={list(scale)} must lie in (0, 1], ratio={list(ratio)} > 0")
        self.root = Path(data_dir) / folder
        self.train_dir, self.val_dir = self.root / train_dir, self.root / val_dir
        self.val_labels = val_labels
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers, self.pin_memory = int(num_workers), bool(pin_memory)
        self.image_size, self.resize_size = int(image_size), int(resize_size)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.augment, self.flip = bool(augment), bool(flip)
        self.mean, self.std = tuple(mean), tuple(std)
        self.train_subset, self.val_subset = train_subset, val_subset
        self.classes: list[str] = []
        self.data_train: ImageFileDataset | None = None
        self.data_val: ImageFileDataset | None = None

    @property
    def num_classes(self) -> int:
        if not self.classes:
            self.classes = find_classes(self.train_dir)
        return len(self.classes)

    def val_samples(self) -> list[tuple[str, int]]:
        """The validation images and labels, from class folders or a flat folder + label file."""
        self.num_classes  # noqa: B018 (reads the classes; a missing train/ is reported first)
        if not self.val_dir.is_dir():
            raise DatasetError(
                f"ImageNet validation folder {self.val_dir} is missing: {_LAYOUT_HINT}"
            )
        if any(e.is_dir() for e in os.scandir(self.val_dir)):
            return scan_class_folders(self.val_dir, self.classes)
        if self.val_labels is not None:
            label_file = Path(self.val_labels)
            label_file = label_file if label_file.is_absolute() else self.root / label_file
            if not label_file.is_file():
                raise DatasetError(f"val_labels file {label_file} is missing: {_LAYOUT_HINT}")
        else:
            found = [self.root / n for n in VAL_LABEL_FILES if (self.root / n).is_file()]
            if not found:
                raise DatasetError(
                    f"{self.val_dir} is flat (no class folders) and no label file was given or "
                    f"found ({', '.join(VAL_LABEL_FILES)} in {self.root}): set data.val_labels; "
                    + _LAYOUT_HINT
                )
            label_file = found[0]
        labels = read_val_labels(label_file, self.classes)
        samples, unlabelled = [], []
        for p in _images(self.val_dir):
            (
                samples.append((str(p), labels[p.stem]))
                if p.stem in labels
                else unlabelled.append(p)
            )
        if unlabelled:
            raise DatasetError(
                f"{len(unlabelled)} validation images have no label in {label_file}, e.g. "
                f"{unlabelled[0]}"
            )
        if not samples:
            raise DatasetError(f"no images under {self.val_dir}: {_LAYOUT_HINT}")
        return samples

    def setup(self, stage: str | None = None) -> None:
        if self.data_val is None:
            val = self.val_samples()
            if self.val_subset is not None:
                val = [val[i] for i in subset_indices(len(val), int(self.val_subset))]
            self.data_val = self._dataset(val, train=False)
        if stage in (None, "fit") and self.data_train is None:
            train = scan_class_folders(self.train_dir, self.classes)
            if self.train_subset is not None:
                train = [train[i] for i in subset_indices(len(train), int(self.train_subset))]
            self.data_train = self._dataset(train, train=self.augment)

    def _dataset(self, samples: list[tuple[str, int]], train: bool) -> ImageFileDataset:
        return ImageFileDataset(
            samples, self.image_size, train, self.resize_size, self.scale, self.ratio
        )

    def train_dataloader(self) -> DataLoader:
        if self.data_train is None:
            self.setup("fit")
        sampler = SeededIndexSampler(len(self.data_train), self.seed)
        return self._loader(self.data_train, self.batch_size, sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        if self.data_val is None:
            self.setup("validate")
        return self._loader(self.data_val, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def _loader(self, data, batch_size: int, sampler=None, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            data,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last and len(data) >= batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 batch -> (h-flipped with p = 1/2, if training) normalised float32, on device."""
        x, y = batch
        trainer = self.trainer
        if self.augment and self.flip and trainer is not None and trainer.training:
            g = torch.Generator(device=x.device)
            g.manual_seed(mix_seed(self.seed, trainer.global_step, trainer.global_rank))
            flipped = torch.rand(x.shape[0], generator=g, device=x.device) < 0.5
            x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
        return normalize(x, self.mean, self.std), y
