"""Building blocks shared by several papers."""

from odelab.nn.resnet import (
    BottleneckBranch,
    ConvBNShortcut,
    PreActBasicBranch,
    PreActBottleneckBranch,
    ProjectionShortcut,
    he_fanout_init_,
)

__all__ = [
    "BottleneckBranch",
    "ConvBNShortcut",
    "PreActBasicBranch",
    "PreActBottleneckBranch",
    "ProjectionShortcut",
    "he_fanout_init_",
]
