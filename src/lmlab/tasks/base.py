"""The task contract: everything `train.py`, `eval.py`, `lmlab.optim`, `lmlab.models.peft` and the throughput callback
call on a task or on its LightningModule is declared here, so they hold no task words.

A task is two classes (and a config, `conf/task/<name>.yaml`, that the config group `task` picks):

- a `Task` (what train.py/eval.py see): its data checks, the tokenizer, its encoding (how texts become examples and
  batches: the `Encoding` protocol, defined in `lmlab.data.datamodule` and re-exported here), how its module is
  built and loaded, the monitor and its direction (checkpointing, early stopping, the sweeper and `lmlab-report`
  read them), what `best/...` means, the extra results for metrics.json and the files it leaves in the run dir
  (predictions, samples);
- a `TaskModule` (its LightningModule, `class M(TaskModule, pl.LightningModule)`): the loss and metrics, the two
  parts the optimizer's parameter groups work on (`backbone`, `head`), and its export.

Abstract hooks must be implemented (a class missing one cannot be instantiated: TypeError); the others have the
defaults documented on them. `tests/test_task_contract.py` holds a minimal task as a worked example.

`Encoding` stays in `lmlab.data.datamodule`: the datamodule annotates what it is given with it, and lmlab.data sits
below lmlab.tasks in the import layers (pyproject.toml), so it may not import it from here.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmlab.config import check_mode
from lmlab.data.datamodule import Encoding
from lmlab.data.tokenizer import BPE, BPE_TRAIN_BYTES, load_tokenizer, train_bpe
from lmlab.errors import LmlabError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ENCODING_HOOKS", "Encoding", "Task", "TaskModule", "from_scratch_for", "task_tokenizer"]

# task.score: which weights a run reports. final: the end of its budget (LM pre-training: a comparison at equal
# tokens); best_val: the checkpoint with the best validation monitor (classification: early-stopping style).
SCORES = ("final", "best_val")

# The `Encoding` methods the datamodule calls on what `Task.encoding()` returns (by default the task itself).
ENCODING_HOOKS = ("tokenize", "cache_options", "dataset", "collator")


def from_scratch_for(model_cfg: Mapping[str, Any], tokenizer: Any) -> Mapping[str, Any] | None:
    """A trained BPE decides the vocabulary: a random-init model is sized to it and uses its special tokens."""
    from_scratch = model_cfg.get("from_scratch")
    if from_scratch is None or model_cfg.get("tokenizer") != BPE:
        return from_scratch
    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    return {**dict(from_scratch), **ids}


def task_tokenizer(model_cfg: Mapping[str, Any], datamodule: Any) -> Any:
    """model.tokenizer: a name/path (HF), or `bpe`: a byte-level BPE trained on the training split only."""
    name = model_cfg.get("tokenizer") or model_cfg.get("name_or_path")
    if name == BPE:
        cache = datamodule.cache_dir.parent / "tokenizers" if datamodule.cache_dir else None
        return train_bpe(
            (ex.text for ex in datamodule.splits["train"]),
            int(model_cfg.get("bpe_vocab_size") or 4096),
            data_fingerprint=datamodule.data_fingerprint,
            cache_dir=cache,
            max_bytes=model_cfg.get("bpe_train_bytes") or BPE_TRAIN_BYTES,
            total_bytes=datamodule.train_text_bytes(),
        )
    if name is None:
        raise LmlabError(
            "model.tokenizer is null and so is model.name_or_path: set model.tokenizer=bpe (train one) "
            "or a tokenizer name/path."
        )
    return load_tokenizer(str(name), model_cfg.get("gguf_file"))


class Task(ABC):
    """What train.py/eval.py see; ClassificationTask, CausalLMTask, MaskedLMTask and MultiTask implement it.

    Must implement: `module_class`, and (unless `encoding` is overridden) the four `Encoding` methods
    `tokenize`, `cache_options`, `dataset`, `collator`, which the datamodule calls on the task itself.
    Attributes callers read: `name`, `monitor`, `mode` ('min' | 'max'), `optimized_metric`, `ignores`, `score`.
    """

    # The model.* keys the default `module` passes to the module's constructor; None: all of them (but _target_).
    model_keys: Sequence[str] | None = None
    reads_labels: bool = True  # False for LM tasks: dataset.split_rule=auto may then stream a corpus (hash split)

    def __init__(
        self,
        name: str,
        monitor: str,
        mode: str,
        optimized_metric: str,
        ignores: Sequence[str] = (),
        score: str = "best_val",
    ):
        if type(self).encoding is Task.encoding:
            missing = [hook for hook in ENCODING_HOOKS if not callable(getattr(self, hook, None))]
            if missing:
                raise TypeError(
                    f"Can't instantiate task {type(self).__name__}: it is its own Encoding (Task.encoding) but "
                    f"does not implement {', '.join(missing)}"
                )
        check_mode(mode)
        if score not in SCORES:
            raise LmlabError(
                f"task.score={score!r} is not one of {list(SCORES)} (final: the weights at the end of the budget; "
                f"best_val: the checkpoint with the best {monitor})."
            )
        self.score = score  # which weights metrics.json reports (train.py; callbacks.checkpoint.scored_checkpoint)
        self.name = name
        self.monitor = monitor  # a validation metric, e.g. val/loss
        self.mode = mode
        self.optimized_metric = optimized_metric
        self.ignores = list(ignores)

    # ---- building: data checks, tokenizer, encoding, the LightningModule
    def prepare(self, datamodule: Any) -> None:  # noqa: B027 (optional hook)
        """Check the loaded splits for this task (labels, empty texts, ...) and note what the encoding needs.
        Default: nothing to check."""

    def tokenizer(self, model_cfg: Mapping[str, Any], datamodule: Any) -> Any:
        """The tokenizer for `model_cfg` (called after `prepare`). Default: `task_tokenizer` (model.tokenizer, or
        model.name_or_path's; `bpe` trains one on the training split)."""
        return task_tokenizer(model_cfg, datamodule)

    def encoding(self) -> Encoding | Mapping[str, Encoding]:
        """What `datamodule.connect` receives. Default: the task itself, which then implements `Encoding`
        (`tokenize`, `cache_options`, `dataset`, `collator`); a multi-task datamodule takes one per sub-task."""
        return self  # type: ignore[return-value]

    @abstractmethod
    def module_class(self) -> type[TaskModule]:
        """The task's LightningModule class (a TaskModule); checkpoints are loaded with its `load_from_checkpoint`,
        and `lmlab.models.peft` reads its constructor's signature (a `peft` parameter = adapters supported)."""

    def module_kwargs(self, model_cfg: Mapping[str, Any], datamodule: Any) -> dict[str, Any]:
        """Constructor arguments of the module beyond the model config (e.g. the labels), after checking the model
        config against the data. Default: none."""
        return {}

    def module(
        self,
        model_cfg: Mapping[str, Any],
        datamodule: Any,
        tokenizer: Any,
        optimizer: Mapping[str, Any] | None,
        scheduler: Mapping[str, Any] | None,
    ) -> TaskModule:
        """A new module: `module_class()` called with the model config's keys (`model_keys`), `from_scratch` sized
        to a trained BPE, `module_kwargs`, the optimizer and scheduler configs and the connected tokenizer (as
        `tokenizer_object`)."""
        keys = self.model_keys if self.model_keys is not None else [k for k in model_cfg if k != "_target_"]
        kwargs = {k: model_cfg[k] for k in keys if k in model_cfg}
        kwargs["from_scratch"] = from_scratch_for(model_cfg, tokenizer)
        return self.module_class()(
            **kwargs,
            **self.module_kwargs(model_cfg, datamodule),
            optimizer=optimizer or {},
            scheduler=scheduler or {},
            tokenizer_object=tokenizer,
        )

    def connect(self, datamodule: Any, model_cfg: Mapping[str, Any]) -> Any:
        """Load and check the data, and connect the tokenizer and this task's encoding; returns the tokenizer."""
        datamodule.task_reads_labels = self.reads_labels  # dataset.split_rule=auto: hash only for LM tasks
        datamodule.load()
        self.prepare(datamodule)
        tokenizer = self.tokenizer(model_cfg, datamodule)
        datamodule.connect(tokenizer, self.encoding())
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
        """The module of a checkpoint this task wrote, with the data connected as in training (overrides check
        that the checkpoint matches the data, e.g. its label map)."""
        tokenizer = self.connect(datamodule, model_cfg)
        return self.module_class().load_from_checkpoint(
            ckpt_path, map_location="cpu", **self.load_kwargs(datamodule, tokenizer)
        )

    def load_kwargs(self, datamodule: Any, tokenizer: Any) -> dict[str, Any]:
        """Runtime objects a checkpoint does not store (they are not hyperparameters). Default: the tokenizer."""
        return {"tokenizer_object": tokenizer}

    def configure_trainer(self, trainer: Any, datamodule: Any, global_batch: int) -> None:  # noqa: B027 (optional hook)
        """Adjust the built trainer (e.g. a token budget becomes max_steps). Default: nothing."""

    # ---- results
    def meta(self) -> dict[str, Any]:
        """metrics.json's `meta/*` keys of the task."""
        return {"meta/task": self.name, "meta/monitor": self.monitor, "meta/mode": self.mode, "meta/score": self.score}

    def best_key(self) -> str:
        """metrics.json's key of the selected checkpoint's monitor value."""
        return "best/" + self.monitor.replace("/", "_")  # val/f1_macro -> best/val_f1_macro

    def results(self, module: Any, datamodule: Any, logged: Mapping[str, float]) -> dict[str, Any]:
        """metrics.json's task part from the logged val/test metrics of the evaluated weights. Default: the logged
        numbers and `best_key()`."""
        metrics = {k: float(v) for k, v in logged.items()}
        value = metrics.get(self.monitor)
        metrics[self.best_key()] = value if value is not None and not math.isnan(value) else None
        return metrics

    def write_outputs(  # noqa: B027 (optional hook)
        self, run_dir: Path, module: Any, datamodule: Any, split: str, loggers: Sequence[Any] = ()
    ) -> None:
        """Files beside metrics.json after `split` was evaluated (predictions, samples). Default: none."""


class TaskModule(ABC):
    """The LightningModule side of the contract (mixed in before pl.LightningModule).

    Must implement: `backbone` and `head` (the two parts lmlab's parameter groups optimize: layer-wise lr decay,
    head lr, no decay on norms and biases; the throughput callback reads the backbone's config for FLOPs),
    `_eval_step` (one val/test batch into the stage's metrics), `_log_epoch_metrics` (log a stage's metrics at the
    epoch end) and `_export_weights` (what `export_pretrained` writes besides the tokenizer).

    Given here: `validation_step`/`test_step` (-> `_eval_step`), the epoch ends (-> `_log_epoch_metrics`),
    `configure_optimizers`, `attn_implementation`, `export_pretrained`, and the guards `_use_tokenizer` and
    `_freeze`. Each module's `__init__` calls `self.save_hyperparameters(ignore=["tokenizer_object"])` itself
    (Lightning reads the hyperparameters from the calling frame).
    """

    tokenizer: Any  # the connected tokenizer; export_pretrained saves it beside the weights

    @property
    @abstractmethod
    def backbone(self) -> nn.Module:
        """The pretrained body (embeddings + blocks): a view, not an extra registered module."""

    @property
    @abstractmethod
    def head(self) -> nn.Module:
        """Everything trained on top of the backbone (a view, e.g. an nn.ModuleList of the other children)."""

    @property
    def attn_implementation(self) -> str:
        """The attention kernel transformers actually chose (sdpa, eager, flash_attention_2...): perf/* reads it."""
        return str(self.backbone.config._attn_implementation)

    # ---- steps and epoch ends
    @abstractmethod
    def _eval_step(self, stage: str, batch: Mapping[str, Any], dataloader_idx: int = 0) -> None:
        """Update the `stage` ('val' | 'test') metrics with one batch; `dataloader_idx`: which eval loader (the
        sub-task of a multi-task module; 0 with one loader)."""

    @abstractmethod
    def _log_epoch_metrics(self, stage: str) -> None:
        """Compute, log (`<stage>/<name>`) and reset the stage's metrics at the epoch end."""

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, dataloader_idx)

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
            self.hparams.optimizer,  # type: ignore[attr-defined]
            self.hparams.scheduler,  # type: ignore[attr-defined]
            int(self.trainer.estimated_stepping_batches),  # type: ignore[attr-defined]
        )

    # ---- export
    @abstractmethod
    def _export_weights(self, directory: Path) -> None:
        """Write the model into `directory` (exists): `save_pretrained`, a peft adapter dir, extra head files."""

    def export_pretrained(self, directory: Path) -> None:
        """The run's `export/` (cfg.export_model): the weights (`_export_weights`) and the tokenizer, loadable with
        transformers and as a `model.init_from` parent."""
        from lmlab.rundir import follow_umask

        directory.mkdir(parents=True, exist_ok=True)
        self._export_weights(directory)
        self.tokenizer.save_pretrained(directory)
        follow_umask(directory)  # safetensors writes 0600 files: teammates could not read the export

    # ---- construction guards
    def _use_tokenizer(self, tokenizer_object: Any) -> None:
        """The tokenizer the task connected to the data (a constructor argument, not a hyperparameter)."""
        if tokenizer_object is None:
            raise ValueError(f"{type(self).__name__} needs tokenizer_object (the task passes it)")
        self.tokenizer = tokenizer_object

    def _freeze(self, embeddings: bool, first_n_layers: int) -> None:
        """model.freeze_embeddings / model.freeze_layers: no gradients for the backbone's embeddings and first
        blocks."""
        from lmlab.optim import find_layers

        if embeddings:
            self.backbone.get_input_embeddings().requires_grad_(False)
            for name, module in self.backbone.named_children():
                if "embed" in name:
                    module.requires_grad_(False)
        if first_n_layers:
            prefix, count = find_layers(self.backbone)
            if first_n_layers > count:
                raise LmlabError(f"model.freeze_layers={first_n_layers} but the model has {count} layers.")
            blocks = self.backbone.get_submodule(prefix)
            for block in list(blocks)[:first_n_layers]:
                block.requires_grad_(False)
