"""The errors a user can fix: each prints as one message (no traceback) naming what is wrong,
where, and the fix. ``HYDRA_FULL_ERROR=1`` shows the traceback."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
from pathlib import Path

from hydra.errors import CompactHydraException

# errno values that mean "the disk refuses": full, over quota, read-only, no permission
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NO_WRITE = (errno.EACCES, errno.EPERM, errno.EROFS)


class OdelabError(Exception):
    """A problem of the run's inputs or surroundings, explained in its message."""


class ConfigError(OdelabError, ValueError):
    """A config value of the wrong type or range, an unknown key, or an impossible combination."""


class StorageError(OdelabError, OSError):
    """A write the disk refused (full, over quota, read-only, no permission), naming the path."""


class RunLockedError(OdelabError, RuntimeError):
    """Another run holds the output directory."""


class ReportedError(CompactHydraException):
    """A user error handed to Hydra, which prints its message alone (no traceback unless
    ``HYDRA_FULL_ERROR=1``); the original error is its ``__cause__``."""


def os_error_in(exc: BaseException | None, errnos: tuple[int, ...]) -> OSError | None:
    """The first ``OSError`` with one of ``errnos`` in ``exc``'s cause/context chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in errnos:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _free(path: Path) -> str:
    for p in (path, *path.parents):
        if p.exists():
            try:
                return f"{shutil.disk_usage(p).free / 2**20:.1f} MiB free on {p}"
            except OSError:
                return "free space unknown"
    return "free space unknown"


def storage_error(exc: BaseException, path: str | os.PathLike) -> StorageError | None:
    """``exc`` as a one-line :class:`StorageError` about writing ``path`` when the disk refused
    (ENOSPC, EDQUOT, EACCES, EPERM, EROFS anywhere in its chain); else ``None``."""
    path = Path(path)
    full = os_error_in(exc, DISK_FULL)
    if full is not None:
        return _with_errno(
            full.errno,
            f"no space left on the device writing {path} ({_free(path.parent)}); free space "
            "there, or write the run elsewhere (paths.log_dir=... / hydra.run.dir=...)",
        )
    denied = os_error_in(exc, NO_WRITE)
    if denied is not None:
        return _with_errno(
            denied.errno,
            f"cannot write {path}: {denied.strerror or 'permission denied'}; make "
            f"{path.parent} writable, or write the run elsewhere (paths.log_dir=... / "
            "hydra.run.dir=...)",
        )
    return None


def _with_errno(number: int, message: str) -> StorageError:
    err = StorageError(message)  # str(err) is the message alone, no "[Errno n]"
    err.errno = number
    return err


def writable_dir_problem(path: str | os.PathLike) -> str | None:
    """Why files cannot be created in ``path`` (or, where it does not exist yet, in the nearest
    existing parent that would hold it); ``None`` when they can. Cheap: no file is written."""
    path = Path(path).absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return f"{path}: no existing parent directory"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a directory: it cannot hold {path}"
    if not os.access(probe, os.W_OK | os.X_OK):
        ro = _read_only_fs(probe)
        why = "is on a read-only file system" if ro else "is not writable by this user"
        return f"{probe} {why}; a run there cannot write its outputs"
    return None


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def exit_code(exit_: SystemExit, trainer) -> int:
    """128 + the signal for a run stopped by SIGTERM (143) or SIGINT (130), so that shells,
    ``sacct`` and Hydra sweeps see an unfinished run; an explicit code is kept."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(exit_, SIGTERMException) or getattr(trainer, "received_sigterm", False):
        return 128 + signal.SIGTERM
    if trainer is not None and getattr(trainer, "interrupted", False):
        return 128 + signal.SIGINT  # Lightning turns Ctrl-C into sys.exit(1)
    code = exit_.code
    return code if isinstance(code, int) and code != 0 else 1


def to_log_file(log: logging.Logger, message: str) -> None:
    """``message`` into the run's log file (run.log) only: the console gets it from Hydra."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
