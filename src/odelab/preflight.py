"""Preflight: every run, and every point of a sweep, checked before any work or submission.

What is checked, in seconds and without loading data or starting W&B:

- types and ranges of the keys every run has (``seed``, ``trainer.*``, ``data`` sizes,
  ``monitor``/``mode``, ``test_ckpt``), and combinations that cannot be right (``test_ckpt=best``
  where validation runs on the test split);
- every ``_target_`` node takes the keys the config gives it (a typo in an experiment file is an
  error naming the key, not silently dropped);
- ``ckpt_path`` (and a ``test_ckpt`` path) is a readable Lightning checkpoint;
- the data the datamodule will read is there and readable (:mod:`odelab.data.check`: existence,
  size and format magic; no md5);
- the output directory can be written and no live run holds it;
- under ``hydra/launcher=slurm``: the GPUs the job asks for exist in the partition.

All problems come in one message, each naming the key, the value, what is allowed and the fix;
no traceback (``HYDRA_FULL_ERROR=1`` adds it). ``python run.py`` runs it through the Hydra
callback :class:`Preflight` (``conf/hydra/default.yaml``): before a run's output dir is made,
and for ``-m`` on every point of the sweep in the launching process, before any job starts or is
submitted. ``python -m odelab.utils.slurm check`` runs it for a sweep table (``slurm/sweep.sh``).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from odelab.utils.errors import ConfigError

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = (
    "32-true", "32", 32, "16-mixed", "16", 16, "bf16-mixed", "bf16", "16-true", "bf16-true",
    "64-true", "64", 64, "transformer-engine", "transformer-engine-float16",
)  # fmt: skip
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


class PreflightError(ConfigError):
    """Everything the preflight found, one problem per line."""

    def __init__(
        self,
        problems: list[str],
        header: str = "preflight",
        causes: list[BaseException] | None = None,
    ):
        self.problems, self.causes = problems, list(causes or [])
        n = len(problems)
        lines = "\n".join("  - " + p.replace("\n", "\n    ") for p in problems)
        super().__init__(f"{header}: {n} problem{'s' if n > 1 else ''}, nothing was run:\n{lines}")
        if self.causes:
            self.__cause__ = self.causes[0]


# -- values -----------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(lo: int | None = None, none: bool = False, extra: str = "") -> Callable:
    def check(v: Any) -> str | None:
        if v is None and none:
            return None
        if not _is_int(v) or (lo is not None and v < lo):
            bound = f" >= {lo}" if lo is not None else ""
            return f"use an integer{bound}{' or null' if none else ''}{extra}"
        return None

    return check


def _bool(none: bool = False) -> Callable:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or (none and v is None):
            return None
        return "use true or false" + (" (or null)" if none else "")

    return check


def _one_of(*allowed: Any, none: bool = False) -> Callable:
    def check(v: Any) -> str | None:
        if (none and v is None) or v in allowed:
            return None
        return f"use one of {', '.join(str(a) for a in allowed)}" + (" or null" if none else "")

    return check


def _batches(v: Any) -> str | None:
    """limit_*_batches / overfit_batches: a count or a fraction."""
    if v is None or _is_int(v) and v >= 0 or _num(v) and 0.0 <= v <= 1.0:
        return None
    return "use a number of batches (integer >= 0) or a fraction in [0, 1]"


def _devices(v: Any) -> str | None:
    if v == "auto" or _is_int(v) and (v >= 1 or v == -1):
        return None
    if isinstance(v, list) and v and all(_is_int(d) and d >= 0 for d in v):
        return None
    if isinstance(v, str) and v.replace(",", "").strip().isdigit():
        return None
    return "use a number of devices >= 1, a list of device ids, or auto"


def _nonneg_number(v: Any) -> str | None:
    return None if v is None or _num(v) and v >= 0 else "use a number >= 0 or null"


def _fast_dev_run(v: Any) -> str | None:
    return None if isinstance(v, bool) or _is_int(v) and v >= 0 else "use true, false or a count"


def _deterministic(v: Any) -> str | None:
    return None if v is None or isinstance(v, bool) or v == "warn" else "use true, false or warn"


def _monitor(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "name a logged metric, e.g. val/acc"


CHECKS: dict[str, Callable[[Any], str | None]] = {
    "seed": _int(0, none=True, extra=" (seed=0 is a seed like any other)"),
    "monitor": _monitor,
    "mode": _one_of("min", "max"),
    "train": _bool(),
    "test": _bool(),
    "auto_resume": _bool(),
    "retest": _bool(),
    "print_config": _bool(),
    "trainer.max_epochs": _int(-1, none=True, extra=" (-1: no limit)"),
    "trainer.min_epochs": _int(0, none=True),
    "trainer.max_steps": _int(-1, extra=" (-1: no limit)"),
    "trainer.devices": _devices,
    "trainer.num_nodes": _int(1),
    "trainer.accelerator": _one_of(*ACCELERATORS),
    "trainer.precision": _one_of(*PRECISIONS),
    "trainer.check_val_every_n_epoch": _int(1, none=True),
    "trainer.log_every_n_steps": _int(0, none=True),
    "trainer.accumulate_grad_batches": _int(1),
    "trainer.num_sanity_val_steps": _int(-1, none=True),
    "trainer.gradient_clip_val": _nonneg_number,
    "trainer.fast_dev_run": _fast_dev_run,
    "trainer.deterministic": _deterministic,
    "trainer.benchmark": _bool(none=True),
    "trainer.inference_mode": _bool(),
    "trainer.enable_checkpointing": _bool(none=True),
    "trainer.enable_progress_bar": _bool(none=True),
    "trainer.enable_model_summary": _bool(none=True),
    "trainer.limit_train_batches": _batches,
    "trainer.limit_val_batches": _batches,
    "trainer.limit_test_batches": _batches,
    "trainer.overfit_batches": _batches,
    "data.batch_size": _int(1),
    "data.eval_batch_size": _int(1, none=True),
    "data.num_workers": _int(0),
    "data.pin_memory": _bool(),
    "data.val_size": _int(0),
    "data.train_subset": _int(1, none=True),
    "data.test_subset": _int(1, none=True),
    "data.val_subset": _int(1, none=True),
    "data.eval_subset": _int(1, none=True),
}


def _select(cfg: DictConfig, key: str) -> tuple[bool, Any, str | None]:
    """(present, value, error resolving it)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig) or leaf not in node:
        return False, None, None
    try:
        return True, OmegaConf.select(cfg, key, throw_on_missing=True), None
    except Exception as e:
        return True, None, f"{type(e).__name__}: {e}"


