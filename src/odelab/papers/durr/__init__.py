"""DURR (Zhang, Lu, Liu, Dong, ICLR 2019, arXiv 1805.07709): a recurrent restorer whose number
of steps (the moving endpoint) is chosen per image by a DQN-trained policy; DnCNN-B and BM3D
comparators."""

from odelab.papers.durr.bm3d_baseline import BM3DBaseline
from odelab.papers.durr.model import DnCNN, PolicyNet, RecurrentRestorer, num_params
from odelab.papers.durr.module import DURRModule, ReplayBuffer, schedule_T

__all__ = [
    "BM3DBaseline",
    "DURRModule",
    "DnCNN",
    "PolicyNet",
    "RecurrentRestorer",
    "ReplayBuffer",
    "num_params",
    "schedule_T",
]
