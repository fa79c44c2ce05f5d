"""Runs + ``reference.yaml`` -> the paper-vs-ours table of one paper.

A run counts for a setting's row only when it *finished* and its resolved config equals the
setting's recipe: ``conf/experiment/<setting>.yaml`` composed with no overrides, both compared
after dropping the run-local keys in :data:`RUN_LOCAL_KEYS` (seed, paths, logger, where the data
lives, how many devices run it, ...). Everything else is listed apart, never averaged in:

- ``different config``: finished runs of a setting whose config differs from the recipe; grouped
  by their own config (hash of the compared config), aggregated per group, with the keys that
  differ;
- ``unusable``: failed or unfinished runs (status != ``finished``), reruns of a seed that a newer
  run of the same config replaces, and runs of experiments that ``reference.yaml`` does not list.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import hashlib
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from odelab.report.runs import Run
from odelab.utils.config import REPO_ROOT

EXPERIMENTS_DIR = REPO_ROOT / "experiments"

# Keys (dotted, fnmatch patterns) that do not change what a run computes: compared configs drop
# them. Debug and budget keys (fast_dev_run, limit_*_batches, max_epochs, ...) are NOT here: a
# debug run is a different config. A paper may add keys with ``RUN_LOCAL_KEYS`` in its
# ``odelab.papers.<paper>.report`` module.
RUN_LOCAL_KEYS = (
    "seed",
    "*.seed",  # data.seed etc. interpolate ${seed}
    "paths",
    "*_dir",  # data_dir, default_root_dir, save_dir, cache_dir: where, not what
    "*.dirpath",
    "logger",
    "hydra",
    "ckpt_path",  # resuming continues the same config
    "auto_resume",  # how a restarted run finds its checkpoint, not what it computes
    "callbacks.preemption",  # the SIGTERM checkpoint: how a run survives, not what it computes
    "callbacks.model_checkpoint",  # which checkpoint files are kept (monitor/mode are compared)
    "callbacks.last_checkpoint",
    "trainer.plugins",  # checkpoint IO (atomic writes)
    "retest",  # a finished run tested again: same run
    "print_config",
    "tags",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.benchmark",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.profiler",
    "trainer.detect_anomaly",
    "data.num_workers",
    "data.pin_memory",
    "data.device_resident",  # where the batches are gathered, not what they hold
    "speed",  # compile, channels_last, matmul precision: how fast (trainer.precision is compared)
    "data.persistent_workers",
    "data.download",
    "data.verify",
    "data.eval_batch_size",
    "callbacks.model_summary",  # what the log shows at fit start
    "callbacks.*.output_dir",
    "callbacks.*.reference_file",
)


# -- reference.yaml ---------------------------------------------------------------------------
def papers() -> list[str]:
    """Every paper with an ``experiments/<paper>/reference.yaml``."""
    return sorted(p.parent.name for p in EXPERIMENTS_DIR.glob("*/reference.yaml"))


def load_reference(paper: str, root: Path = EXPERIMENTS_DIR) -> dict:
    path = root / paper / "reference.yaml"
    if not path.is_file():
        known = ", ".join(papers()) or "none"
        raise ValueError(f"no {path}: unknown paper '{paper}' (papers with one: {known})")
    return yaml.safe_load(path.read_text()) or {}


# -- config comparison ------------------------------------------------------------------------
def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def comparable(config: dict, extra_local: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config as dotted ``key: value`` pairs, run-local keys dropped."""
    patterns = (*RUN_LOCAL_KEYS, *extra_local)
    flat = _flatten(copy.deepcopy(config))
    return {
        k: v
        for k, v in flat.items()
        if not any(fnmatch.fnmatchcase(k, p) or fnmatch.fnmatchcase(k, p + ".*") for p in patterns)
    }


def config_hash(flat: dict[str, Any]) -> str:
    blob = json.dumps(flat, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:8]


