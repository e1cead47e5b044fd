"""Schedule-Free optimizers train on one sequence of weights (y) and are evaluated on another (x, the average):
`optimizer.train()` / `optimizer.eval()` move the model's parameters between the two. This callback keeps the model
on x whenever it is not taking a training step, so validation, checkpoints (best and last), the test and the export
all see x, and puts it back on y before the next training batch.

Any optimizer with `train()`/`eval()` and a `train_mode` flag in its parameter groups (the `schedulefree` package's)
is switched; other optimizers are left alone, so the callback is always attached (TaskModule.configure_callbacks).
Outside `fit` (a `validate`/`test` that loads a checkpoint) nothing is touched: the weights loaded are already x.

A checkpoint taken between the two switches (a requeue checkpoint in the middle of an epoch) keeps y with its
optimizer state saying so (`train_mode` true): it resumes bitwise, but is not what evaluation should read; the
checkpoints evaluation reads (the monitored best, last.ckpt) are taken at validation or epoch ends, on x.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


def switchable(optimizer: Any) -> bool:
    return (
        callable(getattr(optimizer, "train", None))
        and callable(getattr(optimizer, "eval", None))
        and all("train_mode" in group for group in optimizer.param_groups)
    )


def in_train_mode(optimizer: Any) -> bool:
    return any(group["train_mode"] for group in optimizer.param_groups)


class ScheduleFreeModes(pl.Callback):
    """optimizer.train() before each training batch, optimizer.eval() before validation and at epoch/fit end."""

    @staticmethod
    def _set(trainer: pl.Trainer, train: bool) -> None:
        for optimizer in trainer.optimizers:
            if switchable(optimizer) and in_train_mode(optimizer) != train:
                optimizer.train() if train else optimizer.eval()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self._set(trainer, train=True)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._set(trainer, train=False)

    # Runs before the checkpoint callbacks' own on_train_epoch_end (Lightning orders checkpoint callbacks last).
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._set(trainer, train=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._set(trainer, train=False)
