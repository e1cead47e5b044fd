from lmlab.callbacks.checkpoint import BranchCheckpoints, ResumableCheckpoint
from lmlab.callbacks.data_log import DataPositionLog
from lmlab.callbacks.nonfinite import NonFiniteLoss
from lmlab.callbacks.run_info import RunInfo
from lmlab.callbacks.throughput import Throughput, perf_summary

__all__ = [
    "BranchCheckpoints",
    "DataPositionLog",
    "NonFiniteLoss",
    "ResumableCheckpoint",
    "RunInfo",
    "Throughput",
    "perf_summary",
]
