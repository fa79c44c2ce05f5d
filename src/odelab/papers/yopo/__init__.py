"""YOPO (Zhang et al., NeurIPS 2019) and its adversarial-training peers (PGD, Free, Fast)."""

from odelab.papers.yopo.attacks import FGSM, PGD, Attack, TRADESAttack, autoattack_accuracy
from odelab.papers.yopo.module import AdversarialTraining
from odelab.papers.yopo.networks import LayerOneNet, PreActResNet18, SmallCNN, WideResNet
from odelab.papers.yopo.yopo import yopo_step

__all__ = [
    "FGSM",
    "PGD",
    "AdversarialTraining",
    "Attack",
    "LayerOneNet",
    "PreActResNet18",
    "SmallCNN",
    "TRADESAttack",
    "WideResNet",
    "autoattack_accuracy",
    "yopo_step",
]
