"""Training-speed switches every experiment gets (the ``speed`` config node).

``trainer.precision`` (``32-true``, ``bf16-mixed``, ``16-mixed``), ``trainer.benchmark`` (cudnn
autotuning) and ``trainer.deterministic`` (``torch.use_deterministic_algorithms`` +
``CUBLAS_WORKSPACE_CONFIG``; seeds come from ``seed``) are Lightning's own Trainer options;
:class:`SpeedSwitches` adds the ones Lightning does not have:

- ``compile``: ``torch.compile`` of the networks, *in place* (``nn.Module.compile``): the module
  objects and their ``state_dict`` keys stay the same (no ``_orig_mod.`` prefix), so checkpoints
  load into uncompiled models and back;
- ``channels_last``: NHWC memory format for every 4-D parameter and for the 4-D inputs of the
  networks (``"auto"``: on CUDA, when the model has a ``Conv2d``);
- ``matmul_precision``: ``torch.set_float32_matmul_precision`` (``high``/``medium`` allow TF32 /
  bf16 matmuls on tensor-core GPUs).

:func:`check_speed_config` rejects impossible combinations before anything is built.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

log = logging.getLogger(__name__)

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MATMUL_PRECISIONS = (None, "highest", "high", "medium")
FP16 = ("16", "16-mixed", "16-true")


def check_speed_config(cfg: Any) -> None:
    """ValueError naming the keys when ``trainer.*`` and ``speed.*`` cannot work together."""
    tr, sp = cfg.get("trainer") or {}, cfg.get("speed") or {}
    prec, acc = str(tr.get("precision", "32-true")), str(tr.get("accelerator", "auto"))
    on_cpu = acc == "cpu" or (acc == "auto" and not torch.cuda.is_available())
    if prec in FP16 and on_cpu:
        raise ValueError(
            f"trainer.precision={prec} with trainer.accelerator={acc} (CPU): fp16 autocast is "
            "not supported on CPU; use trainer.precision=bf16-mixed or a GPU (trainer=gpu)"
        )
    if tr.get("deterministic") and tr.get("benchmark"):
        raise ValueError(
            f"trainer.deterministic={tr.get('deterministic')} with trainer.benchmark=true: cudnn "
            "autotuning picks kernels by timing, so runs differ; set trainer.benchmark=false"
        )
    for key, allowed in (
        ("compile_mode", COMPILE_MODES),
        ("channels_last", ("auto", True, False)),
        ("matmul_precision", MATMUL_PRECISIONS),
    ):
        if sp.get(key, allowed[0]) not in allowed:
            raise ValueError(f"speed.{key}={sp.get(key)!r}; use one of {allowed}")
    if sp.get("compile") and tr.get("deterministic") and not on_cpu:
        # not verified here (no GPU): inductor's generated GPU kernels may fall outside what
        # torch.use_deterministic_algorithms covers
        log.warning(
            "speed.compile=true with trainer.deterministic=true on a GPU: bit-identical reruns "
            "of compiled GPU kernels are unverified; set speed.compile=false for exact reruns"
        )


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: 4-D tensor inputs in channels_last memory format."""
    return tuple(
        a.contiguous(memory_format=torch.channels_last)
        if isinstance(a, torch.Tensor) and a.dim() == 4
        else a
        for a in args
    )


