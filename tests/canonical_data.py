"""Tiny datasets written byte-for-byte in the canonical on-disk formats, for tests.

- CIFAR: protocol-2 pickles as the Python 2 originals: keys and byte strings are Python 2 ``str``
  opcodes (``encoding="bytes"`` loads them as bytes, ``encoding="latin1"`` as str), the array is
  rebuilt by ``numpy.core.multiarray._reconstruct``; ``data`` is uint8 ``[N, 3072]`` holding the
  R, G, B planes of each 32x32 image, row-major.
- MNIST: gzipped IDX files (magic 0x803 / 0x801, big-endian uint32 dims, uint8 payload).

Pixels are random; labels cover every class whenever there are at least as many images as
classes (otherwise they are spread over the whole range, first and last class included).
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

# fmt: off
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
CIFAR100_FINE = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
]
CIFAR100_COARSE = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
]
# the official fine -> coarse (superclass) map
CIFAR100_FINE_TO_COARSE = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
]
# fmt: on


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes ``bytes`` as Python 2 ``str`` and numpy arrays through
    ``numpy.core.multiarray._reconstruct``, as the CIFAR originals were written."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct" and "numpy" in obj.__module__:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def py2_pickle(obj) -> bytes:
    """``obj`` pickled like a Python 2 ``cPickle.dump(obj, f, 2)`` of the CIFAR batches."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def spread_labels(n: int, num_classes: int, rng: np.random.Generator) -> list[int]:
    """``n`` shuffled labels covering every class if ``n >= num_classes``, else spread out."""
    if n >= num_classes:
        labels = np.arange(n) % num_classes
    else:
        labels = np.linspace(0, num_classes - 1, n).round().astype(int)
    return [int(v) for v in rng.permutation(labels)]


def write_cifar_batch(
    path: str | Path, data: np.ndarray, labels: Sequence[int], batch_label: str
) -> None:
    """One CIFAR-10 batch file: ``data`` uint8 ``[N, 3072]``, ``labels`` N ints."""
    entry = {
        b"batch_label": batch_label.encode(),
        b"labels": list(labels),
        b"data": np.ascontiguousarray(data, dtype=np.uint8),
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(data))],
    }
    Path(path).write_bytes(py2_pickle(entry))


def write_cifar10(
    root: str | Path,
    n_per_batch: int = 20,
    seed: int = 0,
    batches: Iterable[int] = (1, 2, 3, 4, 5),
) -> Path:
    """``root/cifar10/cifar-10-batches-py/``: ``data_batch_<i>`` for ``i`` in ``batches``,
    ``test_batch`` and ``batches.meta``, ``n_per_batch`` random images per batch."""
    folder = Path(root) / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    named = [(f"data_batch_{i}", f"training batch {i} of 5") for i in batches]
    for name, batch_label in [*named, ("test_batch", "testing batch 1 of 1")]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        write_cifar_batch(folder / name, data, spread_labels(n_per_batch, 10, rng), batch_label)
    meta = {
        b"num_cases_per_batch": n_per_batch,
        b"label_names": [c.encode() for c in CIFAR10_CLASSES],
        b"num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    return folder


def write_cifar100(root: str | Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    """``root/cifar100/cifar-100-python/{train,test,meta}`` with random images."""
    folder = Path(root) / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n, kind in (("train", n_train, b"training"), ("test", n_test, b"testing")):
        fine = spread_labels(n, 100, rng)
        entry = {
            b"filenames": [f"img_{i:05d}.png".encode() for i in range(n)],
            b"batch_label": kind + b" batch 1 of 1",
            b"fine_labels": fine,
            b"coarse_labels": [CIFAR100_FINE_TO_COARSE[f] for f in fine],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        (folder / name).write_bytes(py2_pickle(entry))
    meta = {
        b"fine_label_names": [c.encode() for c in CIFAR100_FINE],
        b"coarse_label_names": [c.encode() for c in CIFAR100_COARSE],
    }
    (folder / "meta").write_bytes(py2_pickle(meta))
    return folder


def idx_bytes(array: np.ndarray) -> bytes:
    """An uncompressed IDX file of unsigned bytes: magic 0x08NN, big-endian dims, payload."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def write_idx_gz(path: str | Path, array: np.ndarray) -> None:
    """A gzipped IDX file (fixed mtime, so the bytes are reproducible)."""
    with open(path, "wb") as raw, gzip.GzipFile(Path(path).stem, "wb", 9, raw, mtime=0) as f:
        f.write(idx_bytes(array))


def write_mnist(root: str | Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> Path:
    """``root/mnist/raw/`` with the four LeCun files, random 28x28 digits."""
    folder = Path(root) / "mnist" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx_gz(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        labels = np.array(spread_labels(n, 10, rng), dtype=np.uint8)
        write_idx_gz(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def write_imagenet(
    root: str | Path,
    classes: tuple[str, ...] = ("n01440764", "n01443537", "n01484850"),
    n_train: int = 3,
    n_val: int = 2,
    val_layout: str = "folders",
    seed: int = 0,
) -> Path:
    """``root/imagenet/{train/<wnid>/*.JPEG, val/...}`` of real JPEG-encoded random images of
    varied sizes; ``val_layout="folders"`` (val/<wnid>/) or ``"flat"`` (val/*.JPEG plus
    ``LOC_val_solution.csv`` in Kaggle's format)."""
    from PIL import Image

    base = Path(root) / "imagenet"
    rng = np.random.default_rng(seed)

    def jpeg(path: Path) -> None:
        h, w = int(rng.integers(24, 64)), int(rng.integers(24, 64))
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, "JPEG")

    for c in classes:
        for i in range(n_train):
            jpeg(base / "train" / c / f"{c}_{i}.JPEG")
    rows = ["ImageId,PredictionString"]
    k = 0
    for c in classes:
        for _ in range(n_val):
            k += 1
            name = f"ILSVRC2012_val_{k:08d}"
            if val_layout == "folders":
                jpeg(base / "val" / c / f"{name}.JPEG")
            else:
                jpeg(base / "val" / f"{name}.JPEG")
                rows.append(f"{name},{c} 1 2 30 40")
    if val_layout == "flat":
        (base / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return base
