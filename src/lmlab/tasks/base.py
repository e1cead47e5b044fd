"""What every task provides. `train.py` and `eval.py` call only this interface, so they hold no task words.

A task owns: its data checks and encoding (how texts become examples and batches: `lmlab.data.Encoding`), the
LightningModule (loss, metrics), the monitor and its direction (checkpointing, early stopping, the sweeper and
`lmlab-report` read them), what `best/...` means, the extra results for metrics.json and the files it leaves in
the run dir (predictions, samples). The config group `task` picks one: `conf/task/<name>.yaml`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError


class Task:
    """Base class; see ClassificationTask and CausalLMTask for the two implementations."""

    def __init__(self, name: str, monitor: str, mode: str, optimized_metric: str, ignores: Sequence[str] = ()):
        if mode not in ("min", "max"):
            raise LmlabError(f"task.mode={mode!r} must be 'min' or 'max'.")
        self.name = name
        self.monitor = monitor  # a validation metric, e.g. val/loss
        self.mode = mode
        self.optimized_metric = optimized_metric
        self.ignores = list(ignores)

    # ---- building: data checks, tokenizer, the LightningModule
    def prepare(self, datamodule: Any) -> None:
        """Check the loaded splits for this task (labels, empty texts, ...)."""

    def tokenizer(self, model_cfg: Mapping[str, Any], datamodule: Any) -> Any:
        raise NotImplementedError

    def module(
        self,
        model_cfg: Mapping[str, Any],
        datamodule: Any,
        tokenizer: Any,
        optimizer: Mapping[str, Any] | None,
        scheduler: Mapping[str, Any] | None,
    ) -> Any:
        raise NotImplementedError

    def module_class(self) -> type:
        raise NotImplementedError

    def connect(self, datamodule: Any, model_cfg: Mapping[str, Any]) -> Any:
        """Load and check the data, and connect the tokenizer and this task's encoding; returns the tokenizer."""
        datamodule.load()
        self.prepare(datamodule)
        tokenizer = self.tokenizer(model_cfg, datamodule)
        datamodule.connect(tokenizer, self)
        return tokenizer

    def build(
        self,
        datamodule: Any,
        model_cfg: Mapping[str, Any],
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
    ) -> Any:
        """The LightningModule for `model_cfg`, with the data connected (and `model.init_from`'s weights)."""
        from lmlab.models.init_from import initializing_from

        init_from = model_cfg.get("init_from")
        tokenizer = self.connect(datamodule, model_cfg)
        # model.init_from is applied where backbones are loaded (lmlab.models.init_from); it is not a module
        # hyperparameter, so a checkpoint of this run loads without the parent.
        model_cfg = {k: v for k, v in model_cfg.items() if k != "init_from"}
        with initializing_from(init_from, tokenizer):
            return self.module(model_cfg, datamodule, tokenizer, optimizer, scheduler)

    def load(self, ckpt_path: Path, datamodule: Any, model_cfg: Mapping[str, Any]) -> Any:
        """The module of a checkpoint this task wrote, with the data connected as in training."""
        tokenizer = self.connect(datamodule, model_cfg)
        return self.module_class().load_from_checkpoint(
            ckpt_path, map_location="cpu", **self.load_kwargs(datamodule, tokenizer)
        )

    def load_kwargs(self, datamodule: Any, tokenizer: Any) -> dict[str, Any]:
        """Runtime objects a checkpoint does not store (they are not hyperparameters)."""
        return {}

    def configure_trainer(self, trainer: Any, datamodule: Any, global_batch: int) -> None:
        """Adjust the built trainer (e.g. a token budget becomes max_steps)."""

    # ---- results
    def meta(self) -> dict[str, Any]:
        return {"meta/task": self.name, "meta/monitor": self.monitor, "meta/mode": self.mode}

    def best_key(self) -> str:
        return "best/" + self.monitor.replace("/", "_")  # val/f1_macro -> best/val_f1_macro

    def results(self, module: Any, datamodule: Any, logged: Mapping[str, float]) -> dict[str, Any]:
        """metrics.json's task part from the logged val/test metrics of the evaluated weights."""
        metrics = {k: float(v) for k, v in logged.items()}
        value = metrics.get(self.monitor)
        metrics[self.best_key()] = value if value is not None and not math.isnan(value) else None
        return metrics

    def write_outputs(
        self, run_dir: Path, module: Any, datamodule: Any, split: str, loggers: Sequence[Any] = ()
    ) -> None:
        """Files beside metrics.json after `split` was evaluated (predictions, samples)."""


class TaskModule:
    """The LightningModule hooks every task's module shares (mixed in before pl.LightningModule): each stage's
    metrics are logged by the module's `_log_epoch_metrics(stage)` at the epoch end, and its `backbone` and `head`
    are optimized with lmlab's parameter groups (layer-wise lr decay, head lr, no decay on norms and biases)."""

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def configure_callbacks(self) -> list[Any]:
        # Schedule-Free optimizers: validation, checkpoints, test and export must see the eval-mode weights.
        from lmlab.callbacks.schedule_free import ScheduleFreeModes

        return [ScheduleFreeModes()]

    def configure_optimizers(self) -> Any:
        from lmlab.optim import lightning_optimizers

        return lightning_optimizers(
            self.backbone,
            self.head,
            self.hparams.optimizer,
            self.hparams.scheduler,
            int(self.trainer.estimated_stepping_batches),
        )
