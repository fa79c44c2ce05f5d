"""A run's record: what its output dir already holds, which checkpoint each step uses, and
what ``results.json`` says (the paper's numbers beside ours, how an interruption ended it).

A run restarted in its output dir either finds a finished record of the same config (then it is
not trained or tested again; ``retest=true`` tests the same weights again) or resumes from the
newest readable checkpoint there (``auto_resume``). Tests use the monitored best, the final
weights in memory, or a given file, never another directory's checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from odelab.utils.config import to_container

log = logging.getLogger("odelab.train")


# Keys a finished run may be re-run with and still be the same run: how it is managed and
# where things live (the report's run-local keys), but not the seed.
RERUN_FREE = ("auto_resume", "retest", "ckpt_path", "print_config")


def comparable(config: dict) -> dict:
    import fnmatch

    from odelab.report.table import RUN_LOCAL_KEYS, _flatten

    patterns = [p for p in (*RUN_LOCAL_KEYS, *RERUN_FREE) if p not in ("seed", "*.seed")]
    flat = _flatten(json.loads(json.dumps(config, default=str)))
    return {
        k: v
        for k, v in flat.items()
        if not any(fnmatch.fnmatchcase(k, p) or fnmatch.fnmatchcase(k, p + ".*") for p in patterns)
    }


def finished_record(out: Path, cfg: DictConfig) -> dict | None:
    """``out/results.json`` when it records a finished run of the same config (up to
    :data:`RERUN_FREE` and where files live); else ``None``."""
    try:
        record = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") != "finished":
        return None
    if not isinstance(record.get("config"), dict):
        return None
    return record if comparable(record["config"]) == comparable(to_container(cfg)) else None


def recorded_score(record: dict, cfg: DictConfig) -> float | None:
    best = record.get("best_model_score")
    if best is not None:
        return float(best)
    value = (record.get("metrics") or {}).get(cfg.get("monitor"))
    return None if value is None else float(value)


def retest_ckpt(cfg: DictConfig, out: Path, record: dict) -> str:
    """The checkpoint file of this run dir that ``test_ckpt`` names for a finished run."""
    from odelab.utils.checkpoint import CheckpointError, checkpoint_position, in_dir

    ckdir = Path(OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None) or (
        out / "checkpoints"))  # fmt: skip
    choice = cfg.get("test_ckpt", "best")
    if choice not in ("best", "last"):
        return str(choice)
    path = in_dir(record.get("tested_ckpt"), ckdir)  # the file the finished run tested
    if path is None and choice == "best":
        path = in_dir(record.get("best_model_path"), ckdir)
    if path is None and choice == "last":  # tested in memory: a file with the final weights?
        for name in ("final.ckpt", "last.ckpt"):
            pos = checkpoint_position(ckdir / name)
            if pos is not None and pos["global_step"] == record.get("global_step"):
                path = pos["path"]
                break
    if not path:
        raise CheckpointError(
            f"retest=true: no checkpoint in {ckdir} holds the weights this run tested "
            f"(test_ckpt={choice}; last.ckpt is rewritten only with a new best, so it may "
            "predate the final epoch); pass test_ckpt=best or test_ckpt=<a checkpoint file>"
        )
    return path


def resume_ckpt(cfg: DictConfig, out: Path) -> str | None:
    """``ckpt_path`` if set (checked: a clear error when unreadable); else, with ``auto_resume``,
    the newest readable checkpoint in this run's output dir (a requeued job, a re-run)."""
    from odelab.utils.checkpoint import check_checkpoint, find_resume_checkpoint

    if cfg.get("ckpt_path"):
        check_checkpoint(cfg.ckpt_path)
        return str(cfg.ckpt_path)
    if not cfg.get("auto_resume", True):
        return None
    path = find_resume_checkpoint(out)
    if path:
        log.info("auto_resume: resuming from %s", path)
    return path


