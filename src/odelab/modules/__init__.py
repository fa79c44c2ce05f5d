"""LightningModules shared by several papers (a paper subclasses them for its extras)."""

from odelab.modules.classifier import ImageClassifier
from odelab.modules.restoration import FeedForwardRestorer, RestorationModule

__all__ = ["FeedForwardRestorer", "ImageClassifier", "RestorationModule"]
