"""Download, verify and extract the official dataset files; locate and check them on disk."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from odelab.data.errors import DatasetError
from odelab.data.sources import Source

log = logging.getLogger(__name__)

VERIFY_MODES = ("strict", "warn", "off")
_CHUNK = 1 << 20


def md5sum(path: str | Path) -> str:
    """The hex md5 of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def download_url(url: str, dest: str | Path, md5: str | None = None, timeout: float = 60) -> Path:
    """Fetch ``url`` to ``dest``, checking ``md5``; all or nothing.

    The bytes stream into a temporary file beside ``dest`` that is renamed onto it only once the
    md5 matches, so an interrupted or bad download never leaves a partial ``dest`` behind.
    Raises :class:`DatasetError` on an md5 mismatch and ``urllib.error.URLError`` (an
    ``OSError``) when the URL cannot be read.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        h = hashlib.md5()
        request = urllib.request.Request(url, headers={"User-Agent": "odelab"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as r:
            while chunk := r.read(_CHUNK):
                out.write(chunk)
                h.update(chunk)
        if md5 is not None and h.hexdigest() != md5:
            raise DatasetError(
                f"downloaded {url} but its md5 is {h.hexdigest()}, not the expected {md5}; "
                "the download was discarded (a mirror serving a different or broken file?)"
            )
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def extract_archive(path: str | Path, to: str | Path) -> None:
    """Unpack a ``.tar[.gz|.bz2|.xz]``/``.tgz`` archive, or gunzip a single ``.gz``, into ``to``.

    Tar members must be plain files or folders that land inside ``to``: absolute paths, ``..``
    and links are refused (path traversal), before anything is written.
    """
    path, to = Path(path), Path(to)
    to.mkdir(parents=True, exist_ok=True)
    if tarfile.is_tarfile(path):
        root = to.resolve()
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            for m in members:
                target = (root / m.name).resolve()
                if not (m.isfile() or m.isdir()) or not target.is_relative_to(root):
                    raise DatasetError(f"refusing to extract {path}: unsafe member {m.name!r}")
            # tarfile's own "data" filter where this Python has it (3.10.12+, 3.11.4+)
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(to, members=members, **safe)
    elif path.suffix == ".gz":
        dest = to / path.stem
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=to)
        try:
            with os.fdopen(fd, "wb") as out, gzip.open(path, "rb") as src:
                shutil.copyfileobj(src, out, _CHUNK)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    else:
        raise DatasetError(f"cannot extract {path}: not a tar archive or a .gz file")


def how_to_get(source: Source, data_dir: str | Path) -> str:
    """The sentence every :class:`DatasetError` ends with: how to get the official files."""
    data_dir = Path(data_dir)
    if source.archive:
        what = (
            f"downloads the official archive {' or '.join(source.urls(source.archive))} "
            f"(md5 {source.archive_md5}), checks it and extracts it into "
            f"{data_dir / source.extract_to}"
        )
    else:
        what = f"downloads each file from {' or '.join(source.mirrors)} and checks its md5"
    return (
        f"To get {source.name}: run with data.download=true, which {what}; or do the same by "
        "hand; or point paths.data_dir=... (or the ODELAB_DATA_DIR environment variable) at a "
        f"folder that already has {source.folder}/."
    )


def fetch(source: Source, data_dir: str | Path, names: Iterable[str]) -> None:
    """Download (and extract) whichever of ``names`` is missing, trying each mirror in turn."""
    folder = Path(data_dir) / source.folder
    missing = [n for n in names if not (folder / n).is_file()]
    if not missing:
        return
    if source.archive:
        archive = Path(data_dir) / source.extract_to / source.archive
        if not (archive.is_file() and md5sum(archive) == source.archive_md5):
            _download_any(source, source.archive, archive, source.archive_md5, data_dir)
        log.info("extracting %s into %s", archive, archive.parent)
        extract_archive(archive, archive.parent)
    else:
        for name in missing:
            _download_any(source, name, folder / name, source.files[name], data_dir)
    still = [str(folder / n) for n in missing if not (folder / n).is_file()]
    if still:
        raise DatasetError(
            f"{source.name}: the download did not provide {', '.join(still)}. "
            + how_to_get(source, data_dir)
        )


def _download_any(
    source: Source, name: str, dest: Path, md5: str | None, data_dir: str | Path
) -> None:
    """Download ``name`` to ``dest`` from the first mirror that serves it with the right md5."""
    errors = []
    for url in source.urls(name):
        log.info("downloading %s -> %s", url, dest)
        try:
            download_url(url, dest, md5)
            return
        except (OSError, DatasetError) as e:
            log.warning("download of %s failed: %s", url, e)
            errors.append(f"{url}: {e}")
    raise DatasetError(
        f"{source.name}: could not download {name} from any mirror ({'; '.join(errors)}). "
        + how_to_get(source, data_dir)
    )


def require(
    source: Source, data_dir: str | Path, names: Iterable[str], verify: str, hint: str = ""
) -> dict[str, Path]:
    """The paths of ``names``, checked: missing files raise, md5s are checked as ``verify`` says.

    A missing file always raises :class:`DatasetError` (all missing files in one message, plus
    ``hint``). An md5 mismatch raises under ``"strict"``, logs a warning under ``"warn"`` and is
    not computed under ``"off"``.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify={verify!r}: use one of {VERIFY_MODES}")
    folder = Path(data_dir) / source.folder
    paths = {n: folder / n for n in names}
    missing = [n for n, p in paths.items() if not p.is_file()]
    if missing:
        lines = "\n".join(f"  {paths[n]} (official md5 {source.files[n]})" for n in missing)
        raise DatasetError(
            f"{source.name}: missing file(s):\n{lines}\n"
            + (f"{hint}\n" if hint else "")
            + how_to_get(source, data_dir)
        )
    if verify != "off":
        for n, p in paths.items():
            got, want = md5sum(p), source.files[n]
            if got == want:
                continue
            msg = f"{p}: md5 {got} differs from the official {want}"
            if verify == "strict":
                raise DatasetError(f"{msg} (data.verify=strict). " + how_to_get(source, data_dir))
            log.warning(
                "%s; using it anyway (data.verify=warn). Derived copies such as a re-encoded "
                "subset differ legitimately; data.verify=strict makes this an error.",
                msg,
            )
    return paths


def unreadable(source: Source, data_dir: str | Path, path: Path, reason: str) -> DatasetError:
    """The error for a file that exists but does not parse or has the wrong shapes or sizes."""
    return DatasetError(
        f"{source.name}: cannot use {path}: {reason}. Its md5 is {md5sum(path)}; the official "
        f"file's is {source.files[path.name]}. The file is truncated or corrupt: delete it and "
        "get it again. " + how_to_get(source, data_dir)
    )
