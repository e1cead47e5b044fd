"""Worker processes for data preparation (tokenization, the near-copy search): a forked `multiprocessing.Pool`
whose workers take the default signal dispositions back.

Why: a run installs Python handlers for SIGINT/SIGTERM/SIGUSR2 (interrupt-safe runs, SLURM requeue), and forked
workers inherit them. `Pool.terminate()` stops workers with SIGTERM; a worker with a Python handler only sets a
flag and goes back to waiting on the task queue (PEP 475 retries the wait), so `terminate()` joined it forever:
a 1 GB preparation hung there after its last shard, and a test once did. Workers also must not act on a requeue
signal meant for the run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
from collections.abc import Iterator
from multiprocessing.pool import Pool


def _default_signals() -> None:
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides, then stops us


@contextlib.contextmanager
def fork_pool(processes: int) -> Iterator[Pool]:
    """A forked pool (workers inherit what the parent built, e.g. the tokenizer) closed and joined on success and
    terminated on an error; either way no worker outlives the block."""
    pool = multiprocessing.get_context("fork").Pool(processes, initializer=_default_signals)
    try:
        yield pool
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()
