"""Callbacks shared by every paper."""

from odelab.callbacks.averaging import AverageLastCheckpoints, average_checkpoints
from odelab.callbacks.control import PreemptionCheckpoint, RNGStateCallback, StopAfterEpochs
from odelab.callbacks.results import ResultsWriter, load_reference
from odelab.callbacks.timing import EpochTimer
from odelab.callbacks.train_clock import TrainClock

__all__ = [
    "EpochTimer",
    "PreemptionCheckpoint",
    "AverageLastCheckpoints",
    "average_checkpoints",
    "RNGStateCallback",
    "ResultsWriter",
    "StopAfterEpochs",
    "TrainClock",
    "load_reference",
]