def in_memory_ckpt(trainer) -> str | None:
    """The ``ckpt_path`` that tests the weights in memory: ``None``, unless Lightning would load
    a SLURM ``hpc_ckpt`` for ``None``; then those weights saved as ``final.ckpt`` beside the
    other checkpoints (``last.ckpt`` is written at the end of the training epoch, before the
    final validation: ``final.ckpt`` is exactly what is in memory)."""
    from odelab.utils.checkpoint import hpc_checkpoints

    if not hpc_checkpoints(trainer.default_root_dir):
        return None
    ckpt = trainer.checkpoint_callback
    folder = Path(ckpt.dirpath) if ckpt is not None and ckpt.dirpath else Path(
        trainer.default_root_dir)  # fmt: skip
    path = str(folder / "final.ckpt")
    trainer.save_checkpoint(path)
    return path


def ckpt_to_test(cfg: DictConfig, trainer) -> str | None:
    """``test_ckpt``: ``best`` (the monitored best), ``last`` (final weights) or a path. The best
    checkpoint is a file of this run's checkpoint dir, never another directory's."""
    from odelab.utils.checkpoint import in_dir

    choice = cfg.get("test_ckpt", "best")
    if not cfg.get("train", True):
        return cfg.get("ckpt_path")
    if choice == "last":
        return in_memory_ckpt(trainer)  # the weights in memory are the final epoch's
    if choice == "best":
        ckpt = trainer.checkpoint_callback
        path = getattr(ckpt, "best_model_path", "") if ckpt else ""
        if path and ckpt.dirpath and not in_dir(path, ckpt.dirpath):
            log.warning("best checkpoint %s is not a file of %s; testing last", path, ckpt.dirpath)
            return in_memory_ckpt(trainer)
        if not path:
            log.warning("no best checkpoint (checkpointing off, e.g. fast_dev_run); testing last")
            return in_memory_ckpt(trainer)
        return in_dir(path, ckpt.dirpath) if ckpt.dirpath else path
    return choice


def keep_previous(path: Path) -> Path | None:
    """Rename a record at ``path`` to ``<stem>.<its mtime>.json`` (a superseded record: the
    report skips it), so a newer one can take its place and nothing is lost; the new name."""
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    backup = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    os.replace(path, backup)
    log.info("earlier results kept as %s", backup)
    return backup


# -- the record's contents -----------------------------------------------------------------
def load_reference(reference_file: str | os.PathLike | None, experiment: str) -> dict:
    """The paper's numbers for ``experiment`` in a ``reference.yaml`` ({} where none)."""
    if not reference_file or not Path(reference_file).is_file():
        return {}
    with open(reference_file) as f:
        data = yaml.safe_load(f) or {}
    return dict((data.get("settings") or {}).get(experiment, {}).get("metrics", {}) or {})


def number(v: Any) -> float | None:
    """``v`` as a finite float (a one-element tensor too); ``None`` otherwise."""
    import torch

    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            return None
        v = v.item()
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def interruption(exception: BaseException) -> str | None:
    """``"SIGTERM"`` / ``"SIGINT"`` when ``exception`` is how Lightning stops on that signal."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(exception, SIGTERMException):
        return "SIGTERM"
    if isinstance(exception, KeyboardInterrupt):
        return "SIGINT"
    return None


def resume_point(trainer, exception: BaseException, run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint a restart in ``run_dir`` resumes (saved now for a SIGTERM during fit),
    with its epoch and step."""
    from odelab.callbacks.control import PreemptionCheckpoint
    from odelab.utils.checkpoint import checkpoint_position, resume_candidates

    for cb in trainer.callbacks:
        if isinstance(cb, PreemptionCheckpoint):
            try:
                cb.save_for(trainer, exception)
            except Exception as e:
                log.error("could not save a checkpoint at the interruption: %s", e)
    for path in resume_candidates(run_dir):
        pos = checkpoint_position(path)
        if pos is not None:
            return pos
    return None


def reference_rows(reference: dict, metrics: dict[str, float]) -> list[dict[str, Any]]:
    """One row per reference metric (and per test metric without one): ours vs the paper."""
    names = list(reference) + [k for k in sorted(metrics) if k.startswith("test/")
                               and k not in reference]  # fmt: skip
    rows = []
    for name in names:
        ref = reference.get(name, {})
        ours, paper = metrics.get(name), number(ref.get("value"))
        delta = ours - paper if ours is not None and paper is not None else None
        rows.append(dict(metric=name, ours=ours, paper=paper, delta=delta,
                         flag=ref.get("flag"), source=ref.get("source")))  # fmt: skip
    return rows
