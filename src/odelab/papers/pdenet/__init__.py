"""PDE-Net (Long, Lu, Ma, Dong 2018) and PDE-Net 2.0 (Long, Lu, Dong 2019)."""

from odelab.papers.pdenet.filters import FilterBank, k2m, m2k
from odelab.papers.pdenet.models import PDENetV1Block, PolyPDE2d, SymNet
from odelab.papers.pdenet.module import PDENet2Module, PDENetV1Module

__all__ = [
    "FilterBank",
    "PDENet2Module",
    "PDENetV1Block",
    "PDENetV1Module",
    "PolyPDE2d",
    "SymNet",
    "k2m",
    "m2k",
]
