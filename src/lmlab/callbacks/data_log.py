"""`dataset.log_positions=true`: which global positions of the training order each batch read, per rank.

One JSON line per training batch in `<run dir>/data_positions.rank<r>.jsonl`: `epoch`, `batch` (the loop's index
in the epoch), `step` (the optimizer step after it), `positions` ([first, stop) of the epoch's global order; null
for a sampler without one) and `blocks` (the dataset indices it took). Lines are written as they happen (line
buffered: a kill loses none) and appended by a resumed attempt in the same run dir, so a step that the killed
attempt did after its last checkpoint appears twice: the later line is the one the run's weights saw.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import pytorch_lightning as pl

from lmlab.rundir.files import DATA_POSITIONS


class DataPositionLog(pl.Callback):
    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._file: IO[str] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = self.run_dir / DATA_POSITIONS.format(rank=trainer.global_rank)
        self._file = path.open("a", buffering=1)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._file is None:
            return
        sampler = getattr(trainer.datamodule, "train_sampler", None)
        span = sampler.batch_positions(batch_idx) if hasattr(sampler, "batch_positions") else None
        record = {
            "epoch": trainer.current_epoch,
            "batch": batch_idx,
            "step": trainer.global_step,
            "positions": list(span) if span else None,
            "blocks": batch["idx"].tolist() if "idx" in batch else None,
        }
        self._file.write(json.dumps(record) + "\n")

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()
