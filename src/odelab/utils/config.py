"""Config helpers: resolvers, composing the config, and hints for unknown keys."""

from __future__ import annotations

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
    from odelab.utils.slurm import cluster_gpus

    if str(accelerator) == "auto" and cluster_gpus(partition) == 0:
        return None
    return n


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
