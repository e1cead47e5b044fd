"""The run's identity inside every checkpoint it writes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class RunInfo(Callback):
    """Stores the resolved run config and the data fingerprint under checkpoint["lmlab"]: `eval.py` rebuilds the
    task, the exact data split and the model from a checkpoint alone."""

    def __init__(self, info: Mapping[str, Any]) -> None:
        self.info = dict(info)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["lmlab"] = self.info
