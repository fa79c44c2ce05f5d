"""Shared fixtures: compose the real configs, force CPU and tiny limits, never the network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
os.environ["WANDB_MODE"] = "offline"  # no account, no network
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, os.cpu_count() or 1))


# The local copies of real datasets (``../shared/data``); tests that need them skip without.
SHARED_DATA = Path(os.environ.get("ODELAB_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """CIFAR-10 and CIFAR-100 written in their canonical formats, a few images per batch."""
    from canonical_data import write_cifar10, write_cifar100

    root = tmp_path_factory.mktemp("data")
    write_cifar10(root, n_per_batch=10)
    write_cifar100(root, n_train=20, n_test=10)
    return root


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of many tiny ops (small convolutions, step-by-step
    decoding, float64 stencils): on a busy 2-core machine two spinning OpenMP threads make them
    up to ~100x slower. Restored for the other modules. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("ODELAB_LOG_DIR", str(tmp_path / "logs"))


def compose(overrides: list[str], output_dir: Path):
    """Compose ``conf/config.yaml`` as ``run.py`` does, with HydraConfig set for interpolation."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from odelab.utils.config import compose_config

    cfg = compose_config(overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


@pytest.fixture
def run_experiment(tmp_path):
    """Run ``odelab.train.run`` in-process on composed overrides; return (score, output_dir)."""
    from odelab.train import run

    counter = iter(range(1000))

    def _run(overrides: list[str], name: str | None = None):
        out = tmp_path / (name or f"run{next(counter)}")
        cfg = compose(overrides, out)
        return run(cfg), out

    return _run


def run_cli(*args: str, env: dict | None = None, timeout: int = 300):
    """``python run.py <args>`` in a subprocess at the checkout, W&B offline, errors as the user
    sees them (no Hydra traceback); ``env`` adds variables."""
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)  # fmt: skip
