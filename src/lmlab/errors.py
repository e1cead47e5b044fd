"""The exceptions every module may raise or catch: a leaf module with no lmlab imports.

`LmlabError` is a problem in the user's input, shown without a traceback; `Interrupted` and `RequeueExit` end
a run on a signal. Kept free of heavy imports: train.py catches them before torch is imported."""

from __future__ import annotations

import signal
from pathlib import Path


class LmlabError(Exception):
    """A problem in the user's input (config, data, paths): shown without a stack trace."""


class RequeueExit(SystemExit):
    """Raised after the job was requeued: the attempt ends, but the job did not fail (status.json: requeued)."""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM ended the run; `checkpoint` is where it can resume from (None: the last epoch's).

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way can swallow it. Here, beside
    RequeueExit, so that run_task can catch it before lmlab.requeue (torch) is imported."""

    def __init__(self, signum: int, checkpoint: Path | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.checkpoint = signum, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
