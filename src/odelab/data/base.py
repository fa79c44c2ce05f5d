"""The shared image-classification datamodule: uint8 splits in memory, transforms on the batch.

Two loading paths, one augmentation function:

- host (``device_resident=False``): a ``DataLoader`` over :class:`BatchedTensorDataset`, which
  gathers a whole batch with one tensor index (no per-sample ``__getitem__`` + collate);
- device-resident (``True``; ``"auto"``: when the trainer runs on CUDA): each split is one uint8
  tensor on the accelerator and :class:`TensorBatchLoader` slices batches out of it there
  (airbench-style), sharded per rank like ``DistributedSampler``.

Either way :meth:`ImageClassificationDataModule.on_after_batch_transfer` does pad + random crop
+ flip + normalisation on the whole batch, on the batch's device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from odelab.data.download import VERIFY_MODES, fetch
from odelab.data.sources import Source
from odelab.data.transforms import PAD_MODES, normalize, random_crop_flip

_SUBSET_SEED = 0  # the fixed permutation that train_subset / test_subset take their first N from
DEVICE_RESIDENT = ("auto", True, False)


def mix_seed(*ints: int) -> int:
    """One 64-bit seed from several non-negative ints (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence(list(ints)).generate_state(1, np.uint64)[0])


class EpochSeededRandomSampler(Sampler[int]):
    """A random permutation of ``range(num_samples)`` that is a pure function of (seed, epoch).

    Lightning calls :meth:`set_epoch` at the start of every epoch (also through the
    ``DistributedSamplerWrapper`` it puts around this sampler under DDP), so a run resumed from
    a checkpoint sees exactly the batches the uninterrupted run would have seen.
    """

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_permutation(self.num_samples, self.seed, self.epoch).tolist())


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The training order of ``epoch``: a permutation of ``range(n)``, a pure function of
    (seed, epoch); the one :class:`EpochSeededRandomSampler` and :class:`TensorBatchLoader` use."""
    g = torch.Generator().manual_seed(mix_seed(seed, epoch))
    return torch.randperm(n, generator=g)


class BatchedTensorDataset(TensorDataset):
    """A ``TensorDataset`` whose batches are one gather per tensor.

    ``DataLoader`` calls :meth:`__getitems__` with the batch's indices; with
    :func:`collate_batch` as ``collate_fn`` the batch is ``tuple(t[indices] for t in tensors)``:
    no per-sample ``__getitem__``, no per-sample collate.
    """

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[idx] for t in self.tensors)


def collate_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``collate_fn`` for :class:`BatchedTensorDataset`: the gathered batch as it is."""
    return batch


class _Shards:
    """Which indices rank ``rank`` of ``world_size`` visits in an epoch (DistributedSampler
    semantics: the epoch's order padded by repeating its start to a multiple of
    ``world_size``, then every ``world_size``-th from ``rank``). ``shuffle``: the order is
    :func:`epoch_permutation` of (seed, epoch), else ``0..n-1``. Lightning calls
    :meth:`set_epoch` on ``loader.sampler`` at every epoch start."""

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)

    def indices(self) -> torch.Tensor:
        n = self.n
        order = epoch_permutation(n, self.seed, self.epoch) if self.shuffle else torch.arange(n)
        total = len(self) * self.world_size
        if total > self.n:
            order = torch.cat([order, order.repeat(math.ceil(total / self.n))[: total - self.n]])
        return order[self.rank : total : self.world_size]


class TensorBatchLoader:
    """Batches sliced out of tensors that already sit on their device: a ``DataLoader`` for
    device-resident data.

    Each epoch: the rank's indices (:class:`_Shards`) move to the data's device once; every
    batch is then ``tuple(t[idx[i:i + batch_size]] for t in tensors)``, computed where the data
    lives (no host round trip, no Python per sample). On one device with ``shuffle`` the batches
    are exactly those of ``DataLoader(BatchedTensorDataset(*tensors), batch_size,
    sampler=EpochSeededRandomSampler(n, seed))``.
    """

    batch_sampler = None  # Lightning inspects DataLoader-like attributes; the batching is ours

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ):
        n = len(tensors[0])
        if any(len(t) != n for t in tensors):
            raise ValueError("TensorBatchLoader: all tensors need the same first dimension")
        self.tensors = tuple(tensors)
        self.batch_size = int(batch_size)
        self.drop_last = drop_last
        self.sampler = _Shards(n, shuffle, seed, rank, world_size)

    def __len__(self) -> int:
        m = len(self.sampler)
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        idx = self.sampler.indices().to(self.tensors[0].device)
        for i in range(len(self)):
            j = idx[i * self.batch_size : (i + 1) * self.batch_size]
            yield tuple(t[j] for t in self.tensors)


