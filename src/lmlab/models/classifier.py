"""The LightningModule: transformer backbone + classification head + loss, with torchmetrics per stage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import nn
from torch.nn import functional as F

from lmlab.config import LmlabError
from lmlab.models.backbone import load_backbone, load_tokenizer
from lmlab.optim import build_optimizer, build_scheduler, find_layers


def classification_metrics(problem_type: str, num_labels: int) -> torchmetrics.MetricCollection:
    """acc, precision/recall (macro), F1 macro/micro/weighted, per-class F1 and the confusion matrix.

    A binary single-logit model is scored as 2 classes so its metrics read like any other run's.
    """
    if problem_type == "multi_label":
        kw: dict[str, Any] = {"task": "multilabel", "num_labels": num_labels}
        acc = torchmetrics.classification.MultilabelExactMatch(num_labels=num_labels)  # subset accuracy
    else:
        kw = {"task": "multiclass", "num_classes": max(num_labels, 2)}
        acc = torchmetrics.Accuracy(average="micro", **kw)
    return torchmetrics.MetricCollection({
        "acc": acc,
        "precision": torchmetrics.Precision(average="macro", **kw),
        "recall": torchmetrics.Recall(average="macro", **kw),
        "f1_macro": torchmetrics.F1Score(average="macro", **kw),
        "f1_micro": torchmetrics.F1Score(average="micro", **kw),
        "f1_weighted": torchmetrics.F1Score(average="weighted", **kw),
        "f1_per_class": torchmetrics.F1Score(average="none", **kw),
        "confusion_matrix": torchmetrics.ConfusionMatrix(**kw),
    }, compute_groups=False)


class PooledHead(nn.Module):
    """Pooling over the backbone's last hidden states, dropout, one linear layer."""

    def __init__(self, hidden_size: int, num_outputs: int, pooling: str, dropout: float):
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_outputs)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        else:  # "last": the last real token, for decoder-only models; works for left and right padding
            last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(1)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.classifier(self.dropout(pooled))


