"""The task contract (lmlab.tasks.base): every task and module implements its abstract hooks, a class missing one
cannot be instantiated, and a new task is one module (below: `MeanPoolTask` + `MeanPoolModule`) composed with an
existing task YAML, trained, evaluated and exported by train.py through the contract alone."""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torchmetrics
from torch import nn
from torch.nn import functional as F

import lmlab.tasks
from lmlab import rundir
from lmlab.data.datamodule import FeatureDataset, PadCollator
from lmlab.data.sources import Example
from lmlab.data.splits import label_names
from lmlab.models.backbone import load_backbone
from lmlab.tasks.base import ENCODING_HOOKS, Task, TaskModule

# Every task and module lmlab ships (the contract's own two classes aside).
SHIPPED = [getattr(lmlab.tasks, name) for name in lmlab.tasks.__all__ if name not in ("Task", "TaskModule")]
TASKS = [cls for cls in SHIPPED if issubclass(cls, Task)]
MODULES = [cls for cls in SHIPPED if issubclass(cls, TaskModule)]

# What the callers use on a task (train, eval, lmlab.models.peft) and on its module (train, lmlab.optim via
# configure_optimizers, the throughput callback): all declared by the contract.
TASK_HOOKS = ("build", "load", "connect", "configure_trainer", "meta", "best_key", "results", "write_outputs")
MODULE_HOOKS = ("backbone", "head", "attn_implementation", "export_pretrained", "configure_optimizers")


# ---- a minimal new task: mean-pooled encoder + linear head on the dataset's labels, loss only
class MeanPoolModule(TaskModule, pl.LightningModule):
    def __init__(
        self,
        name_or_path: str,
        labels: Sequence[str],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any],
        from_scratch: Mapping[str, Any] | None = None,
        tokenizer_object: Any = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer_object"])
        self._use_tokenizer(tokenizer_object)
        self.encoder = load_backbone(name_or_path, auto_class="AutoModel", from_scratch=from_scratch)
        self.classifier = nn.Linear(self.encoder.config.hidden_size, len(labels))
        self.losses = nn.ModuleDict({stage: torchmetrics.MeanMetric() for stage in ("val", "test")})
        self.train()

    @property
    def backbone(self) -> nn.Module:
        return self.encoder

    @property
    def head(self) -> nn.Module:
        return self.classifier

    def loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return F.cross_entropy(self.classifier((hidden * mask).sum(1) / mask.sum(1)), batch["labels"])

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, batch_size=len(batch["labels"]))
        return loss

    def _eval_step(self, stage: str, batch: Mapping[str, torch.Tensor], dataloader_idx: int = 0) -> None:
        self.losses[stage].update(self.loss(batch), len(batch["labels"]))

    def _log_epoch_metrics(self, stage: str) -> None:
        self.log(f"{stage}/loss", self.losses[stage].compute())
        self.losses[stage].reset()

    def _export_weights(self, directory: Path) -> None:
        self.encoder.save_pretrained(directory)


class MeanPoolTask(Task):
    model_keys = ("name_or_path", "from_scratch")

    def prepare(self, datamodule: Any) -> None:
        self.labels = label_names(datamodule.splits, None)

    def tokenize(self, tokenizer: Any, examples: Sequence[Example], max_length: int) -> dict[str, list]:
        texts = [ex.text for ex in examples]
        return dict(tokenizer(texts, truncation=True, max_length=max_length, return_attention_mask=False))

    def cache_options(self) -> dict[str, Any]:
        return {"truncation": True}

    def dataset(self, split: str, columns: Mapping[str, Any], examples: Sequence[Example]) -> FeatureDataset:
        return FeatureDataset(columns, [self.labels.index(ex.label) for ex in examples])

    def collator(self, tokenizer: Any, pad_to_multiple_of: int | None) -> PadCollator:
        return PadCollator(tokenizer.pad_token_id, tokenizer.padding_side, pad_to_multiple_of)

    def module_class(self) -> type:
        return MeanPoolModule

    def module_kwargs(self, model_cfg: Mapping[str, Any], datamodule: Any) -> dict[str, Any]:
        return {"labels": self.labels}


