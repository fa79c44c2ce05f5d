"""Weights & Biases, for training and for the report: the environment, starting a run (falling
back to offline), the results table, and finishing. W&B never turns a result into a crash.

Runs are offline unless an API key is set (``WANDB_API_KEY`` or ``wandb login``). Training logs
through :class:`WandbLogger` (Lightning's, built on first use so that importing this module does
not import Lightning); ``odelab.report`` starts its summary runs through :func:`start` too.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import netrc
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def has_credentials() -> bool:
    """An API key in the environment or in ``~/.netrc`` (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def configure_env() -> str:
    """Default W&B to offline when no API key is set; never prompt. Returns the mode in force."""
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    os.environ.setdefault("WANDB_INIT_TIMEOUT", "20")  # then fall back to offline
    if "WANDB_MODE" not in os.environ and not has_credentials():
        os.environ["WANDB_MODE"] = "offline"
    return os.environ.get("WANDB_MODE", "online")


def start(make: Callable[[bool], T], what: str = "W&B run") -> T | None:
    """``make(offline)``: a started W&B run (``wandb.init``, or a logger whose run is started),
    as configured, then offline when that fails (server unreachable, init timeout); ``None``
    with a warning when offline fails too."""
    mode = configure_env()
    for offline in (False, True):
        try:
            return make(offline)
        except Exception as e:
            if offline:
                log.warning("%s: offline failed too (%s); continuing without W&B", what, e)
                return None
            log.warning("%s could not start (%s: %s); continuing offline", what, mode, e)
            os.environ["WANDB_MODE"] = "offline"
            finish(exit_code=1, teardown=True)  # the next init starts a fresh session
    return None


def start_logger(instantiate: Callable[..., Any], save_dir: str | os.PathLike = ".") -> Any:
    """A Lightning W&B logger whose run is started: ``instantiate(**overrides)`` builds it from
    its config node (``offline=True`` for the fallback); ``None`` when W&B cannot start."""
    Path(save_dir).mkdir(parents=True, exist_ok=True)

    def make(offline: bool):
        logger = instantiate(offline=True) if offline else instantiate()
        _ = logger.experiment  # start the run now, inside the guard
        return logger

    return start(make, "W&B logger")


def finish(exit_code: int = 0, teardown: bool = False) -> None:
    """Finish the open W&B run (``exit_code`` != 0 marks it failed); ``teardown`` also ends the
    session, so that the next run starts fresh.

    When the W&B service is gone (SLURM's SIGTERM reaches every process of the job) this is one
    warning line: the session is torn down here, which also drops W&B's own atexit hook that
    would print a traceback of the lost connection at exit.
    """
    if "wandb" not in sys.modules:
        return
    import wandb

    try:
        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)
        if teardown:
            wandb.teardown()
    except Exception as e:
        with contextlib.suppress(Exception):  # drops the atexit hook, then fails the same way
            wandb.teardown()
        log.warning(
            "W&B could not finish the run (%s: %s); results.json and checkpoints are "
            "unaffected (`wandb sync` uploads what the offline run holds)",
            type(e).__name__,
            e,
        )


def log_results_table(loggers: list, rows: list[dict[str, Any]]) -> None:
    """The paper-vs-ours rows as the W&B table ``results/table`` and ``final/<metric>`` summary
    values, on every W&B logger of the run."""
    from lightning.pytorch.loggers import WandbLogger as _WandbLogger

    cols = ["metric", "ours", "paper", "delta", "flag", "source"]
    for logger in loggers:
        if not isinstance(logger, _WandbLogger):
            continue
        try:
            import wandb

            table = wandb.Table(columns=cols)
            for r in rows:
                table.add_data(*[r[c] for c in cols])
            logger.experiment.log({"results/table": table})
            for r in rows:
                if r["ours"] is not None:
                    logger.experiment.summary[f"final/{r['metric']}"] = r["ours"]
        except Exception as e:  # W&B must never break a finished run
            log.warning("could not log the results table to W&B: %s", e)


def _guarded(method):
    """Run ``method``; after the first W&B failure warn once and skip every later W&B call."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self._wandb_broken:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            self._wandb_broken = True
            log.warning(
                "W&B failed (%s: %s); no more W&B logging in this run "
                "(results.json and checkpoints are unaffected)",
                type(e).__name__,
                e,
            )
            return None

    return wrapper


@functools.cache
def _logger_class() -> type:
    from lightning.pytorch.loggers import WandbLogger as _WandbLogger

    class WandbLogger(_WandbLogger):
        """``lightning.pytorch.loggers.WandbLogger`` whose logging calls never raise.

        On preemption SLURM sends SIGTERM to every process of the job, the W&B service
        included: it exits at once, and the metrics the run logs while it checkpoints and stops
        would raise (``ConnectionResetError``) and turn a clean preemption into a crash without
        a checkpoint. Here the first failure is a warning and W&B is off for the rest of this
        attempt; the requeued attempt continues the same W&B run (same id, ``resume: allow``).
        """

        _wandb_broken = False

        log_metrics = _guarded(_WandbLogger.log_metrics)
        log_hyperparams = _guarded(_WandbLogger.log_hyperparams)
        after_save_checkpoint = _guarded(_WandbLogger.after_save_checkpoint)
        finalize = _guarded(_WandbLogger.finalize)

    WandbLogger.__module__ = __name__
    WandbLogger.__qualname__ = "WandbLogger"
    return WandbLogger


def __getattr__(name: str):
    if name == "WandbLogger":  # ``_target_: odelab.utils.wandb.WandbLogger``
        return _logger_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
