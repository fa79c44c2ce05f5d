"""compose -> instantiate -> fit -> test: the one path every run takes.

This module never knows which paper it runs: everything paper-specific is config.
"""

from __future__ import annotations

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
from odelab.utils.config import CONFIG_DIR, register_resolvers, to_container
from odelab.utils.errors import ReportedError, exit_code, storage_error, to_log_file
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
    from odelab.utils.record import (
        ckpt_to_test,
        finished_record,
        recorded_score,
        resume_ckpt,
        retest_ckpt,
    )

    previous = finished_record(out, cfg)
    if previous is not None and not cfg.get("retest", False):
        log.info(
            "%s holds a finished run of this config (results.json, %s): not training or testing "
            "it again. retest=true tests its weights again; another output dir trains anew",
            out,
            previous.get("git_commit"),
        )
        return recorded_score(previous, cfg)
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
            ckpt_path = retest_ckpt(cfg, out, previous)
            log.info("retest: testing %s again", ckpt_path)
            trainer.test(model, datamodule=dm, ckpt_path=ckpt_path)
            score = recorded_score(previous, cfg)
        elif cfg.get("train", True):
            trainer.fit(model, datamodule=dm, ckpt_path=resume_ckpt(cfg, out))
            ckpt = trainer.checkpoint_callback
            best = getattr(ckpt, "best_model_score", None) if ckpt else None
            score = float(best) if best is not None else _metric(trainer, cfg.monitor)
        if cfg.get("test", True) and previous is None:
            trainer.test(model, datamodule=dm, ckpt_path=ckpt_to_test(cfg, trainer))
            if score is None:
                score = _metric(trainer, cfg.monitor)
        log.info("done in %.1f s; outputs in %s", time.perf_counter() - t0, out)
        ok = True
        return score
    except SystemExit as e:  # Lightning's way out on SIGTERM (and after Ctrl-C)
        code = exit_code(e, objs.get("trainer"))
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


@hydra.main(
    version_base="1.3",
    config_path=str(CONFIG_DIR),
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
        to_log_file(log, f"error: {e}")
        raise ReportedError(f"error: {e}") from e