def check_values(cfg: DictConfig) -> list[str]:
    """Type and range of the common keys; ``test_ckpt`` against the validation split."""
    problems = []
    for key, check in CHECKS.items():
        present, value, err = _select(cfg, key)
        if not present:
            continue
        why = err or check(value)
        if why:
            problems.append(f"{key}={value!r} is invalid: {why}")
    if "paper" not in cfg or OmegaConf.is_missing(cfg, "paper"):
        problems.append(
            "paper is not set: choose an experiment (experiment=<name>; --help lists them)"
        )
    present, val_size, _ = _select(cfg, "data.val_size")
    if present and val_size == 0 and cfg.get("test_ckpt", "best") == "best" and cfg.get("test"):
        problems.append(
            "test_ckpt=best with data.val_size=0: validation then runs on the test split, so "
            "'best' would pick the weights by their test score; set test_ckpt=last (the paper "
            "recipes' choice) or hold out a validation split (data.val_size=<images>)"
        )
    return problems


def check_checkpoints(cfg: DictConfig, causes: list | None = None) -> list[str]:
    """``ckpt_path`` and a ``test_ckpt`` path are readable Lightning checkpoints."""
    from odelab.utils.checkpoint import CheckpointError, check_checkpoint

    problems = []
    for key in ("ckpt_path", "test_ckpt"):
        value = cfg.get(key)
        if not value or (key == "test_ckpt" and value in ("best", "last")):
            continue
        try:
            check_checkpoint(value)
        except CheckpointError as e:
            problems.append(f"{key}={value}: {e}")
            if causes is not None:
                causes.append(e)
    return problems