@functools.cache
def recipe_config(experiment: str) -> dict | None:
    """``conf/experiment/<experiment>.yaml`` composed with no other override, resolved
    (``None`` when no such experiment file exists)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from odelab.utils.config import CONFIG_DIR, compose_config, to_container

    if not (CONFIG_DIR / "experiment" / f"{experiment}.yaml").is_file():
        return None
    cfg = compose_config([f"experiment={experiment}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = "<output_dir>"
        del cfg["hydra"]
    OmegaConf.resolve(cfg)
    return to_container(cfg)


def config_diff(ours: dict[str, Any], recipe: dict[str, Any]) -> list[str]:
    """``key: value (recipe: value)`` for every compared key that differs."""
    out = []
    for k in sorted(set(ours) | set(recipe)):
        a, b = ours.get(k, "<absent>"), recipe.get(k, "<absent>")
        if a != b:
            out.append(f"{k}={_short(a)} (recipe {_short(b)})")
    return out


def _short(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    if isinstance(v, str) and "." in v and " " not in v and not v.startswith((".", "/")):
        s = v.rsplit(".", 1)[-1]  # a class path: its name
    return s if len(s) <= 40 else s[:37] + "..."


# -- aggregation ------------------------------------------------------------------------------
@dataclass
class Stat:
    """mean ± std (sample std, n - 1) over seeds."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else None


@dataclass
class Group:
    """Finished runs of one setting with one config: the recipe, or one variant of it."""

    experiment: str
    runs: list[Run]
    recipe: bool
    config_hash: str | None = None
    diff: list[str] = field(default_factory=list)

    def stat(self, metric: str) -> Stat:
        return Stat([r.metrics[metric] for r in self.runs if metric in r.metrics])

    def seeds(self, metric: str | None = None) -> list:
        return [r.seed for r in self.runs if metric is None or metric in r.metrics]

    @property
    def hardware(self) -> str:
        return "; ".join(sorted({describe_hardware(r.hardware) for r in self.runs})) or "-"


@dataclass
class Row:
    """One line of a table: a setting (or a variant of it) and one metric."""

    experiment: str
    metric: str | None
    reference: dict
    group: Group | None
    setting_note: str = ""  # the reference entry's ``note`` (why there is no paper value, ...)

    @property
    def paper(self) -> float | None:
        v = self.reference.get("value")
        return float(v) if isinstance(v, int | float) else None

    @property
    def stat(self) -> Stat:
        if self.group is None or self.metric is None:
            return Stat([])
        return self.group.stat(self.metric)

    @property
    def delta(self) -> float | None:
        m = self.stat.mean
        return None if m is None or self.paper is None else m - self.paper

    @property
    def note(self) -> str:
        notes = [self.setting_note] if self.setting_note and self.paper is None else []
        if self.stat.n == 0:
            notes.append("no run" if self.group is None else f"no {self.metric} in its runs")
        m, unit = self.stat.mean, self.reference.get("unit")
        if (
            unit == "%"
            and m is not None
            and self.paper is not None
            and self.paper > 1
            and all(0 <= v <= 1 for v in self.stat.values)
        ):
            notes.append("paper in %, ours looks like a fraction: check the unit")
        return "; ".join(notes)


@dataclass
class Unusable:
    run: Run
    reason: str


@dataclass
class PaperReport:
    paper: str
    reference: dict
    rows: list[Row]  # the paper's recipe, one per setting x metric (settings in file order)
    variant_rows: list[Row]  # finished runs with a different config, per config group
    unusable: list[Unusable]
    groups: list[Group]  # every group (recipe first), for plots
    sources: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[Run]:
        return [r for g in self.groups for r in g.runs]


def describe_hardware(hw: Any) -> str:
    """``1x NVIDIA H200`` or ``cpu (2 cores)`` from a results.json ``hardware`` record."""
    if not hw:
        return "unknown"
    if isinstance(hw, str):
        return hw
    nodes, devices = hw.get("num_nodes") or 1, hw.get("devices") or 1
    count = f"{nodes}x{devices}" if nodes > 1 else f"{devices}x"
    if hw.get("gpu"):
        return f"{count} {hw['gpu']}"
    if hw.get("accelerator") in (None, "cpu"):
        return f"cpu ({hw['cpu_count']} cores)" if hw.get("cpu_count") else "cpu"
    return f"{count} {hw['accelerator']}"


