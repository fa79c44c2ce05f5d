"""compose -> instantiate -> fit -> test: the one path every run takes.

This module never knows which paper it runs: everything paper-specific is config.
"""

from __future__ import annotations

import json
import logging
import signal
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

# torch/lightning are imported inside the functions that need them: `run.py --help` and config
# errors answer in about a second instead of after the ~5-15 s import of lightning (startup.py)
from odelab.utils.config import register_resolvers, to_container
from odelab.utils.errors import ReportedError, storage_error
from odelab.utils.wandb import finish as finish_wandb
from odelab.utils.wandb import start_logger

log = logging.getLogger("odelab.train")
register_resolvers()
# lightning 2.6 on torch 2.13 warns about torch's own pytree API once per fit: noise, not news
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def instantiate_all(cfg: DictConfig) -> dict[str, Any]:
    """Build datamodule, LightningModule, callbacks, loggers and Trainer from ``cfg``."""
    objects: dict[str, Any] = {}
    objects["datamodule"] = hydra.utils.instantiate(cfg.data)
    objects["model"] = hydra.utils.instantiate(cfg.model)
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is not None and "_target_" in node:
            callbacks.append(hydra.utils.instantiate(node))
        elif node is not None:
            raise ValueError(f"callbacks.{name} has no _target_; every callback node needs one")
    if cfg.get("speed") is not None:  # compile / channels_last: every experiment, any callbacks
        callbacks.append(hydra.utils.instantiate(cfg.speed))
    objects["callbacks"] = callbacks
    objects["loggers"] = _loggers(cfg)
    objects["trainer"] = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=objects["loggers"] or False
    )
    return objects


def _loggers(cfg: DictConfig) -> list:
    """Instantiate loggers; a W&B logger that cannot start falls back to offline, never crashes."""
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None or "_target_" not in node:
            continue
        if "wandb" in node._target_.lower():
            logger = start_logger(
                partial(hydra.utils.instantiate, node), node.get("save_dir", ".")
            )
            if logger is None:
                continue
            loggers.append(logger)
        else:
            loggers.append(hydra.utils.instantiate(node))
        log.info("logger %s: %s", name, type(loggers[-1]).__name__)
    return loggers


def _metric(trainer, name: str) -> float | None:
    v = trainer.callback_metrics.get(name)
    return None if v is None else float(v)