class SpeedSwitches(pl.Callback):
    """Apply ``compile``, ``channels_last`` and ``matmul_precision`` to the LightningModule.

    Args:
        compile: ``torch.compile`` the target networks in place.
        compile_mode: ``torch.compile`` mode (None: its default).
        compile_backend: ``torch.compile`` backend (``inductor``; ``aot_eager`` skips codegen).
        modules: attribute names of the LightningModule's networks to compile and feed
            channels_last inputs (``null``: ``net`` if the module has one, else every direct
            child module with parameters; ``[]``: the LightningModule itself).
        channels_last: ``true``, ``false`` or ``"auto"`` (CUDA and a ``Conv2d`` in the model).
        matmul_precision: ``torch.set_float32_matmul_precision`` value (None: leave it).

    Networks a LightningModule builds in its own ``setup`` (e.g. the translation model, whose
    vocabulary comes from the data) are compiled at the start of fit/validate/test; the
    channels_last conversion of parameters happens in ``setup``, before DDP wraps the model.
    """

    def __init__(
        self,
        compile: bool = False,
        compile_mode: str | None = None,
        compile_backend: str = "inductor",
        modules: Sequence[str] | None = None,
        channels_last: bool | str = "auto",
        matmul_precision: str | None = None,
    ):
        self.compile = bool(compile)
        self.compile_mode = None if compile_mode in (None, "default") else compile_mode
        self.compile_backend = compile_backend
        self.modules = None if modules is None else list(modules)
        self.channels_last = channels_last
        self.matmul_precision = matmul_precision
        self._hooked: set[int] = set()
        self._compiled: set[int] = set()
        self.active_channels_last = False

    # ---- which networks --------------------------------------------------------------------

    def targets(self, pl_module: pl.LightningModule) -> dict[str, nn.Module | None]:
        """``name -> network`` (``None``: not built yet) that the switches apply to."""
        if self.modules == []:
            return {"<LightningModule>": pl_module}
        names = self.modules
        if names is None:
            children = dict(pl_module.named_children())
            if "net" in children or getattr(pl_module, "net", 0) is None:
                names = ["net"]
            else:
                names = [
                    n
                    for n, m in children.items()
                    if not _is_metric(m) and any(True for _ in m.parameters())
                ]
        out = {}
        for n in names:
            if not hasattr(pl_module, n):
                raise ValueError(
                    f"speed.modules: {type(pl_module).__name__} has no attribute {n!r}; list its "
                    "networks (e.g. [net]), null for automatic, or [] for the whole module"
                )
            m = getattr(pl_module, n)
            if m is not None and not isinstance(m, nn.Module):
                raise ValueError(f"speed.modules: {type(pl_module).__name__}.{n} is no nn.Module")
            out[n] = m
        return out

    # ---- Lightning hooks ---------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.matmul_precision is not None:
            torch.set_float32_matmul_precision(self.matmul_precision)
        want = self.channels_last
        if want == "auto":
            has_conv = any(isinstance(m, nn.Conv2d) for m in pl_module.modules())
            want = trainer.strategy.root_device.type == "cuda" and has_conv
        self.active_channels_last = bool(want)
        if self.active_channels_last:
            pl_module.to(memory_format=torch.channels_last)
        self._prepare(pl_module, final=False)

    def _prepare(self, pl_module: pl.LightningModule, final: bool) -> None:
        for name, m in self.targets(pl_module).items():
            if m is None:
                if final:
                    raise ValueError(
                        f"speed.modules: {type(pl_module).__name__}.{name} is still None at the "
                        "start of the run; name a network the module builds"
                    )
                continue
            if self.active_channels_last and id(m) not in self._hooked:
                m.register_forward_pre_hook(_to_channels_last)
                self._hooked.add(id(m))
            if self.compile and id(m) not in self._compiled:
                m.compile(mode=self.compile_mode, backend=self.compile_backend)
                self._compiled.add(id(m))
                log.info("torch.compile(%s, mode=%s, backend=%s)", name, self.compile_mode,
                         self.compile_backend)  # fmt: skip

    def on_fit_start(self, trainer, pl_module) -> None:
        self._prepare(pl_module, final=True)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._prepare(pl_module, final=True)

    def on_test_start(self, trainer, pl_module) -> None:
        self._prepare(pl_module, final=True)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._prepare(pl_module, final=True)


def _is_metric(m: nn.Module) -> bool:
    mods = m.values() if isinstance(m, nn.ModuleDict) else [m]
    return any(type(x).__module__.startswith("torchmetrics") for x in mods)