class ImageClassificationDataModule(pl.LightningDataModule):
    """Image classification data held in memory as uint8 ``[N, C, H, W]`` plus int64 labels.

    Loaders serve uint8 batches; :meth:`on_after_batch_transfer` converts them on the batch's
    device: training batches get pad + random crop + random h-flip (if ``augment``), every
    batch is scaled to [0, 1] and normalised by ``mean``/``std``.

    Splits:

    - ``val_size == 0``: the validation loader serves the **test** split. Paper recipes train on
      the full training set and report the final epoch, so ``val/*`` is then monitoring only and
      must not be used for model selection.
    - ``val_size > 0``: that many training images are held out for validation (the first of a
      permutation seeded by ``seed``); the test split is untouched.
    - ``train_subset`` / ``test_subset``: keep at most N images, the first N of a fixed
      permutation (independent of ``seed``; the training subset skips the held-out validation
      images), for CPU-scale runs.

    ``device_resident``: hold each split as one tensor on the trainer's device and serve batches
    with :class:`TensorBatchLoader` (``"auto"``: when that device is CUDA; on one device the
    batches equal the host path's). Under DDP each rank gets its shard of the epoch's permutation.

    The training order comes from :class:`EpochSeededRandomSampler` and the augmentation from a
    generator seeded with ``(seed, trainer.global_step, trainer.global_rank)``, so both are
    reproducible and identical after a resume. (With gradient accumulation the micro-batches of
    one optimizer step share their crop/flip draws.)

    Args:
        data_dir: folder holding the datasets (``paths.data_dir``).
        batch_size: training batch size; ``eval_batch_size`` (default: the same) for val/test.
        num_workers: DataLoader workers (``persistent_workers`` when > 0).
        val_size: training images held out for validation (0: validate on the test split).
        seed: seeds the validation split, the epoch order and the augmentation.
        augment: random crop + flip on training batches; ``pad`` pixels of ``pad_mode``
            (``"zeros"`` or ``"reflect"``) padding, ``flip`` for the horizontal flip.
        mean, std: per-channel normalisation (default: the dataset's usual constants).
        train_subset, test_subset: keep at most this many images (None: all).
        pin_memory: DataLoader ``pin_memory``.
        device_resident: ``"auto"``, ``True`` or ``False`` (see above).
        download: let :meth:`prepare_data` download and verify missing official files.
        verify: md5 check of the files: ``"strict"`` (mismatch is an error), ``"warn"`` (a
            logged warning) or ``"off"``. Missing or unreadable files are always an error.
    """

    dataset_name: ClassVar[str]
    num_classes: ClassVar[int]
    in_channels: ClassVar[int]
    image_size: ClassVar[int]
    default_mean: ClassVar[tuple[float, ...]]
    default_std: ClassVar[tuple[float, ...]]
    source: ClassVar[Source | None] = None

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int = 0,
        seed: int = 0,
        augment: bool = True,
        pad: int = 4,
        pad_mode: str = "zeros",
        flip: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        train_subset: int | None = None,
        test_subset: int | None = None,
        pin_memory: bool = False,
        download: bool = False,
        verify: str = "warn",
        device_resident: bool | str = "auto",
    ):
        super().__init__()
        self.data_dir = str(data_dir)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.val_size = int(val_size)
        self.seed = int(seed)
        self.augment = bool(augment)
        self.pad = int(pad)
        self.pad_mode = pad_mode
        self.flip = bool(flip)
        self.mean = tuple(float(v) for v in (self.default_mean if mean is None else mean))
        self.std = tuple(float(v) for v in (self.default_std if std is None else std))
        self.train_subset = None if train_subset is None else int(train_subset)
        self.test_subset = None if test_subset is None else int(test_subset)
        self.pin_memory = bool(pin_memory)
        self.download = bool(download)
        self.verify = verify
        self.device_resident = device_resident
        self._check_args()
        self._norm: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._on_device: dict[tuple[str, torch.device], tuple[torch.Tensor, ...]] = {}
        self.data_train: TensorDataset | None = None
        self.data_val: TensorDataset | None = None
        self.data_test: TensorDataset | None = None
        self.classes: list[str] = []

    def _check_args(self) -> None:
        name = type(self).__name__
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"{name}: pad_mode={self.pad_mode!r}; use one of {PAD_MODES}")
        if self.device_resident not in DEVICE_RESIDENT:
            raise ValueError(
                f"{name}: device_resident={self.device_resident!r}; use auto, true or false"
            )
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"{name}: verify={self.verify!r}; use one of {VERIFY_MODES}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(
                f"{name}: mean and std need {self.in_channels} values (one per channel); "
                f"got mean={list(self.mean)}, std={list(self.std)}"
            )
        if min(self.batch_size, self.eval_batch_size) < 1 or min(self.val_size, self.pad) < 0:
            raise ValueError(f"{name}: batch sizes must be >= 1, val_size and pad >= 0")
        if self.seed < 0:
            raise ValueError(f"{name}: seed={self.seed}; seeds are non-negative")
        if any(n is not None and n < 1 for n in (self.train_subset, self.test_subset)):
            raise ValueError(f"{name}: train_subset/test_subset must be >= 1 or null")

    # ---- what subclasses provide -------------------------------------------------------------

    def load_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole ``"train"`` or ``"test"`` split: uint8 ``[N, C, H, W]``, int64 ``[N]``."""
        raise NotImplementedError

    def required_files(self) -> list[str]:
        """The canonical files (names in ``source.folder``) this configuration reads."""
        return list(self.source.files) if self.source else []

    # ---- Lightning hooks ---------------------------------------------------------------------

    def prepare_data(self) -> None:
        """With ``download=True``, download, verify and extract the missing official files."""
        if self.download and self.source is not None:
            fetch(self.source, self.data_dir, self.required_files())

    def setup(self, stage: str | None = None) -> None:
        """Load the splits ``stage`` needs, once: fit/validate -> train + val, test -> test."""
        if stage in (None, "fit", "validate") and self.data_train is None:
            x, y = self._tensors("train")
            train_idx, val_idx = split_indices(len(y), self.val_size, self.train_subset, self.seed)
            self.data_train = BatchedTensorDataset(x[train_idx], y[train_idx])
            if self.val_size:
                self.data_val = BatchedTensorDataset(x[val_idx], y[val_idx])
            else:
                self.data_val = self._test_set()
        if stage in (None, "test", "predict"):
            self._test_set()

    def _test_set(self) -> TensorDataset:
        if self.data_test is None:
            x, y = self._tensors("test")
            if self.test_subset is not None:
                keep = subset_indices(len(y), self.test_subset)
                x, y = x[keep], y[keep]
            self.data_test = BatchedTensorDataset(x, y)
        return self.data_test

    def _tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.load_split(split)
        want = (self.in_channels, self.image_size, self.image_size)
        if x.dtype != np.uint8 or x.shape[1:] != want or y.shape != (len(x),):
            got = f"{x.dtype} {x.shape}"
            raise TypeError(f"load_split({split!r}) gave {got}, not uint8 [N, *{want}]")
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))

    def train_dataloader(self) -> DataLoader | TensorBatchLoader:
        if self.data_train is None:
            self.setup("fit")
        if self._resident():
            return self._device_loader("train", self.data_train, self.batch_size, shuffle=True)
        sampler = EpochSeededRandomSampler(len(self.data_train), self.seed)
        return self._loader(self.data_train, self.batch_size, sampler)

    def val_dataloader(self) -> DataLoader | TensorBatchLoader:
        if self.data_val is None:
            self.setup("fit")
        if self._resident():
            return self._device_loader("val", self.data_val, self.eval_batch_size)
        return self._loader(self.data_val, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader | TensorBatchLoader:
        if self._resident():
            return self._device_loader("test", self._test_set(), self.eval_batch_size)
        return self._loader(self._test_set(), self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader | TensorBatchLoader:
        return self.test_dataloader()

    def _loader(self, data: TensorDataset, batch_size: int, sampler=None) -> DataLoader:
        return DataLoader(
            data,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_batch if isinstance(data, BatchedTensorDataset) else None,
        )

    def _device(self) -> torch.device | None:
        return None if self.trainer is None else self.trainer.strategy.root_device

    def _resident(self) -> bool:
        """Whether this run serves device-resident batches (``"auto"``: the device is CUDA)."""
        if self.device_resident == "auto":
            dev = self._device()
            return dev is not None and dev.type == "cuda"
        return bool(self.device_resident)

    def _device_loader(
        self, split: str, data: TensorDataset, batch_size: int, shuffle: bool = False
    ) -> TensorBatchLoader:
        dev = self._device() or torch.device("cpu")
        key = (split, dev)
        if key not in self._on_device:  # one host-to-device copy of the split per run
            self._on_device[key] = tuple(t.to(dev) for t in data.tensors)
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        return TensorBatchLoader(
            self._on_device[key], batch_size, shuffle, self.seed, rank=rank, world_size=world
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 batch -> (augmented, if training) normalised float32 batch, on its device."""
        x, y = batch
        trainer = self.trainer
        if self.augment and trainer is not None and trainer.training:
            g = torch.Generator(device=x.device)
            g.manual_seed(mix_seed(self.seed, trainer.global_step, trainer.global_rank))
            x = random_crop_flip(x, self.pad, self.pad_mode, self.flip, g)
        return self._normalize(x), y

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`normalize` with mean/std cached per device: no host-to-device copy per batch."""
        if x.device not in self._norm:
            m = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
            s = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
            self._norm[x.device] = (m, s)
        return normalize(x, *self._norm[x.device])


def subset_indices(n: int, k: int) -> np.ndarray:
    """The first ``k`` (at most ``n``) of a fixed permutation of ``range(n)``, sorted."""
    return np.sort(np.random.default_rng(_SUBSET_SEED).permutation(n)[:k])


def split_indices(
    n: int, val_size: int, train_subset: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices into a training split of ``n`` images, each sorted.

    Validation is the first ``val_size`` of a permutation seeded by ``seed``; training is the
    rest, or its first ``train_subset`` in the fixed subset permutation.
    """
    if val_size >= n:
        raise ValueError(f"val_size={val_size} leaves no training images (the split has {n})")
    val = np.random.default_rng(seed).permutation(n)[:val_size]
    order = np.random.default_rng(_SUBSET_SEED).permutation(n)
    train = order[~np.isin(order, val)]
    if train_subset is not None:
        train = train[:train_subset]
    return np.sort(train), np.sort(val)
