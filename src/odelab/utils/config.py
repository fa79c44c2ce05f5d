"""Config helpers: resolvers, composing the config, and hints for unknown keys."""

from __future__ import annotations

import difflib
import functools
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[3]
CONFIG_DIR = REPO_ROOT / "conf"


def register_resolvers() -> None:
    """``${odelab_root:}`` is the checkout (where ``run.py`` and ``conf/`` live)."""
    if not OmegaConf.has_resolver("odelab_root"):
        OmegaConf.register_new_resolver("odelab_root", lambda: str(REPO_ROOT))
    if not OmegaConf.has_resolver("odelab_tags"):
        OmegaConf.register_new_resolver("odelab_tags", merge_tags)
    if not OmegaConf.has_resolver("odelab_run_id"):
        OmegaConf.register_new_resolver("odelab_run_id", run_id)
    if not OmegaConf.has_resolver("odelab_gpus"):
        OmegaConf.register_new_resolver("odelab_gpus", gpus_per_node)


def run_id(output_dir: str | None) -> str | None:
    """``${odelab_run_id:${paths.output_dir}}``: the W&B run id, a hash of the absolute output
    dir, so that a run restarted in its directory (a requeued SLURM job) continues its W&B run.
    ``None`` (W&B picks one) while there is no output dir yet (``--cfg job --resolve``)."""
    import hashlib

    if output_dir is None:
        return None
    return hashlib.sha256(str(Path(output_dir).absolute()).encode()).hexdigest()[:16]


def gpus_per_node(accelerator: str, devices, partition: str | None = None) -> int | None:
    """``${odelab_gpus:${trainer.accelerator},${trainer.devices},${.partition}}``: GPUs a SLURM
    job requests per node; ``None`` (no GPU request) for CPU runs. One SLURM task drives one
    device. ``auto`` asks for GPUs only where the cluster has them: when ``sinfo`` reports none
    in the partition (the default one when ``partition`` is null), it is a CPU job."""
    if str(accelerator) not in ("gpu", "cuda", "auto"):
        return None
    n = len(devices) if isinstance(devices, (list, ListConfig)) else devices
    if not isinstance(n, int) or n < 1:
        raise ValueError(
            f"trainer.devices={devices!r} cannot size a SLURM job; set trainer.devices to the "
            "number of GPUs per node"
        )
    if str(accelerator) == "auto" and cluster_gpus(partition) == 0:
        return None
    return n


@functools.cache
def cluster_gpus(partition: str | None = None) -> int | None:
    """The most GPUs (``gres/gpu``) any node of ``partition`` has, from ``sinfo``; the default
    partition when ``partition`` is null; ``None`` when ``sinfo`` is missing or does not
    answer (then nothing is assumed)."""
    import re
    import shutil
    import subprocess

    if shutil.which("sinfo") is None:
        return None
    try:
        p = subprocess.run(
            ["sinfo", "-h", "-o", "%P|%G"], capture_output=True, text=True, timeout=15
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if p.returncode != 0 or not p.stdout.strip():
        return None
    rows = [line.split("|", 1) for line in p.stdout.splitlines() if "|" in line]
    if partition:
        rows = [r for r in rows if r[0].rstrip("*") == str(partition)]
    else:
        rows = [r for r in rows if r[0].endswith("*")] or rows
    if not rows:
        return None
    counts = [0]
    for _, gres in rows:
        for item in gres.split(","):
            m = re.match(r"gpu(?::[^:(]+)?:(\d+)", item.strip())
            if m:
                counts.append(int(m.group(1)))
    return max(counts)


def merge_tags(tags, *extra) -> ListConfig:
    """``${odelab_tags:${tags},${experiment_name},${dataset}}``: one de-duplicated tag list."""
    out: list[str] = []
    for t in [*(tags or []), *extra]:
        if t is not None and str(t) not in out:
            out.append(str(t))
    return ListConfig(out)  # a container, so OmegaConf.resolve can replace the node in place


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def compose_config(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra's compose API, as ``run.py`` would."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose("config", overrides=overrides, return_hydra_config=return_hydra_config)


def config_loader():
    """A Hydra config loader over ``conf/`` (what parses sweep overrides outside a running app)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path

    path = create_config_search_path(f"file://{CONFIG_DIR}")
    return ConfigLoaderImpl(config_search_path=path)


def unknown_key_hints(overrides: list[str]) -> list[str]:
    """For ``a.b.c=v`` overrides naming a key the composed config lacks: what is valid there.

    Hydra's own message names the key but not the alternatives; this runs only after a failed
    composition, so it costs nothing on the normal path.
    """
    groups = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()}
    choices, keys = [], []
    for o in overrides:
        if "=" not in o or o.startswith(("-", "+", "~")):
            continue
        key = o.split("=", 1)[0]
        (choices if key in groups or "/" in key else keys).append((o, key))
    try:
        cfg = compose_config([o for o, _ in choices])
    except Exception:  # the group choices themselves are wrong: Hydra's message covers it
        return []
    hints = []
    for _, key in keys:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig) and leaf not in node:
            valid = ", ".join(sorted(str(k) for k in node))
            where = f"'{parent}'" if parent else "the top level"
            hints.append(f"Unknown key '{leaf}' in {where}; valid keys there: {valid}")
    return hints


def unknown_choice_message(overrides: list[str]) -> str | None:
    """For ``group=option`` overrides naming an option that ``conf/<group>/`` lacks: the closest
    options first, then all of them (Hydra's own message lists them alphabetically only)."""
    groups = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra"}
    lines = []
    for o in overrides:
        key, eq, value = o.lstrip("+").partition("=")
        if not eq or key not in groups or value in ("", "null") or "(" in value:
            continue
        options = sorted(p.stem for p in (CONFIG_DIR / key).glob("*.yaml"))
        for name in value.split(","):
            if name in options:
                continue
            close = difflib.get_close_matches(name, options, n=4, cutoff=0.5)
            starts = [x for x in options if x.startswith(name[:4]) and x not in close]
            closest = (close + starts)[:5]
            hint = f" Closest: {', '.join(closest)}." if closest else ""
            lines.append(
                f"Unknown {key} '{name}' (no conf/{key}/{name}.yaml).{hint}\n"
                f"All {key} options: {', '.join(options)}"
            )
    return "\n".join(lines) or None
