"""Building blocks shared by several papers."""

from odelab.nn.resnet import (
    PreActBasicBranch,
    PreActBottleneckBranch,
    ProjectionShortcut,
    he_fanout_init_,
)

__all__ = [
    "PreActBasicBranch",
    "PreActBottleneckBranch",
    "ProjectionShortcut",
    "he_fanout_init_",
]
