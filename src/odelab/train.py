"""compose -> instantiate -> fit -> test: the one path every run takes.

This module never knows which paper it runs: everything paper-specific is config.
"""

from __future__ import annotations

import logging
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
    """Train and test as ``cfg`` says; return the monitored metric (for sweeps)."""
    import lightning.pytorch as pl

    from odelab.callbacks.speed import check_speed_config

    check_speed_config(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
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
        for lg in objs["loggers"]:
            lg.log_hyperparams(resolved)
        score = None
        if cfg.get("train", True):
            trainer.fit(model, datamodule=dm, ckpt_path=_resume_ckpt(cfg, out))
            ckpt = trainer.checkpoint_callback
            best = getattr(ckpt, "best_model_score", None) if ckpt else None
            score = float(best) if best is not None else _metric(trainer, cfg.monitor)
        if cfg.get("test", True):
            trainer.test(model, datamodule=dm, ckpt_path=_test_ckpt(cfg, trainer))
            if score is None:
                score = _metric(trainer, cfg.monitor)
        log.info("done in %.1f s; outputs in %s", time.perf_counter() - t0, out)
        ok = True
        return score
    except Exception:
        log.exception("run failed; outputs so far are in %s", out)
        raise
    finally:
        finish_wandb(exit_code=0 if ok else 1)  # W&B marks a failed run failed


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
    a SLURM ``hpc_ckpt`` for ``None`` (then ``last.ckpt``, saved at the end of fit)."""
    from odelab.utils.checkpoint import hpc_checkpoints

    if not hpc_checkpoints(trainer.default_root_dir):
        return None
    ckpt = trainer.checkpoint_callback
    last = Path(ckpt.dirpath) / "last.ckpt" if ckpt is not None and ckpt.dirpath else None
    return str(last) if last is not None and last.is_file() else None


def _test_ckpt(cfg: DictConfig, trainer) -> str | None:
    """``test_ckpt``: ``best`` (the monitored best), ``last`` (final weights) or a path."""
    choice = cfg.get("test_ckpt", "best")
    if not cfg.get("train", True):
        return cfg.get("ckpt_path")
    if choice == "last":
        return _in_memory(trainer)  # the weights in memory are the final epoch's
    if choice == "best":
        ckpt = trainer.checkpoint_callback
        path = getattr(ckpt, "best_model_path", "") if ckpt else ""
        if not path:
            log.warning("no best checkpoint (checkpointing off, e.g. fast_dev_run); testing last")
            return _in_memory(trainer)
        return path
    return choice


@hydra.main(
    version_base="1.3",
    config_path=str(Path(__file__).resolve().parents[2] / "conf"),
    config_name="config",
)
def main(cfg: DictConfig) -> float | None:
    if cfg.get("print_config"):
        log.info("\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    return run(cfg)
