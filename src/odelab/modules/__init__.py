"""LightningModules shared by several papers (a paper subclasses them for its extras)."""

from odelab.modules.classifier import ImageClassifier

__all__ = ["ImageClassifier"]