def _metrics_of(setting: dict, runs: list[Run]) -> list[str | None]:
    """The reference's metric keys, then its ``show`` keys (metrics reported without a paper
    number, e.g. errors against a known true PDE); without any, the test counterpart of the
    runs' monitor (``val/acc`` -> ``test/acc``) if they logged it."""
    keys = list((setting or {}).get("metrics") or {})
    keys += [k for k in (setting or {}).get("show") or [] if k not in keys]
    if keys:
        return keys
    for r in runs:
        monitor = (r.config or {}).get("monitor")
        if monitor:
            test = "test/" + monitor.split("/", 1)[-1]
            for key in (test, monitor):
                if key in r.metrics:
                    return [key]
    return [None]


def build(
    paper: str,
    runs: list[Run],
    reference: dict | None = None,
    recipe: Any = recipe_config,
    extra_local: tuple[str, ...] = (),
    sources: list[str] | None = None,
) -> PaperReport:
    """Group, aggregate and join ``runs`` of ``paper`` with its reference numbers.

    ``recipe(experiment) -> resolved config | None`` gives each setting's recipe config.
    """
    reference = load_reference(paper) if reference is None else reference
    settings: dict = reference.get("settings") or {}
    unusable: list[Unusable] = []
    by_setting: dict[str, dict[str, Group]] = {}
    for run in sorted(runs, key=lambda r: r.time, reverse=True):  # newest first
        if run.paper != paper and not (run.paper is None and run.experiment in settings):
            continue
        if run.status != "finished":
            unusable.append(Unusable(run, f"status {run.status}"))
            continue
        if run.experiment not in settings:
            unusable.append(Unusable(run, "experiment not in reference.yaml"))
            continue
        if run.config is None:
            key, diff = "no-config", ["no config recorded"]
        else:
            want = recipe(run.experiment)
            ours = comparable(run.config, extra_local)
            if want is None:
                key, diff = config_hash(ours), ["no conf/experiment file to compare with"]
            else:
                diff = config_diff(ours, comparable(want, extra_local))
                key = "recipe" if not diff else config_hash(ours)
        groups = by_setting.setdefault(run.experiment, {})
        group = groups.setdefault(
            key, Group(run.experiment, [], recipe=key == "recipe", config_hash=key, diff=diff)
        )
        if run.seed is not None and run.seed in group.seeds():
            unusable.append(Unusable(run, f"seed {run.seed} rerun: a newer run replaces it"))
            continue
        group.runs.append(run)

    rows, variant_rows, all_groups = [], [], []
    for name, setting in settings.items():
        groups = by_setting.get(name, {})
        for g in groups.values():
            g.runs.sort(key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0))
        recipe_group = groups.get("recipe")
        metrics = _metrics_of(setting, [r for g in groups.values() for r in g.runs])
        refs = (setting or {}).get("metrics") or {}
        note = str((setting or {}).get("note") or "").strip().rstrip(".")
        for metric in metrics:
            ref = refs.get(metric, {}) if metric else {}
            rows.append(Row(name, metric, ref, recipe_group, setting_note=note))
        if recipe_group:
            all_groups.append(recipe_group)
        for key, g in sorted(groups.items()):
            if key == "recipe":
                continue
            all_groups.append(g)
            for metric in metrics:
                variant_rows.append(Row(name, metric, refs.get(metric, {}) if metric else {}, g))
    unusable.sort(key=lambda u: (u.run.experiment, str(u.run.seed), u.run.source))
    return PaperReport(paper, reference, rows, variant_rows, unusable, all_groups, sources or [])


def fmt(v: float | None, digits: int | None = None) -> str:
    """A number for tables: 4 significant digits, at most 2 decimals above 1."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if digits is not None:
        return f"{v:.{digits}f}"
    a = abs(v)
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.4f}" if a >= 1e-3 or a == 0 else f"{v:.3g}"


def mean_std(stat: Stat, digits: int | None = None) -> str:
    """``mean ± std`` with the std at the mean's precision (just the mean for one seed);
    ``digits``: that many decimals for both."""
    if stat.n == 0:
        return "-"
    m = fmt(stat.mean, digits)
    if stat.std is None:
        return m
    if digits is None:
        digits = len(m.split(".")[1]) if "." in m and "e" not in m else 4
    return f"{m} ± {stat.std:.{digits}f}"
