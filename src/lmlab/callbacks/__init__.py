from lmlab.callbacks.run_info import RunInfo
from lmlab.callbacks.throughput import Throughput, perf_summary

__all__ = ["RunInfo", "Throughput", "perf_summary"]
