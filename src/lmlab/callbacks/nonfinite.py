"""A NaN/inf training loss ends the run with a clear error (or, on request, skips that batch's update)."""

from __future__ import annotations

import logging
import math

import pytorch_lightning as pl
import torch

from lmlab.errors import LmlabError

log = logging.getLogger("lmlab.nonfinite")


class NonFiniteLoss(pl.Callback):
    """`action=stop`: raise at the first non-finite loss (a diverged run would otherwise "complete" with NaN
    metrics). `action=skip`: drop that batch's gradients, so the optimizer leaves every parameter as it was (torch
    optimizers skip parameters without a gradient), and stop after `max_skips` such batches in a row.

    The check reads the loss before backward: one device sync per step, which the progress bar pays anyway."""

    def __init__(self, action: str = "stop", max_skips: int = 10) -> None:
        if action not in ("stop", "skip"):
            raise LmlabError(f"callbacks.nonfinite_loss.action={action!r} must be 'stop' or 'skip'.")
        if not isinstance(max_skips, int) or max_skips < 1:
            raise LmlabError(f"callbacks.nonfinite_loss.max_skips={max_skips!r} must be an integer >= 1.")
        self.action, self.max_skips = action, max_skips
        self._bad = False
        self.skipped = 0
        self._in_a_row = 0

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if bool(torch.isfinite(loss.detach()).all()):
            return
        where = f"step {trainer.global_step} (epoch {trainer.current_epoch})"
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else math.nan
        if self.action == "stop":
            raise LmlabError(
                f"the training loss is {float(loss.detach().float().mean())} at {where}: training diverged (lr now "
                f"{lr:g}). Lower optimizer.lr, add trainer.gradient_clip_val=1.0, or skip such batches with "
                f"callbacks.nonfinite_loss.action=skip."
            )
        self._bad = True

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._bad:
            self._in_a_row = 0
            return
        self._bad = False
        self.skipped += 1
        self._in_a_row += 1
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None
        log.warning("non-finite loss at step %d: update skipped (%d so far)", trainer.global_step, self.skipped)
        pl_module.log("train/skipped_batches", float(self.skipped), on_step=True, on_epoch=False)
        if self._in_a_row >= self.max_skips:
            raise LmlabError(
                f"{self._in_a_row} batches in a row had a non-finite loss (all skipped): training has "
                f"diverged. Lower optimizer.lr or add trainer.gradient_clip_val=1.0."
            )
