"""The progress bar refreshes by time, not by batch (issue 25): counted renders against a fake clock, in a real
Lightning fit, and the error for a bad refresh interval."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lmlab.callbacks.progress import TimedRichProgressBar
from lmlab.errors import LmlabError


class Linear(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("loss", loss, prog_bar=True)
        return loss

    def test_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("test_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader(batches: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(batches * 2, 4, generator=g), torch.randn(batches * 2, 1, generator=g))
    return DataLoader(data, batch_size=2)


class FakeClock:
    """Advances `tick` seconds at every read: the bar reads it once per batch end."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def fit(bar: TimedRichProgressBar, batches: int, tmp_path) -> pl.Trainer:
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(Linear(), train_dataloaders=loader(batches))
    return trainer


def test_bar_renders_once_per_interval_and_at_the_last_batch(tmp_path) -> None:
    # 40 batches, 0.25 s apart on the fake clock, refresh every 1 s: renders at 0.25, 1.25, ..., 9.25 (10) and at
    # the last batch (10.0 s) so the final count is exact: 11, where Lightning's bar renders 40 times.
    bar = TimedRichProgressBar(refresh_s=1.0, clock=FakeClock(0.25))
    trainer = fit(bar, 40, tmp_path)
    assert trainer.global_step == 40
    assert bar.renders == 11
    assert bar.refresh_rate == 1  # rich's live thread redraws once a second too, not Lightning's 100 times
    assert bar.train_progress_bar.completed == 40

    # The test loop is gated the same way, on the same clock: 40 batches 10 s -> 11 renders.
    trainer.test(trainer.lightning_module, dataloaders=loader(40), verbose=False)
    assert bar.renders == 22


def test_bar_with_the_real_clock_renders_at_most_once_per_interval(tmp_path) -> None:
    bar = TimedRichProgressBar(refresh_s=60.0)
    trainer = fit(bar, 200, tmp_path)
    assert trainer.global_step == 200
    assert bar.renders == 2  # the first batch and the last: 200 tiny steps take far less than a minute


def test_max_steps_mid_epoch_shows_the_steps_reached(tmp_path) -> None:
    bar = TimedRichProgressBar(refresh_s=100.0, clock=FakeClock(1.0))
    trainer = pl.Trainer(
        max_steps=7, callbacks=[bar], logger=False, enable_checkpointing=False, enable_model_summary=False,
        limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(Linear(), train_dataloaders=loader(20))
    assert bar.renders == 1 and bar.train_progress_bar.completed == 7


@pytest.mark.parametrize("bad", [0, -1.0, "often"])
def test_bad_refresh_interval_is_refused(bad: object) -> None:
    with pytest.raises(LmlabError, match=r"callbacks.progress_bar.refresh_s=.* must be a number of seconds > 0"):
        TimedRichProgressBar(refresh_s=bad)  # type: ignore[arg-type]
