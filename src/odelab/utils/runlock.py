"""One run per output directory: ``<output_dir>/.odelab.lock`` holds the pid and host of the run
that owns the directory; a second run there stops with a message instead of sharing its
checkpoints and W&B run. A lock left by a dead process on this host, or by an earlier attempt of
the same SLURM job (a requeued job may land on another node), is taken over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from odelab.utils.errors import RunLockedError, storage_error

log = logging.getLogger(__name__)

LOCK_NAME = ".odelab.lock"


def _proc_start(pid: int) -> str | None:
    """The start time of ``pid`` (clock ticks since boot, ``/proc/<pid>/stat`` field 22): tells
    a live process from a later one that reuses its pid. ``None`` where there is no ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    now = _proc_start(pid)
    return start is None or now is None or now == start


def is_rank_zero() -> bool:
    """True unless this process is a non-zero rank of a distributed job (those share the
    directory of rank 0, which holds the lock)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        if os.environ.get(var, "0") not in ("", "0"):
            return False
    return True


def _owner() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start": _proc_start(os.getpid()),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _stale(holder: dict) -> str | None:
    """Why the lock of ``holder`` may be taken over (``None``: it is held)."""
    me = _owner()
    if holder.get("slurm_job") and holder.get("slurm_job") == me["slurm_job"]:
        return f"an earlier attempt of SLURM job {me['slurm_job']}"
    if holder.get("host") == me["host"]:
        pid = holder.get("pid")
        if not isinstance(pid, int) or not _alive(pid, holder.get("start")):
            return f"pid {pid} on this host is gone"
    return None


def _read(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return {}  # released meanwhile: try again
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder: dict) -> str:
    job = f", SLURM job {holder['slurm_job']}" if holder.get("slurm_job") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')}{job})"


@contextlib.contextmanager
def run_lock(output_dir: str | os.PathLike) -> Iterator[Path | None]:
    """Hold ``output_dir``'s lock for the duration; yields its path (``None`` on ranks > 0).

    Raises :class:`RunLockedError` when a live run holds it."""
    if not is_rank_zero():
        yield None
        return
    path = Path(output_dir) / LOCK_NAME
    me = _owner()
    blob = json.dumps(me) + "\n"
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = _read(path)
            if holder is None:  # being written this instant, or left empty by a crash
                time.sleep(0.2)
                holder = _read(path)
            if holder == {}:  # released meanwhile
                continue
            why = "its lock file is empty or unreadable" if holder is None else _stale(holder)
            if why is None:
                raise RunLockedError(
                    f"output dir {output_dir} is in use by the run of {_describe(holder)}: a "
                    "second run there would share its checkpoints, results.json and W&B run. "
                    "Wait for it, or give this run its own dir (hydra.run.dir=...); if that run "
                    f"is dead (e.g. on another host), delete {path}"
                ) from None
            log.warning("taking over the lock of %s: %s", output_dir, why)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        except OSError as e:
            clear = storage_error(e, path)
            if clear is None:
                raise
            raise clear from e
        with os.fdopen(fd, "w") as f:
            f.write(blob)
        break
    else:
        raise RunLockedError(f"could not take the lock {path}; another run keeps taking it")
    try:
        yield path
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == me["pid"]:
                path.unlink()
