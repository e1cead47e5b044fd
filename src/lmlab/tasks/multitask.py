"""Multi-task classification: one shared encoder, one head per sub-task, batches mixed by a sub-task sampler.

`MultiTask` is what train.py/eval.py see (lmlab.tasks.base); `MultiTaskClassifier` is its LightningModule. The
sub-tasks and the sampler live in the dataset config (lmlab.data.multitask.MultiTaskDataModule); each sub-task is
encoded by its own ClassificationTask (labels, checks, tokenization), so a sub-task's data behaves as in
task=classification. The objective is sum_t weight_t * loss_t over the batches the sampler draws; the monitor is
val/mean_primary, the mean over sub-tasks of `task.primary` (val/<sub-task>/f1_macro by default).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import nn

from lmlab import rundir
from lmlab.errors import LmlabError
from lmlab.models.backbone import compile_in_place, load_backbone
from lmlab.tasks.base import Task, TaskModule
from lmlab.tasks.classification import (
    ClassificationTask,
    PooledHead,
    classification_loss,
    classification_metrics,
    scores_and_preds,
)

log = logging.getLogger(__name__)

PRIMARY = ("f1_macro", "f1_micro", "f1_weighted", "acc", "precision", "recall")  # higher is better, all
# The model.* keys a multi-task model uses (others, e.g. model.problem_type, are classification-only).
MODEL_KEYS = (
    "name_or_path",
    "tokenizer",
    "bpe_vocab_size",
    "bpe_train_bytes",
    "gguf_file",
    "pooling",
    "dropout",
    "freeze_embeddings",
    "freeze_layers",
    "threshold",
    "attn_implementation",
    "compile",
    "compile_dynamic",
    "compile_mode",
    "config_overrides",
    "from_scratch",
)


class MultiTaskClassifier(TaskModule, pl.LightningModule):
    """An HF encoder (AutoModel) shared by every sub-task, and a pooled linear head per sub-task."""

    def __init__(
        self,
        name_or_path: str | None,
        subtasks: Sequence[Mapping[str, Any]],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any],
        pooling: str = "native",
        dropout: float | None = None,
        threshold: float = 0.5,
        from_scratch: Mapping[str, Any] | None = None,
        config_overrides: Mapping[str, Any] | None = None,
        attn_implementation: str | None = None,
        freeze_embeddings: bool = False,
        freeze_layers: int = 0,
        tokenizer: str | None = None,
        bpe_vocab_size: int | None = None,
        bpe_train_bytes: int | None = None,
        gguf_file: str | None = None,
        compile: bool | str = False,
        compile_dynamic: bool | None = None,
        compile_mode: str | None = None,
        tokenizer_object: Any = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer_object"])
        self._use_tokenizer(tokenizer_object)
        self.subtasks = [dict(s) for s in subtasks]  # name, labels, problem_type, weight, in dataloader order
        self.names = [s["name"] for s in self.subtasks]
        self.threshold = threshold
        # Through load_backbone, so model.init_from (a pretrain -> finetune chain) applies to the shared encoder.
        self.encoder = load_backbone(
            name_or_path,
            auto_class="AutoModel",
            from_scratch=from_scratch,
            config_overrides=dict(config_overrides or {}),
            attn_implementation=attn_implementation,
            gguf_file=gguf_file,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        config = self.encoder.config
        p = getattr(config, "hidden_dropout_prob", 0.1) if dropout is None else dropout
        # native: the encoder's own pooler (BERT: tanh(dense(CLS))) where it has one, else the CLS token.
        self.heads = nn.ModuleDict(
            {
                s["name"]: PooledHead(
                    config.hidden_size,
                    len(s["labels"]) if s["problem_type"] != "binary" else 1,
                    "cls" if pooling == "native" else pooling,
                    p,
                )
                for s in self.subtasks
            }
        )
        self._freeze(freeze_embeddings, freeze_layers)  # same rules as single-task
        self.compiled = compile_in_place(self.encoder, compile, compile_dynamic, compile_mode)
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {s["name"]: classification_metrics(s["problem_type"], len(s["labels"])) for s in self.subtasks}
                )
                for stage in ("val", "test")
            }
        )
        self.losses = nn.ModuleDict(
            {stage: nn.ModuleDict({n: torchmetrics.MeanMetric() for n in self.names}) for stage in ("val", "test")}
        )
        self.details: dict[str, dict[str, float]] = {}
        self.predictions: dict[str, list[dict[str, Any]]] = {n: [] for n in self.names}
        self.train()  # from_pretrained returns eval mode, and Lightning keeps each module's mode as found

    # ---- the parts optimizer groups, freezing and the throughput callback work on
    @property
    def backbone(self) -> nn.Module:
        return self.encoder

    @property
    def head(self) -> nn.Module:
        return self.heads

    # ---- forward and loss
    def forward(self, batch: Mapping[str, torch.Tensor], task: int) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "idx", "task")}
        out = self.encoder(**inputs)
        name = self.names[task]
        pooler = getattr(out, "pooler_output", None)
        if self.hparams.pooling == "native" and pooler is not None:
            head = self.heads[name]
            return head.classifier(head.dropout(pooler))
        return self.heads[name](out.last_hidden_state, inputs["attention_mask"])

    def loss(self, task: int, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return classification_loss(self.subtasks[task]["problem_type"], logits, labels)

    def scores_and_preds(self, task: int, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return scores_and_preds(self.subtasks[task]["problem_type"], logits, self.threshold)

    # ---- steps
    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        task = int(batch["task"])
        raw = self.loss(task, self(batch, task), batch["labels"])
        n = len(batch["labels"])
        # The objective: each sub-task's loss times its weight (task.weights), on the batches the sampler draws.
        loss = float(self.subtasks[task]["weight"]) * raw
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self.log(f"train/{self.names[task]}/loss", raw, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def _eval_step(self, stage: str, batch: Mapping[str, torch.Tensor], dataloader_idx: int = 0) -> None:
        task = dataloader_idx  # one eval loader per sub-task, in self.names' order
        name = self.names[task]
        logits = self(batch, task)
        labels = batch["labels"]
        self.losses[stage][name].update(self.loss(task, logits, labels), len(labels))
        scores, preds = self.scores_and_preds(task, logits)
        target = labels.long()
        self.metrics[stage][name].update(preds, target)
        if stage == "test":
            for i, label, pred, score in zip(batch["idx"].tolist(), target.tolist(), preds.tolist(), scores.tolist()):
                self.predictions[name].append({"idx": i, "label": label, "pred": pred, "scores": score})

    def on_test_epoch_start(self) -> None:
        self.predictions = {n: [] for n in self.names}

    def _log_epoch_metrics(self, stage: str) -> None:
        values: dict[str, float] = {}
        self.details[stage] = {}
        primary, losses = [], []
        for s in self.subtasks:
            name = s["name"]
            computed = self.metrics[stage][name].compute()
            self.metrics[stage][name].reset()
            per_class = computed.pop("f1_per_class")
            computed.pop("confusion_matrix")
            # Plain scalars only (a report column each): per-class F1 as <stage>/<sub-task>/f1_per_class/<label>.
            self.details[stage].update(
                {f"{stage}/{name}/f1_per_class/{label}": float(v) for label, v in zip(s["labels"], per_class.tolist())}
            )
            loss = float(self.losses[stage][name].compute())
            self.losses[stage][name].reset()
            values.update({f"{stage}/{name}/{k}": float(v) for k, v in computed.items()})
            values[f"{stage}/{name}/loss"] = loss
            primary.append(values[f"{stage}/{name}/{s['primary']}"])
            losses.append(loss)
        values[f"{stage}/mean_primary"] = sum(primary) / len(primary)
        values[f"{stage}/loss"] = sum(losses) / len(losses)  # unweighted mean over sub-tasks
        # Already reduced over the whole split by torchmetrics; logged as plain numbers.
        self.log_dict(values, prog_bar=False, add_dataloader_idx=False)
        self.log(
            f"{stage}/mean", values[f"{stage}/mean_primary"], prog_bar=True, logger=False, add_dataloader_idx=False
        )

    # ---- export
    def _export_weights(self, directory: Path) -> None:
        """The shared encoder with `save_pretrained` (loads as AutoModel, and as a `model.init_from` parent), the
        heads in `heads.pt` and the sub-tasks (labels, problem type) in `subtasks.json`."""
        self.encoder.save_pretrained(directory)
        torch.save({"pooling": self.hparams.pooling, "state_dict": self.heads.state_dict()}, directory / "heads.pt")
        (directory / "subtasks.json").write_text(json.dumps(self.subtasks, indent=2))


class MultiTask(Task):
    """Sub-tasks from `dataset.subtasks` (lmlab.data.multitask); monitor val/mean_primary, maximized."""

    model_keys = MODEL_KEYS

    def __init__(
        self,
        name: str,
        monitor: str,
        mode: str,
        optimized_metric: str,
        ignores: Sequence[str] = (),
        primary: str | Mapping[str, str] = "f1_macro",
        weights: Mapping[str, float] | None = None,
    ):
        super().__init__(name, monitor, mode, optimized_metric, ignores)
        self.primary = dict(primary) if isinstance(primary, Mapping) else primary
        self.weights = {str(k): v for k, v in dict(weights or {}).items()}

    def _primary(self, name: str) -> str:
        value = self.primary.get(name, "f1_macro") if isinstance(self.primary, dict) else self.primary
        if value not in PRIMARY:
            raise LmlabError(
                f"task.primary={value!r} (sub-task {name}) is not one of {list(PRIMARY)}; the mean of "
                f"the sub-tasks' primary metrics is maximized."
            )
        return value

    # ---- data
    def prepare(self, datamodule: Any) -> None:
        from lmlab.data.multitask import MultiTaskDataModule

        if not isinstance(datamodule, MultiTaskDataModule):
            raise LmlabError(
                "task=multitask needs its dataset config (dataset.subtasks); compose it with "
                "task=multitask, not a plain dataset=... override after it."
            )
        unknown = sorted(set(self.weights) - set(datamodule.names)) + (
            sorted(set(self.primary) - set(datamodule.names)) if isinstance(self.primary, dict) else []
        )
        if unknown:
            raise LmlabError(
                f"task.weights / task.primary name sub-tasks {unknown} that dataset.subtasks does not "
                f"have ({datamodule.names})."
            )
        self.encodings: dict[str, ClassificationTask] = {}
        self.specs: list[dict[str, Any]] = []
        for name in datamodule.names:
            enc = ClassificationTask(name, f"val/{name}/f1_macro", "max", "")
            sub = datamodule.subtasks[name]
            try:
                enc.prepare(sub)
            except LmlabError as err:
                raise LmlabError(f"sub-task {name!r}: {err}") from None
            enc.check_problem_type("multi_label" if enc.multi_label else "single_label")
            weight = self.weights.get(name, 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
                raise LmlabError(f"task.weights.{name}={weight!r} must be a number >= 0.")
            self.encodings[name] = enc
            self.specs.append(
                {
                    "name": name,
                    "labels": enc.labels,
                    "problem_type": enc.problem_type,
                    "weight": float(weight),
                    "primary": self._primary(name),
                }
            )
        datamodule.labels = [f"{s['name']}/{label}" for s in self.specs for label in s["labels"]]
        log.info("Sub-tasks: %s", {s["name"]: f"{len(s['labels'])} labels, weight {s['weight']:g}" for s in self.specs})

    def encoding(self) -> dict[str, ClassificationTask]:
        """One encoding per sub-task (its labels): lmlab.data.multitask.MultiTaskDataModule.connect."""
        return self.encodings

    def module_class(self) -> type:
        return MultiTaskClassifier

    def module_kwargs(self, model_cfg: Mapping[str, Any], datamodule: Any) -> dict[str, Any]:
        return {"subtasks": self.specs}

    def load(self, ckpt_path: Path, datamodule: Any, model_cfg: Mapping[str, Any]) -> MultiTaskClassifier:
        module = super().load(ckpt_path, datamodule, model_cfg)
        now = [(s["name"], s["labels"]) for s in self.specs]
        then = [(s["name"], s["labels"]) for s in module.subtasks]
        if now != then:
            raise LmlabError(
                f"Sub-task label maps differ: the data gives {now}, the checkpoint {ckpt_path} has {then}."
            )
        return module

    def configure_trainer(self, trainer: Any, datamodule: Any, global_batch: int) -> None:
        if trainer.world_size > 1:
            raise LmlabError(
                "task=multitask trains on one device for now (each step updates one sub-task's head, "
                "which DDP's gradient sync does not allow without find_unused_parameters): use "
                "trainer.devices=1."
            )

    # ---- results
    def results(self, module: MultiTaskClassifier, datamodule: Any, logged: Mapping[str, float]) -> dict[str, Any]:
        metrics = super().results(
            module, datamodule, {k: v for k, v in logged.items() if not k.endswith("/mean")}
        )  # the progress-bar copy
        metrics.update(module.details.get("test", {}))
        metrics["meta/subtasks"] = ",".join(module.names)  # a plain string: the sub-task columns of a report
        return metrics

    def write_outputs(
        self, run_dir: Path, module: MultiTaskClassifier, datamodule: Any, split: str, loggers: Sequence[Any] = ()
    ) -> None:
        """<split>_predictions_<sub-task>.csv (test_predictions_<sub-task>.csv): one file per sub-task."""
        stem = Path(rundir.PREDICTIONS).stem.replace("test", split, 1)
        for s in module.subtasks:
            name = s["name"]
            rundir.write_predictions(
                Path(run_dir) / f"{stem}_{name}.csv",
                datamodule.subtasks[name].example_ids(split),
                s["labels"],
                module.predictions[name],
            )
