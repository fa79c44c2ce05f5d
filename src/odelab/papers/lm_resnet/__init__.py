"""LM-ResNet: linear multi-step residual networks (arXiv 1710.10121)."""

from odelab.papers.lm_resnet.model import LMResNet, LMResNeXt, blocks_per_stage, death_rates
from odelab.papers.lm_resnet.module import LMResNetClassifier

__all__ = ["LMResNet", "LMResNeXt", "LMResNetClassifier", "blocks_per_stage", "death_rates"]