class TextClassifier(pl.LightningModule):
    def __init__(
        self,
        name_or_path: str,
        labels: Sequence[str],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any],
        problem_type: str = "single_label",
        pooling: str = "native",
        dropout: float | None = None,
        from_scratch: Mapping[str, Any] | None = None,
        config_overrides: Mapping[str, Any] | None = None,
        attn_implementation: str | None = None,
        freeze_embeddings: bool = False,
        freeze_layers: int = 0,
        class_weights: str | Sequence[float] | None = None,
        label_counts: Sequence[float] | None = None,
        num_train_examples: int | None = None,
        threshold: float = 0.5,
        tokenizer: str | None = None,
        compile: bool = False,
        compile_dynamic: bool | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.labels = list(labels)
        self.problem_type = problem_type
        self.threshold = threshold
        num_outputs = 1 if problem_type == "binary" else len(self.labels)
        self.tokenizer_name = tokenizer or name_or_path
        pad_token_id = load_tokenizer(self.tokenizer_name).pad_token_id
        overrides = dict(config_overrides or {})
        if pooling == "native":
            self.net = load_backbone(
                name_or_path, auto_class="AutoModelForSequenceClassification", from_scratch=from_scratch,
                config_overrides=overrides, attn_implementation=attn_implementation, num_labels=num_outputs,
                id2label=dict(enumerate(self.labels)) if num_outputs > 1 else {0: self.labels[-1]},
                label2id={name: i for i, name in enumerate(self.labels)} if num_outputs > 1 else {
                    self.labels[-1]: 0}, pad_token_id=pad_token_id)
            if dropout is not None:
                for module in self.head.modules():
                    if isinstance(module, nn.Dropout):
                        module.p = dropout
        else:
            self.encoder = load_backbone(name_or_path, auto_class="AutoModel", from_scratch=from_scratch,
                                          config_overrides=overrides, attn_implementation=attn_implementation,
                                          pad_token_id=pad_token_id)
            hidden = self.encoder.config.hidden_size
            default_dropout = getattr(self.encoder.config, "hidden_dropout_prob", 0.1)
            self.pooled_head = PooledHead(hidden, num_outputs, pooling,
                                   default_dropout if dropout is None else dropout)
        self._freeze(freeze_embeddings, freeze_layers)
        if compile:
            # In place (nn.Module.compile), so parameter names and checkpoints are the same as without compile.
            # Each new batch shape recompiles until torch marks the length dynamic; see README "Speed".
            (self.net if pooling == "native" else self.encoder).compile(dynamic=compile_dynamic)
        self.register_buffer("loss_weight", self._loss_weight(class_weights, label_counts), persistent=False)
        self.metrics = nn.ModuleDict({stage: classification_metrics(problem_type, len(self.labels))
                                      for stage in ("val", "test")})
        self.details: dict[str, dict[str, Any]] = {}
        self.run_info: dict[str, Any] = {}  # set by train: resolved config, data fingerprint
        self.predictions: list[dict[str, Any]] = []
        self.train()  # from_pretrained returns eval mode, and Lightning keeps each module's mode as found

    # ---- the two parts optimizer groups and freezing work on (views, not extra registered modules)
    @property
    def backbone(self) -> nn.Module:
        return self.net.base_model if self.hparams.pooling == "native" else self.encoder

    @property
    def head(self) -> nn.Module:
        if self.hparams.pooling != "native":
            return self.pooled_head
        base = self.net.base_model
        return nn.ModuleList(m for m in self.net.children() if m is not base)

    @property
    def attn_implementation(self) -> str:
        """The attention kernel transformers actually chose (sdpa, eager, flash_attention_2...)."""
        return str(self.backbone.config._attn_implementation)

    # ---- construction helpers
    def _freeze(self, embeddings: bool, first_n_layers: int) -> None:
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

    def _loss_weight(self, class_weights: str | Sequence[float] | None,
                     label_counts: Sequence[float] | None) -> torch.Tensor | None:
        """Per-class weights (single-label) or positive-class weights (binary / multi-label BCE)."""
        if class_weights is None:
            return None
        if class_weights == "auto":
            if label_counts is None:
                raise LmlabError("model.class_weights=auto needs the training label counts.")
            counts = torch.tensor(label_counts, dtype=torch.float).clamp(min=1)
            if self.problem_type == "single_label":
                return counts.sum() / (len(counts) * counts)  # inverse frequency, mean weight ~1
            if self.problem_type == "binary":
                return (counts[0] / counts[1]).reshape(1)  # negatives per positive
            total = float(self.hparams.num_train_examples or 0)
            if total <= 0:
                raise LmlabError("model.class_weights=auto for multi-label data needs num_train_examples.")
            return ((total - counts) / counts).clamp(min=0)
        weights = torch.tensor(list(class_weights), dtype=torch.float)
        expected = 1 if self.problem_type == "binary" else len(self.labels)
        if len(weights) != expected:
            raise LmlabError(f"model.class_weights has {len(weights)} values; this task needs {expected} "
                             f"(labels: {self.labels}).")
        return weights

    # ---- forward and loss
    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "idx")}
        if self.hparams.pooling == "native":
            return self.net(**inputs).logits
        hidden = self.encoder(**inputs).last_hidden_state
        return self.pooled_head(hidden, inputs["attention_mask"])

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.problem_type == "single_label":
            return F.cross_entropy(logits.float(), labels, weight=self.loss_weight)
        if self.problem_type == "binary":
            logits = logits.squeeze(-1)
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=self.loss_weight)

    def scores_and_preds(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class scores (probabilities) and predictions in the label space the metrics use."""
        logits = logits.float()
        if self.problem_type == "single_label":
            scores = logits.softmax(-1)
            return scores, scores.argmax(-1)
        if self.problem_type == "binary":
            positive = logits.squeeze(-1).sigmoid()
            return torch.stack([1 - positive, positive], -1), (positive > self.threshold).long()
        scores = logits.sigmoid()
        return scores, (scores > self.threshold).long()

    # ---- steps
    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch), batch["labels"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def _eval_step(self, stage: str, batch: Mapping[str, torch.Tensor]) -> None:
        logits = self(batch)
        labels = batch["labels"]
        self.log(f"{stage}/loss", self.loss(logits, labels), on_epoch=True, batch_size=len(labels),
                 sync_dist=True)
        scores, preds = self.scores_and_preds(logits)
        target = labels.long()
        self.metrics[stage].update(preds, target)
        if stage == "test":
            for i, label, pred, score in zip(batch["idx"].tolist(), target.tolist(), preds.tolist(),
                                             scores.tolist()):
                self.predictions.append({"idx": i, "label": label, "pred": pred, "scores": score})

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_start(self) -> None:
        self.predictions = []

    def _log_epoch_metrics(self, stage: str) -> None:
        computed = self.metrics[stage].compute()
        self.metrics[stage].reset()
        per_class = computed.pop("f1_per_class")
        matrix = computed.pop("confusion_matrix")
        self.details[stage] = {
            f"{stage}/f1_per_class": dict(zip(self.labels, per_class.tolist())),
            f"{stage}/confusion_matrix": {"labels": self.labels, "matrix": matrix.tolist()},
        }
        self.log_dict({f"{stage}/{name}": value for name, value in computed.items()},
                      prog_bar=False, sync_dist=True)
        self.log(f"{stage}/f1", computed["f1_macro"], prog_bar=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The composed run config travels with the weights, so eval rebuilds the exact data split.
        checkpoint["lmlab"] = self.run_info

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.loaded_epoch = checkpoint["epoch"]
        self.run_info = checkpoint.get("lmlab", {})

    # ---- optimization
    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.backbone, self.head, self.hparams.optimizer)
        scheduler = build_scheduler(optimizer, self.hparams.scheduler, int(self.trainer.estimated_stepping_batches))
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # ---- export
    def export_pretrained(self, directory: Path) -> None:
        """Write model + tokenizer with `save_pretrained`: a native head loads as
        AutoModelForSequenceClassification; a pooled head saves the backbone plus `head.pt`."""
        directory.mkdir(parents=True, exist_ok=True)
        if self.hparams.pooling == "native":
            self.net.save_pretrained(directory)
        else:
            self.backbone.config.id2label = dict(enumerate(self.labels))
            self.backbone.config.label2id = {name: i for i, name in enumerate(self.labels)}
            self.backbone.save_pretrained(directory)
            torch.save({"pooling": self.hparams.pooling, "state_dict": self.pooled_head.state_dict()},
                       directory / "head.pt")
        load_tokenizer(self.tokenizer_name).save_pretrained(directory)
