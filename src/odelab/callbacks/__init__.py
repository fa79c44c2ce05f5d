"""Callbacks shared by every paper."""

from odelab.callbacks.control import PreemptionCheckpoint, RNGStateCallback, StopAfterEpochs
from odelab.callbacks.results import ResultsWriter, load_reference
from odelab.callbacks.timing import EpochTimer

__all__ = [
    "EpochTimer",
    "PreemptionCheckpoint",
    "RNGStateCallback",
    "ResultsWriter",
    "StopAfterEpochs",
    "load_reference",
]
