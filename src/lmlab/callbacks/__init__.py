from lmlab.callbacks.throughput import Throughput, perf_summary

__all__ = ["Throughput", "perf_summary"]