# -- the keys each _target_ takes ---------------------------------------------------------------
@functools.cache
def accepted_keys(target: str) -> frozenset[str] | None:
    """The keyword arguments ``target`` takes; ``None`` when it takes any (``**kwargs`` that do
    not lead to an odelab base class). An odelab class's ``**kwargs`` are taken to go to its
    base class, whose arguments are added."""
    from hydra._internal.utils import _locate

    obj = _locate(target)
    if not inspect.isclass(obj):
        return _params(obj)
    names: set[str] = set()
    for cls in obj.__mro__:
        if "__init__" not in cls.__dict__:
            continue
        params = _params(cls.__dict__["__init__"])
        if params is not None:
            return frozenset(names | params)
        names |= _named(cls.__dict__["__init__"])
        if not cls.__module__.startswith("odelab."):
            return None
    return frozenset(names)


def _named(fn) -> set[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds} - {
        "self"
    }


def _params(fn) -> frozenset[str] | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return frozenset(_named(fn))


def _target_nodes(node: Any, path: str = "") -> Iterable[tuple[str, dict]]:
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str) and "${" not in node["_target_"]:
            yield path, node
        for k, v in node.items():
            if path == "" and k == "hydra":
                continue
            yield from _target_nodes(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _target_nodes(v, f"{path}[{i}]")


def check_targets(cfg: DictConfig) -> list[str]:
    """Every ``_target_`` node gives its target only keys it takes."""
    problems = []
    tree = OmegaConf.to_container(cfg, resolve=False)
    for path, node in _target_nodes(tree):
        target = node["_target_"]
        try:
            keys = accepted_keys(target)
        except Exception as e:
            problems.append(
                f"{path}._target_={target}: cannot be imported ({type(e).__name__}: {e})"
            )
            continue
        if keys is None:
            continue
        name = target.rsplit(".", 1)[-1]
        for key in node:
            if key in HYDRA_KEYS or key in keys:
                continue
            close = difflib.get_close_matches(str(key), sorted(keys), n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            problems.append(
                f"{path}.{key}={_short(node[key])}: {name} takes no argument '{key}'; {hint}"
                f"its arguments: {', '.join(sorted(keys))}. Remove the key or fix its name"
            )
    return problems


def _short(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s if len(s) <= 40 else s[:37] + "..."


# -- data and outputs ---------------------------------------------------------------------------
def check_data(
    cfg: DictConfig, seen: dict[str, list[str]] | None = None, causes: list | None = None
) -> list[str]:
    """The datamodule's arguments are accepted and the data it will read is there."""
    import hydra

    from odelab.data.check import check_datamodule
    from odelab.data.errors import DatasetError

    if "data" not in cfg or not isinstance(cfg.data, DictConfig) or "_target_" not in cfg.data:
        return []
    try:
        key = json.dumps(
            OmegaConf.to_container(cfg.data, resolve=True), sort_keys=True, default=str
        )
    except Exception as e:
        return [f"data: cannot be resolved ({type(e).__name__}: {e})"]
    if seen is not None and key in seen:
        return seen[key]
    problems: list[str] = []
    try:
        dm = hydra.utils.instantiate(cfg.data)
        check_datamodule(dm)
    except DatasetError as e:
        problems.append(f"data: {e}")
        if causes is not None:
            causes.append(e)
    except Exception as e:
        cause = e.__cause__ or e  # Hydra wraps the constructor's error
        problems.append(f"data ({cfg.data._target_}): {type(cause).__name__}: {cause}")
        if causes is not None:
            causes.append(e)
    if seen is not None:
        seen[key] = problems
    return problems


def check_output_dir(path: str | os.PathLike, lock: bool = True) -> list[str]:
    """The run can write ``path`` and no live run holds it."""
    from odelab.utils.errors import writable_dir_problem
    from odelab.utils.runlock import LOCK_NAME, _describe, _read, _stale

    why = writable_dir_problem(path)
    if why:
        return [f"output dir: {why}; set hydra.run.dir=... (or paths.log_dir=...) elsewhere"]
    lockfile = Path(path) / LOCK_NAME
    if lock and lockfile.is_file():
        holder = _read(lockfile)
        if holder and _stale(holder) is None:
            return [
                f"output dir {path} is in use by the run of {_describe(holder)}; wait for it or "
                f"use another hydra.run.dir (delete {lockfile} if that run is dead)"
            ]
    return []


def check_cluster(cfg: DictConfig) -> list[str]:
    """Under the SLURM launcher: the partition has the GPUs the job requests."""
    from odelab.utils.slurm import cluster_gpus

    launcher = OmegaConf.select(cfg, "hydra.launcher")
    if not isinstance(launcher, DictConfig) or "Slurm" not in str(launcher.get("_target_", "")):
        return []
    try:
        want = launcher.gpus_per_node
    except Exception as e:
        return [f"hydra.launcher.gpus_per_node: {e}"]
    partition = launcher.get("partition")
    have = cluster_gpus(partition)
    if want and have == 0:
        where = f"partition {partition}" if partition else "the default partition"
        return [
            f"trainer.accelerator={cfg.trainer.accelerator} asks SLURM for {want} GPU(s) per "
            f"node, but {where} has none (sinfo): add trainer=cpu (or pick a GPU partition, "
            "hydra.launcher.partition=...)"
        ]
    return []


def check_run(
    cfg: DictConfig,
    *,
    data: bool = True,
    local: bool = True,
    output_dir: str | os.PathLike | None = None,
    seen: dict | None = None,
    causes: list | None = None,
) -> list[str]:
    """Every problem of one composed run config (``local``: it runs in this process);
    ``causes`` collects the exceptions behind them."""
    problems = check_values(cfg) + check_targets(cfg) + check_checkpoints(cfg, causes)
    if local:
        from odelab.callbacks.speed import check_speed_config

        try:
            check_speed_config(cfg)
        except ValueError as e:
            problems.append(str(e))
    if data and not problems:  # a bad value would only come back as the datamodule's error
        problems += check_data(cfg, seen, causes)
    if output_dir is not None:
        from odelab.utils.runlock import is_rank_zero

        # the other ranks of a DDP run share rank 0's dir (and its lock)
        problems += check_output_dir(output_dir, lock=is_rank_zero())
    return problems


def preflight(cfg: DictConfig, **kwargs: Any) -> None:
    """Raise :class:`PreflightError` listing every problem of ``cfg`` (see :func:`check_run`)."""
    causes: list[BaseException] = []
    problems = check_run(cfg, causes=causes, **kwargs)
    if problems:
        raise PreflightError(problems, causes=causes)


# -- sweeps -------------------------------------------------------------------------------------
def sweep_points(overrides: list[str], loader, params: dict | None = None) -> list[list[str]]:
    """The override lists of every job of a basic-sweeper multirun (comma lists, ``range``...)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = [f"{k}={v}" for k, v in (params or {}).items()] + list(overrides)
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(given)
    return BasicSweeper.split_arguments(parsed, None)[0]


def check_points(
    points: list[list[str]], compose: Callable[[list[str]], DictConfig], data: bool = True
) -> list[str]:
    """Compose every point with ``compose`` and check it; each problem once, prefixed with the
    point (or the points) it concerns."""
    found: dict[str, list[int]] = {}
    seen: dict = {}
    for i, point in enumerate(points):
        try:
            cfg = compose(point)
        except Exception as e:
            found.setdefault(f"does not compose: {e}", []).append(i)
            continue
        switch = OmegaConf.select(cfg, "hydra.callbacks.preflight", default=None) or {}
        if not switch.get("enabled", True):
            continue
        with hydra_config(cfg):
            use_data = data and switch.get("data", True)
            for p in check_run(cfg, data=use_data, local=False, seen=seen) + check_cluster(cfg):
                found.setdefault(p, []).append(i)
    problems = []
    for problem, jobs in found.items():
        if len(points) == 1:
            problems.append(problem)
        elif len(jobs) == 1:
            problems.append(f"job {jobs[0]} ({' '.join(points[jobs[0]])}): {problem}")
        else:
            problems.append(f"jobs {', '.join(map(str, jobs))}: {problem}")
    return problems


@contextmanager
def hydra_config(cfg: DictConfig):
    """``cfg``'s hydra node as the current HydraConfig (``${hydra:...}`` resolves), restored."""
    from hydra.core.hydra_config import HydraConfig

    inst = HydraConfig.instance()
    before = inst.cfg
    if "hydra" in cfg:
        inst.set_config(cfg)
    try:
        yield
    finally:
        inst.cfg = before


class Preflight(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): the preflight before a run and before a
    sweep; and, inside a submitit (SLURM) job, a failed run exits non-zero so that ``sacct``
    says FAILED.

    Args:
        enabled: ``hydra.callbacks.preflight.enabled=false`` skips the checks.
        data: ``false`` skips the data check (data that exists only on the compute nodes).
    """

    def __init__(self, enabled: bool = True, data: bool = True):
        self.enabled, self.data = enabled, data

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        causes: list[BaseException] = []
        try:
            with hydra_config(config):
                out = config.hydra.run.dir
                problems = check_run(config, data=self.data, output_dir=out, causes=causes)
        except Exception as e:  # a bug here must not pass as "all clear"
            problems, causes = [f"the preflight itself failed: {type(e).__name__}: {e}"], [e]
        if problems:
            fail(PreflightError(problems, causes=causes))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        from hydra.core.global_hydra import GlobalHydra

        loader = GlobalHydra.instance().config_loader()
        points: list[list[str]] = []
        try:
            sweeper = config.hydra.sweeper
            if "BasicSweeper" not in str(sweeper.get("_target_", "")):
                return  # another sweeper draws its points as it goes: each job checks itself
            points = sweep_points(
                list(config.hydra.overrides.task), loader, OmegaConf.to_container(sweeper.params)
                if sweeper.get("params") else None,
            )  # fmt: skip
            problems = check_points(
                points, lambda ov: loader.load_sweep_config(config, ov), self.data
            )
            with hydra_config(config):
                problems += check_output_dir(config.hydra.sweep.dir, lock=False)
        except Exception as e:
            problems = [f"the preflight itself failed: {type(e).__name__}: {e}"]
            fail(PreflightError(problems, header="sweep preflight", causes=[e]))
        if problems:
            fail(PreflightError(problems, header=f"sweep preflight ({len(points)} jobs)"))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if job_return.status is JobStatus.FAILED and os.environ.get("SUBMITIT_FOLDER"):
            # submitit would record the failure as a result and exit 0 (sacct: COMPLETED)
            error = job_return._return_value
            if not is_user_error(error):
                traceback.print_exception(error)
            fail(error, code=1)


def is_user_error(error: BaseException) -> bool:
    """An error whose message says it all (bad config, data, checkpoint, disk, lock)."""
    from odelab.data.errors import DatasetError
    from odelab.utils.errors import OdelabError

    return isinstance(error, (OdelabError, DatasetError))


def fail(error: BaseException, code: int = 2) -> None:
    """Print ``error`` as its message alone (with its traceback under ``HYDRA_FULL_ERROR=1``) and
    exit with ``code``: a Hydra callback's exceptions would only be warnings."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        if error.__traceback__ is None:  # give it the stack it was found at
            try:
                raise error
            except BaseException as e:
                error = e
        traceback.print_exception(error)
    sys.stderr.write(f"{error}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def main(argv: list[str]) -> int:
    """``python -m odelab.preflight [overrides]``: check the run those overrides compose (a
    sweep's every point) without running it; exit 2 with the problems, 0 when all pass."""
    from odelab.utils.config import compose_config, config_loader

    points: list[list[str]] = []
    try:
        points = sweep_points(argv, config_loader())
        problems = check_points(points, lambda ov: compose_config(ov, return_hydra_config=True))
    except Exception as e:
        problems = [f"{type(e).__name__}: {e}"]
    if problems:
        print(PreflightError(problems), file=sys.stderr)
        return 2
    print(f"preflight: {len(points)} run(s) passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
