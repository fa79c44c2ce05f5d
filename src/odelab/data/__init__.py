"""Datamodules (CIFAR-10/100, MNIST, MNIST-5k, ImageNet folders), batch transforms, download."""

from odelab.data.base import EpochSeededRandomSampler, ImageClassificationDataModule
from odelab.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from odelab.data.digits import DigitsDataModule, load_digits_uint8
from odelab.data.download import download_url, extract_archive, md5sum
from odelab.data.errors import DatasetError
from odelab.data.imagenet import ImageNetDataModule
from odelab.data.mnist import MNIST5kDataModule, MNISTDataModule, read_idx
from odelab.data.pde_data import PDETrajectoryDataModule
from odelab.data.restoration import RESTORATION_SOURCES, RestorationDataModule
from odelab.data.sources import CIFAR10, CIFAR100, MNIST, Source
from odelab.data.transforms import crop_flip, normalize, random_crop_flip

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "MNIST",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DatasetError",
    "DigitsDataModule",
    "EpochSeededRandomSampler",
    "ImageClassificationDataModule",
    "ImageNetDataModule",
    "MNIST5kDataModule",
    "MNISTDataModule",
    "PDETrajectoryDataModule",
    "RESTORATION_SOURCES",
    "RestorationDataModule",
    "Source",
    "crop_flip",
    "download_url",
    "extract_archive",
    "load_digits_uint8",
    "md5sum",
    "normalize",
    "random_crop_flip",
    "read_idx",
]