# ---- (a) the shipped tasks and modules implement the contract; a class missing a hook is refused
@pytest.mark.parametrize("cls", TASKS + MODULES, ids=lambda cls: cls.__name__)
def test_shipped_classes_implement_every_abstract_hook(cls: type) -> None:
    assert not inspect.isabstract(cls), sorted(cls.__abstractmethods__)
    if issubclass(cls, Task):
        assert all(callable(getattr(cls, hook)) for hook in TASK_HOOKS)
        if cls.encoding is Task.encoding:  # the task is its own Encoding
            assert all(callable(getattr(cls, hook, None)) for hook in ENCODING_HOOKS), cls
    else:
        assert all(hasattr(cls, hook) for hook in MODULE_HOOKS)
        assert issubclass(cls, pl.LightningModule)


def test_contract_declares_the_hooks_callers_use() -> None:
    assert len(TASKS) == len(MODULES) == 4 and set(SHIPPED) == set(TASKS + MODULES)
    assert {"module_class"} <= Task.__abstractmethods__
    assert {"backbone", "head", "_eval_step", "_log_epoch_metrics", "_export_weights"} <= (
        TaskModule.__abstractmethods__
    )
    assert all(callable(getattr(Task, hook)) for hook in TASK_HOOKS)
    assert all(hasattr(TaskModule, hook) for hook in MODULE_HOOKS)


def _without(cls: type, hook: str) -> type:
    """A copy of `cls` (a complete implementation) without `hook`, deriving from the contract's bases directly."""
    skip = {hook, "__dict__", "__weakref__", "__abstractmethods__", "_abc_impl"}
    return type(f"{cls.__name__}Without_{hook}", cls.__bases__, {k: v for k, v in vars(cls).items() if k not in skip})


@pytest.mark.parametrize("hook", sorted(Task.__abstractmethods__) + list(ENCODING_HOOKS))
def test_a_task_missing_a_hook_cannot_be_instantiated(hook: str) -> None:
    MeanPoolTask("mini", "val/loss", "min", "best/val_loss")  # complete
    with pytest.raises(TypeError, match=hook):
        _without(MeanPoolTask, hook)("mini", "val/loss", "min", "best/val_loss")


@pytest.mark.parametrize("hook", sorted(TaskModule.__abstractmethods__))
def test_a_module_missing_a_hook_cannot_be_instantiated(hook: str) -> None:
    with pytest.raises(TypeError, match=hook):
        _without(MeanPoolModule, hook)("unused", ["a", "b"], {}, {}, tokenizer_object=object())


def test_module_needs_the_connected_tokenizer() -> None:
    with pytest.raises(ValueError, match="MeanPoolModule needs tokenizer_object"):
        MeanPoolModule("unused", ["a", "b"], {}, {})


# ---- (b) a new task = one module + a task config: train.py runs it through the contract alone
def test_a_minimal_new_task_trains_evaluates_and_exports(train_tiny: Any) -> None:
    metrics, run_dir = train_tiny(
        "task=classification",
        f"task._target_={__name__}.MeanPoolTask",
        "task.name=mean_pool",
        "task.monitor=val/loss",
        "task.mode=min",
        "task.optimized_metric=best/val_loss",
        "export_model=true",
    )
    assert metrics["meta/task"] == "mean_pool" and metrics["meta/mode"] == "min"
    assert metrics["best/val_loss"] == metrics["val/loss"] > 0 and metrics["test/loss"] > 0
    assert metrics["perf/attn_implementation"]  # the contract's default reads the backbone's config
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["best/val_loss"] == metrics["best/val_loss"]
    export = run_dir / rundir.EXPORT
    assert (export / "config.json").is_file() and (export / "tokenizer_config.json").is_file()
