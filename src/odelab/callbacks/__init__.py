"""Callbacks shared by every paper."""

from odelab.callbacks.averaging import AverageLastCheckpoints, average_checkpoints
from odelab.callbacks.control import PreemptionCheckpoint, RNGStateCallback, StopAfterEpochs
from odelab.callbacks.results import ResultsWriter
from odelab.callbacks.speed import SpeedSwitches
from odelab.callbacks.summary import ModelSummary
from odelab.callbacks.timing import EpochTimer, FirstStepStamp
from odelab.callbacks.train_clock import TrainClock
from odelab.utils.record import load_reference

__all__ = [
    "EpochTimer",
    "FirstStepStamp",
    "ModelSummary",
    "PreemptionCheckpoint",
    "AverageLastCheckpoints",
    "average_checkpoints",
    "RNGStateCallback",
    "ResultsWriter",
    "SpeedSwitches",
    "StopAfterEpochs",
    "TrainClock",
    "load_reference",
]
