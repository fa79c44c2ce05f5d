"""Mean-field ResNet (Lu, Ma, Lu, Lu, Ying, ICML 2020): 1/(L·M)-scaled residual networks."""

from odelab.papers.meanfield.model import (
    ConvUnits,
    MeanFieldResMLP,
    MeanFieldResNet,
    branch_scale,
)
from odelab.papers.meanfield.module import MeanFieldClassifier, r_squared

__all__ = [
    "ConvUnits",
    "MeanFieldClassifier",
    "MeanFieldResMLP",
    "MeanFieldResNet",
    "branch_scale",
    "r_squared",
]
