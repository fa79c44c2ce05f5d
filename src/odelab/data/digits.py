"""scikit-learn's bundled 8x8 handwritten digits (UCI optdigits): no files, no download."""

from __future__ import annotations

from typing import Any

import numpy as np

from odelab.data.errors import DatasetError
from odelab.data.mnist import StratifiedTableDataModule


def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as uint8 ``[N, 1, 8, 8]`` (grey levels 0..16 mapped to 0..255) and
    int64 labels, from ``sklearn.datasets.load_digits`` (shipped inside scikit-learn)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DatasetError(
            "the 8x8 digits ship inside scikit-learn, which is not installed: "
            "pip install -c constraints.txt scikit-learn"
        ) from e
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)
    if images.shape[1:] != (8, 8) or images.min() < 0 or images.max() > 16:
        raise DatasetError(
            f"sklearn load_digits gave {images.shape} in [{images.min()}, {images.max()}], "
            "not [N, 8, 8] in 0..16: pip install --force-reinstall scikit-learn"
        )
    x = np.rint(images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return x, np.asarray(bunch.target, dtype=np.int64)


class DigitsDataModule(StratifiedTableDataModule):
    """The 1,797 real 8x8 digits of ``sklearn.datasets.load_digits``; never downloads.

    A fixed stratified split (``test_fraction`` of each class to test, independent of ``seed``;
    0.2: 1,438 train / 359 test); ``val_size`` is held out of train as in the base class.
    ``data_dir`` is unused. No augmentation by default.
    """

    dataset_name = "digits"
    num_classes = 10
    in_channels = 1
    image_size = 8
    default_mean = (0.3053,)
    default_std = (0.3759,)

    def __init__(self, data_dir: str = "", test_fraction: float = 0.2, pad: int = 1, **kw: Any):
        super().__init__(data_dir, test_fraction, pad=pad, **kw)

    def read_table(self) -> tuple[np.ndarray, np.ndarray]:
        return load_digits_uint8()
