"""Statistics report over a multirun (sweep) directory; console script `lmlab-report`."""

from lmlab.report.cli import main

__all__ = ["main"]
