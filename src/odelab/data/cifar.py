"""CIFAR-10 and CIFAR-100 from the official python-pickle batches."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from odelab.data.base import ImageClassificationDataModule
from odelab.data.download import require, unreadable
from odelab.data.sources import CIFAR10, CIFAR100

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))


class _CIFARDataModule(ImageClassificationDataModule):
    """Shared reader: each batch file is a protocol-2 pickle of a dict whose ``data`` is uint8
    ``[N, 3072]`` (the R, G, B planes of 32x32 images, row-major) and whose ``label_key`` holds
    N ints. Keys may be bytes (``encoding="bytes"``, as the Python 2 originals load) or str."""

    in_channels = 3
    image_size = 32
    label_key: ClassVar[str]
    meta_file: ClassVar[str]
    meta_key: ClassVar[str]
    test_file: ClassVar[str]

    def train_names(self) -> list[str]:
        """The batch files that make up the training split."""
        raise NotImplementedError

    def missing_hint(self) -> str:
        """Extra advice for the missing-file error (empty: none)."""
        return ""

    def required_files(self) -> list[str]:
        return [self.meta_file, *self.train_names(), self.test_file]

    def load_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        names = self.train_names() if split == "train" else [self.test_file]
        meta = [] if self.classes else [self.meta_file]
        paths = require(self.source, self.data_dir, meta + names, self.verify, self.missing_hint())
        if meta:
            self.classes = self._read_meta(paths[self.meta_file])
        parts = [self._read_batch(paths[n]) for n in names]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _unpickle(self, path: Path) -> dict[str, Any]:
        try:
            with open(path, "rb") as f:
                obj = pickle.load(f, encoding="bytes")
        except Exception as e:  # truncated or corrupt pickles fail in many ways
            reason = f"not a readable pickle ({type(e).__name__}: {e})"
            raise unreadable(self.source, self.data_dir, path, reason) from e
        if not isinstance(obj, dict):
            raise unreadable(self.source, self.data_dir, path, f"holds a {type(obj).__name__}")
        return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}

    def _read_meta(self, path: Path) -> list[str]:
        names = self._unpickle(path).get(self.meta_key)
        if not isinstance(names, list) or len(names) != self.num_classes:
            reason = f"{self.meta_key!r} should list {self.num_classes} class names"
            raise unreadable(self.source, self.data_dir, path, reason)
        return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]

    def _read_batch(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        entry = self._unpickle(path)
        data, labels = entry.get("data"), entry.get(self.label_key)
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
            got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data)
            reason = f"'data' is {got}, not uint8 [N, 3072]"
            raise unreadable(self.source, self.data_dir, path, reason)
        if data.shape[1] != 3 * 32 * 32:
            reason = f"'data' has shape {data.shape}, not [N, 3072] (3 x 32 x 32)"
            raise unreadable(self.source, self.data_dir, path, reason)
        if not isinstance(labels, list | np.ndarray):
            raise unreadable(self.source, self.data_dir, path, f"no {self.label_key!r} list")
        y = np.asarray(labels, dtype=np.int64)
        if y.shape != (len(data),) or (len(y) and (y.min() < 0 or y.max() >= self.num_classes)):
            reason = (
                f"{len(data)} images but {self.label_key!r} has shape {y.shape} or labels "
                f"outside [0, {self.num_classes})"
            )
            raise unreadable(self.source, self.data_dir, path, reason)
        return data.reshape(-1, 3, 32, 32), y


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 from ``<data_dir>/cifar10/cifar-10-batches-py/``.

    Args:
        train_files: the training batches to read (default: all five ``data_batch_*``, 50,000
            images). A subset trains on fewer images, e.g.
            ``data.train_files=[data_batch_1,data_batch_2]`` (20,000).
        **kwargs: see :class:`~odelab.data.base.ImageClassificationDataModule`.
    """

    dataset_name = "cifar10"
    num_classes = 10
    default_mean = (0.4914, 0.4822, 0.4465)
    default_std = (0.2023, 0.1994, 0.2010)
    source = CIFAR10
    label_key = "labels"
    meta_file = "batches.meta"
    meta_key = "label_names"
    test_file = "test_batch"

    def __init__(self, data_dir: str, train_files: Sequence[str] | None = None, **kwargs: Any):
        super().__init__(data_dir, **kwargs)
        files = list(CIFAR10_TRAIN_FILES if train_files is None else map(str, train_files))
        bad = [f for f in files if f not in CIFAR10_TRAIN_FILES]
        if not files or bad or len(set(files)) != len(files):
            raise ValueError(
                f"train_files={files}: give distinct names among {list(CIFAR10_TRAIN_FILES)}"
            )
        self.train_files = files

    def train_names(self) -> list[str]:
        return self.train_files

    def missing_hint(self) -> str:
        folder = Path(self.data_dir) / self.source.folder
        present = [f for f in CIFAR10_TRAIN_FILES if (folder / f).is_file()]
        if not present or set(self.train_files) <= set(present):
            return ""
        return (
            f"{folder} has only {', '.join(present)} of the training batches: to train on what "
            f"is there, set data.train_files=[{','.join(present)}]."
        )


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (the 100 fine labels) from ``<data_dir>/cifar100/cifar-100-python/``.

    Args:
        **kwargs: see :class:`~odelab.data.base.ImageClassificationDataModule`.
    """

    dataset_name = "cifar100"
    num_classes = 100
    default_mean = (0.5071, 0.4865, 0.4409)
    default_std = (0.2673, 0.2564, 0.2762)
    source = CIFAR100
    label_key = "fine_labels"
    meta_file = "meta"
    meta_key = "fine_label_names"
    test_file = "test"

    def train_names(self) -> list[str]:
        return ["train"]