def run(cfg: DictConfig) -> float | None:
    """Train and test as ``cfg`` says; return the monitored metric (for sweeps).

    The output dir is held by a lock for the run's duration (a second run there stops). A run
    whose dir already holds a finished record of the same config is not trained or tested
    again (``retest=true`` tests its weights again, keeping the training record).
    """
    from odelab.utils.runlock import run_lock
    from odelab.utils.slurm import use_allocated_cpus

    use_allocated_cpus()  # threads = the CPUs SLURM allocated, on every launch path
    out = Path(cfg.paths.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        clear = storage_error(e, out)
        if clear is None:
            raise
        raise clear from e
    with run_lock(out):
        return _run_in(cfg, out)


def _run_in(cfg: DictConfig, out: Path) -> float | None:
    import lightning.pytorch as pl

    from odelab.callbacks.speed import check_speed_config

    previous = finished_record(out, cfg)
    if previous is not None and not cfg.get("retest", False):
        log.info(
            "%s holds a finished run of this config (results.json, %s): not training or testing "
            "it again. retest=true tests its weights again; another output dir trains anew",
            out,
            previous.get("git_commit"),
        )
        return _recorded_score(previous, cfg)
    check_speed_config(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    t0 = time.perf_counter()
    objs: dict[str, Any] = {}
    ok = False
    try:
        objs = instantiate_all(cfg)
        trainer, model, dm = objs["trainer"], objs["model"], objs["datamodule"]
        resolved = to_container(cfg)
        for cb in objs["callbacks"]:
            if hasattr(cb, "on_run_config"):
                cb.on_run_config(resolved)
            if previous is not None and hasattr(cb, "restore_record"):
                cb.restore_record(previous)
        for lg in objs["loggers"]:
            lg.log_hyperparams(resolved)
        score = None
        if previous is not None:  # retest=true on a finished run: its weights, tested again
            ckpt_path = _retest_ckpt(cfg, out, previous)
            log.info("retest: testing %s again", ckpt_path)
            trainer.test(model, datamodule=dm, ckpt_path=ckpt_path)
            score = _recorded_score(previous, cfg)
        elif cfg.get("train", True):
            trainer.fit(model, datamodule=dm, ckpt_path=_resume_ckpt(cfg, out))
            ckpt = trainer.checkpoint_callback
            best = getattr(ckpt, "best_model_score", None) if ckpt else None
            score = float(best) if best is not None else _metric(trainer, cfg.monitor)
        if cfg.get("test", True) and previous is None:
            trainer.test(model, datamodule=dm, ckpt_path=_test_ckpt(cfg, trainer))
            if score is None:
                score = _metric(trainer, cfg.monitor)
        log.info("done in %.1f s; outputs in %s", time.perf_counter() - t0, out)
        ok = True
        return score
    except SystemExit as e:  # Lightning's way out on SIGTERM (and after Ctrl-C)
        code = _exit_code(e, objs.get("trainer"))
        log.warning("run interrupted (exit %d); a restart in %s resumes it", code, out)
        raise SystemExit(code) from e
    except KeyboardInterrupt:
        log.warning("run interrupted (Ctrl-C); a restart in %s resumes it", out)
        raise SystemExit(128 + signal.SIGINT) from None
    except Exception as e:
        # one line here and in run.log; the caller prints the error (and Hydra the traceback
        # of an unexpected one) once
        log.error("run failed (%s); outputs so far are in %s", type(e).__name__, out)
        raise
    finally:
        finish_wandb(exit_code=0 if ok else 1)  # W&B marks a failed run failed


def _exit_code(exit_: SystemExit, trainer) -> int:
    """128 + the signal for a run stopped by SIGTERM (143) or SIGINT (130), so that shells,
    ``sacct`` and Hydra sweeps see an unfinished run; an explicit code is kept."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(exit_, SIGTERMException) or getattr(trainer, "received_sigterm", False):
        return 128 + signal.SIGTERM
    if trainer is not None and getattr(trainer, "interrupted", False):
        return 128 + signal.SIGINT  # Lightning turns Ctrl-C into sys.exit(1)
    code = exit_.code
    return code if isinstance(code, int) and code != 0 else 1


# Keys a finished run may be re-run with and still be the same run: how it is managed and
# where things live (the report's run-local keys), but not the seed.
_RERUN_FREE = ("auto_resume", "retest", "ckpt_path", "print_config")


def _comparable(config: dict) -> dict:
    import fnmatch

    from odelab.report.table import RUN_LOCAL_KEYS, _flatten

    patterns = [p for p in (*RUN_LOCAL_KEYS, *_RERUN_FREE) if p not in ("seed", "*.seed")]
    flat = _flatten(json.loads(json.dumps(config, default=str)))
    return {
        k: v
        for k, v in flat.items()
        if not any(fnmatch.fnmatchcase(k, p) or fnmatch.fnmatchcase(k, p + ".*") for p in patterns)
    }


def finished_record(out: Path, cfg: DictConfig) -> dict | None:
    """``out/results.json`` when it records a finished run of the same config (up to
    :data:`_RERUN_FREE` and where files live); else ``None``."""
    try:
        record = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") != "finished":
        return None
    if not isinstance(record.get("config"), dict):
        return None
    return record if _comparable(record["config"]) == _comparable(to_container(cfg)) else None


def _recorded_score(record: dict, cfg: DictConfig) -> float | None:
    best = record.get("best_model_score")
    if best is not None:
        return float(best)
    value = (record.get("metrics") or {}).get(cfg.get("monitor"))
    return None if value is None else float(value)


def _retest_ckpt(cfg: DictConfig, out: Path, record: dict) -> str:
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


def _resume_ckpt(cfg: DictConfig, out: Path) -> str | None:
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


def _in_memory(trainer) -> str | None:
    """The ``ckpt_path`` that tests the weights in memory: ``None``, unless Lightning would load
    a SLURM ``hpc_ckpt`` for ``None``; then those weights saved as ``final.ckpt`` beside the
    other checkpoints (``last.ckpt`` is not it: Lightning 2.x rewrites it only together with a
    new top-k checkpoint, so it may predate the final epoch)."""
    from odelab.utils.checkpoint import hpc_checkpoints

    if not hpc_checkpoints(trainer.default_root_dir):
        return None
    ckpt = trainer.checkpoint_callback
    folder = Path(ckpt.dirpath) if ckpt is not None and ckpt.dirpath else Path(
        trainer.default_root_dir)  # fmt: skip
    path = str(folder / "final.ckpt")
    trainer.save_checkpoint(path)
    return path


def _test_ckpt(cfg: DictConfig, trainer) -> str | None:
    """``test_ckpt``: ``best`` (the monitored best), ``last`` (final weights) or a path. The best
    checkpoint is a file of this run's checkpoint dir, never another directory's."""
    from odelab.utils.checkpoint import in_dir

    choice = cfg.get("test_ckpt", "best")
    if not cfg.get("train", True):
        return cfg.get("ckpt_path")
    if choice == "last":
        return _in_memory(trainer)  # the weights in memory are the final epoch's
    if choice == "best":
        ckpt = trainer.checkpoint_callback
        path = getattr(ckpt, "best_model_path", "") if ckpt else ""
        if path and ckpt.dirpath and not in_dir(path, ckpt.dirpath):
            log.warning("best checkpoint %s is not a file of %s; testing last", path, ckpt.dirpath)
            return _in_memory(trainer)
        if not path:
            log.warning("no best checkpoint (checkpointing off, e.g. fast_dev_run); testing last")
            return _in_memory(trainer)
        return in_dir(path, ckpt.dirpath) if ckpt.dirpath else path
    return choice


def _to_log_file(message: str) -> None:
    """``message`` into the run's log file (run.log) only: the console gets it from Hydra."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@hydra.main(
    version_base="1.3",
    config_path=str(Path(__file__).resolve().parents[2] / "conf"),
    config_name="config",
)
def main(cfg: DictConfig) -> float | None:
    """``run.py``'s task: :func:`run`; an error the user can fix (config, data, checkpoint,
    disk, lock) is printed as its message alone. Exit status: 0 finished (or already finished),
    1 failed, 130 Ctrl-C, 143 SIGTERM (after saving a checkpoint)."""
    from odelab.preflight import is_user_error

    if cfg.get("print_config"):
        log.info("\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        return run(cfg)
    except Exception as e:
        if not is_user_error(e):
            raise
        _to_log_file(f"error: {e}")
        raise ReportedError(f"error: {e}") from e
