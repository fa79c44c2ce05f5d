"""Checkpoints that survive a cluster: atomic writes, validation, and the one a restart resumes.

A run's output directory is its identity: a run restarted in the same directory (a requeued
SLURM job, a re-run of the same command with the same ``hydra.run.dir``) resumes from the newest
readable checkpoint there: ``hpc_ckpt_<n>.ckpt`` (written by Lightning on the SLURM requeue signal
and by :class:`odelab.callbacks.PreemptionCheckpoint` on SIGTERM) or ``checkpoints/*.ckpt``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from odelab.utils.errors import OdelabError, storage_error

log = logging.getLogger(__name__)


class CheckpointError(OdelabError, RuntimeError):
    """A checkpoint file that cannot be read (truncated, corrupt, not a Lightning checkpoint)."""


def umask() -> int:
    """The process umask, read without changing it where Linux reports it (``/proc``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, then put it back
    os.umask(mask)
    return mask


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file in the target's directory, fsync, then ``os.replace``.

    ``os.replace`` within one directory is atomic on POSIX: a write killed at any point (SIGKILL
    after SLURM's ``KillWait``, a node failure) leaves the previous checkpoint intact, never a
    truncated one. (Lightning's own ``_atomic_save`` stages in ``/tmp`` and moves across file
    systems, which is a copy.) Remote URLs (``s3://``...) go through Lightning unchanged.

    The file gets the mode any other output gets (``0o666 & ~umask``; ``mkstemp`` alone makes it
    0600, unreadable to the group on a shared cluster). A full or read-only disk is one
    :class:`~odelab.utils.errors.StorageError` naming the checkpoint, not torch's
    ``inline_container.cc ... unexpected pos``.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as e:
            clear = storage_error(e, path)
            if clear is None:
                raise
            raise clear from e
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o666 & ~umask())
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            with suppress(OSError):
                os.unlink(tmp)
            clear = storage_error(e, path) if isinstance(e, Exception) else None
            if clear is not None:
                raise clear from e
            raise


def check_checkpoint(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` naming ``path`` unless it loads as a Lightning checkpoint.

    ``mmap=True`` reads the zip directory (at the end of the file, so a truncated file fails at
    once) without reading every tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check ckpt_path")
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e}); delete it, "
            "or pass ckpt_path=<another checkpoint>"
        ) from e
    missing = [k for k in ("state_dict", "epoch", "global_step") if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint (no {missing})")


def resume_candidates(output_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints a restart in ``output_dir`` could resume from, newest first (``last.ckpt``
    before an equally new top-k file)."""
    out = Path(output_dir)
    files = [*out.glob("hpc_ckpt_*.ckpt"), *(out / "checkpoints").glob("*.ckpt")]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"), reverse=True)


def find_resume_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest readable checkpoint in ``output_dir`` (``None``: a fresh run).

    An unreadable one is logged as an error naming it, and the previous one is used; when there
    are checkpoints but none is readable this raises rather than silently starting over.
    """
    candidates = resume_candidates(output_dir)
    for path in candidates:
        try:
            check_checkpoint(path)
        except CheckpointError as e:
            log.error("%s; resuming from the previous checkpoint instead", e)
            continue
        return str(path)
    if candidates:
        raise CheckpointError(
            f"no readable checkpoint in {output_dir} (tried {[str(p) for p in candidates]}); "
            "delete them, or set auto_resume=false to start this run over"
        )
    return None


def hpc_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Lightning's SLURM checkpoints (which ``trainer.test(ckpt_path=None)`` would load)."""
    return sorted(Path(output_dir).glob("hpc_ckpt_*.ckpt"))


def next_hpc_checkpoint(output_dir: str | os.PathLike) -> Path:
    """``<output_dir>/hpc_ckpt_<n+1>.ckpt`` after the highest ``n`` present (1 when none): the
    name Lightning's SLURM handler also uses, so a restart resumes the newest."""
    numbers = [0]
    for p in Path(output_dir).glob("hpc_ckpt_*.ckpt"):
        tail = p.stem.rsplit("_", 1)[-1]
        if tail.isdigit():
            numbers.append(int(tail))
    return Path(output_dir) / f"hpc_ckpt_{max(numbers) + 1}.ckpt"


def save_hpc_checkpoint(trainer, why: str) -> str:
    """Save the trainer's state as the next ``hpc_ckpt_<n>.ckpt`` of its output dir (one name on
    every rank: rank 0 picks it, the listing changes once it has written); return the path."""
    path = trainer.strategy.broadcast(str(next_hpc_checkpoint(trainer.default_root_dir)))
    trainer.save_checkpoint(path)
    if trainer.is_global_zero:
        log.warning("%s: saved %s (epoch %d, step %d); a restart in this dir resumes it", why,
                    path, trainer.current_epoch, trainer.global_step)  # fmt: skip
    return path


def checkpoint_position(path: str | os.PathLike) -> dict[str, Any] | None:
    """``{"path", "epoch", "global_step"}`` of a readable checkpoint (mmap: the tensors are not
    read); ``None`` when it cannot be read."""
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        return {"path": str(path), "epoch": int(ckpt["epoch"]), "global_step": ckpt["global_step"]}
    except Exception:
        return None


def in_dir(path: str | os.PathLike | None, dirpath: str | os.PathLike) -> str | None:
    """``path`` as a file of ``dirpath``: itself when it lies there, else the file of the same
    name in ``dirpath`` when that exists (a run directory copied or moved elsewhere: its
    checkpoints remember the old absolute paths), else ``None``. Never a file of another
    directory."""
    if not path:
        return None
    p, d = Path(path), Path(dirpath)
    if p.parent.resolve() == d.resolve():
        return str(p) if p.is_file() else None
    here = d / p.name
    return str(here) if here.is_file() else None


def rebase_checkpoint_paths(checkpoint: dict[str, Any], checkpoint_callbacks) -> None:
    """A run resumed in a directory other than the one its checkpoint was written in (a copied
    or moved run dir) keeps ModelCheckpoint's best/last/top-k paths only where they are files of
    *this* run's checkpoint dir: never another directory's files (edits ``checkpoint``)."""
    states = checkpoint.get("callbacks") or {}
    for cb in checkpoint_callbacks:
        state, dirpath = states.get(getattr(cb, "state_key", None)), getattr(cb, "dirpath", None)
        if not isinstance(state, dict) or not dirpath or state.get("dirpath") in (None, dirpath):
            continue
        log.info("checkpoint written in %s; its paths now point into %s", state["dirpath"],
                 dirpath)  # fmt: skip
        state["dirpath"] = dirpath
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if key in state:
                state[key] = in_dir(state[key], dirpath) or ""
        if "best_k_models" in state:
            state["best_k_models"] = {
                in_dir(k, dirpath): v
                for k, v in state["best_k_models"].items()
                if in_dir(k, dirpath)
            }
        if not state.get("best_model_path"):
            state["best_model_score"] = None
