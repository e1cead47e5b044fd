"""A Rich progress bar that refreshes by time, not by batch.

Lightning's RichProgressBar updates its bars, reads the progress-bar metrics (a `.item()`, i.e. a device sync, per
logged tensor) and re-renders after every batch, and its live display redraws `refresh_rate` (100) times a second
from a thread that competes with training for the GIL. At a few ms per step that is a visible share of the step,
and under CPU contention far more (the issue measured llama_tiny steps 23x slower). This bar does the per-batch work
at most once every `refresh_s` seconds (and at the last batch of a loop, so the final counts are exact), and its
live display redraws at the same rate. Each loop's bar shows at its first batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar

from lmlab.errors import LmlabError


class TimedRichProgressBar(RichProgressBar):
    """RichProgressBar whose batch-end updates run at most every `refresh_s` seconds of `clock`.

    `renders` counts the updates that ran (tests/test_progress_bar.py checks it against a fake clock)."""

    def __init__(
        self, refresh_s: float = 0.5, leave: bool = False, clock: Callable[[], float] = time.monotonic, **kwargs: Any
    ) -> None:
        if not isinstance(refresh_s, (int, float)) or not refresh_s > 0:
            raise LmlabError(
                f"callbacks.progress_bar.refresh_s={refresh_s!r} must be a number of seconds > 0 (e.g. 0.5); "
                f"callbacks.progress_bar=null turns the bar off."
            )
        # Rich's live display redraws from its own thread this many times a second (Lightning's default: 100).
        super().__init__(refresh_rate=max(1, math.ceil(1 / refresh_s)), leave=leave, **kwargs)
        self.refresh_s = float(refresh_s)
        self.clock = clock
        self.renders = 0
        self._last = -math.inf

    def _due(self, last: Callable[[], bool]) -> bool:
        """Whether this batch end renders. `last` is called only on an enabled bar: a disabled one (DDP ranks > 0)
        never set the loop's current dataloader, which the last-batch test reads."""
        if self.is_disabled:
            return False
        now = self.clock()
        if last() or now - self._last >= self.refresh_s:
            self._last = now
            self.renders += 1
            return True
        return False

    # A loop's bar is shown at its first batch, whatever the last loop rendered.
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = -math.inf
        super().on_train_epoch_start(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = -math.inf
        super().on_validation_start(trainer, pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = -math.inf
        super().on_test_start(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._due(lambda: trainer.fit_loop.epoch_loop.batch_progress.is_last_batch):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # trainer.max_steps may end an epoch before its last batch: show the count it really reached.
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        if self.train_progress_bar_id is not None:
            self._update(self.train_progress_bar_id, done)
        super().on_train_epoch_end(trainer, pl_module)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._due(lambda: batch_idx + 1 >= self.total_val_batches_current_dataloader):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._due(lambda: batch_idx + 1 >= self.total_test_batches_current_dataloader):
            super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
