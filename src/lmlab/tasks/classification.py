"""Text classification: labels from the data, a transformer backbone + head, F1 & co. by torchmetrics.

`ClassificationTask` is what train.py/eval.py see (lmlab.tasks.base); `TextClassifier` is its LightningModule.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import nn
from torch.nn import functional as F

from lmlab import rundir
from lmlab.data.datamodule import FeatureDataset, PadCollator
from lmlab.data.sources import Example
from lmlab.data.splits import label_names
from lmlab.data.tokenizer import load_tokenizer
from lmlab.errors import LmlabError
from lmlab.models import peft as adapters
from lmlab.models.backbone import compile_in_place, load_backbone
from lmlab.tasks.base import Task, TaskModule


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
    return torchmetrics.MetricCollection(
        {
            "acc": acc,
            "precision": torchmetrics.Precision(average="macro", **kw),
            "recall": torchmetrics.Recall(average="macro", **kw),
            "f1_macro": torchmetrics.F1Score(average="macro", **kw),
            "f1_micro": torchmetrics.F1Score(average="micro", **kw),
            "f1_weighted": torchmetrics.F1Score(average="weighted", **kw),
            "f1_per_class": torchmetrics.F1Score(average="none", **kw),
            "confusion_matrix": torchmetrics.ConfusionMatrix(**kw),
        },
        compute_groups=False,
    )


def classification_loss(
    problem_type: str, logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy (single-label, `weight` per class) or BCE on logits (binary / multi-label, `weight` per
    positive class)."""
    if problem_type == "single_label":
        return F.cross_entropy(logits.float(), labels, weight=weight)
    if problem_type == "binary":
        logits = logits.squeeze(-1)
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=weight)


def scores_and_preds(problem_type: str, logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Class scores (probabilities) and predictions in the label space the metrics use."""
    logits = logits.float()
    if problem_type == "single_label":
        scores = logits.softmax(-1)
        return scores, scores.argmax(-1)
    if problem_type == "binary":
        positive = logits.squeeze(-1).sigmoid()
        return torch.stack([1 - positive, positive], -1), (positive > threshold).long()
    scores = logits.sigmoid()
    return scores, (scores > threshold).long()


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


class TextClassifier(adapters.AdapterCheckpoints, TaskModule, pl.LightningModule):
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
        compile: bool | str = False,
        compile_dynamic: bool | None = None,
        compile_mode: str | None = None,
        gguf_file: str | None = None,
        bpe_vocab_size: int | None = None,
        bpe_train_bytes: int | None = None,
        tokenizer_object: Any = None,
        peft: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer_object"])
        self.configure_strict_loading()
        self.labels = list(labels)
        self.problem_type = problem_type
        self.threshold = threshold
        num_outputs = 1 if problem_type == "binary" else len(self.labels)
        self.tokenizer = (
            tokenizer_object if tokenizer_object is not None else load_tokenizer(tokenizer or name_or_path, gguf_file)
        )
        pad_token_id = self.tokenizer.pad_token_id
        overrides = dict(config_overrides or {})
        rng = adapters.seed_base(peft)  # a rebuild reproduces the frozen base: adapter checkpoints omit it
        if pooling == "native":
            self.net = load_backbone(
                name_or_path,
                auto_class="AutoModelForSequenceClassification",
                from_scratch=from_scratch,
                config_overrides=overrides,
                attn_implementation=attn_implementation,
                gguf_file=gguf_file,
                num_labels=num_outputs,
                id2label=dict(enumerate(self.labels)) if num_outputs > 1 else {0: self.labels[-1]},
                label2id={name: i for i, name in enumerate(self.labels)} if num_outputs > 1 else {self.labels[-1]: 0},
                pad_token_id=pad_token_id,
            )
            if dropout is not None:
                for module in self.head.modules():
                    if isinstance(module, nn.Dropout):
                        module.p = dropout
        else:
            self.encoder = load_backbone(
                name_or_path,
                auto_class="AutoModel",
                from_scratch=from_scratch,
                config_overrides=overrides,
                attn_implementation=attn_implementation,
                gguf_file=gguf_file,
                pad_token_id=pad_token_id,
            )
            hidden = self.encoder.config.hidden_size
            default_dropout = getattr(self.encoder.config, "hidden_dropout_prob", 0.1)
            self.pooled_head = PooledHead(hidden, num_outputs, pooling, default_dropout if dropout is None else dropout)
        if adapters.enabled(peft):  # the native head trains in full (peft's modules_to_save); the pooled one is ours
            if pooling == "native":
                self.net = adapters.wrap(self.net, peft, "SEQ_CLS")
            else:
                self.encoder = adapters.wrap(self.encoder, peft, None)
        adapters.restore_rng(rng)
        self._freeze(freeze_embeddings, freeze_layers)
        # Each new batch shape recompiles until torch marks the length dynamic; see docs/speed.md.
        compiled_part = self.net if pooling == "native" else self.encoder
        self.compiled = compile_in_place(compiled_part, compile, compile_dynamic, compile_mode)
        self.register_buffer("loss_weight", self._loss_weight(class_weights, label_counts), persistent=False)
        self.metrics = nn.ModuleDict(
            {stage: classification_metrics(problem_type, len(self.labels)) for stage in ("val", "test")}
        )
        self.details: dict[str, dict[str, Any]] = {}
        self.predictions: list[dict[str, Any]] = []
        self.train()  # from_pretrained returns eval mode, and Lightning keeps each module's mode as found

    # ---- the two parts optimizer groups and freezing work on (views, not extra registered modules)
    @property
    def backbone(self) -> nn.Module:
        if self.hparams.pooling == "native":
            return adapters.unwrap(self.net).base_model
        return adapters.unwrap(self.encoder)

    @property
    def head(self) -> nn.Module:
        if self.hparams.pooling != "native":
            return self.pooled_head
        net = adapters.unwrap(self.net)
        return nn.ModuleList(m for m in net.children() if m is not net.base_model)

    # ---- construction helpers
    def _loss_weight(
        self, class_weights: str | Sequence[float] | None, label_counts: Sequence[float] | None
    ) -> torch.Tensor | None:
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
            raise LmlabError(
                f"model.class_weights has {len(weights)} values; this task needs {expected} (labels: {self.labels})."
            )
        return weights

    # ---- forward and loss
    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "idx")}
        if self.hparams.pooling == "native":
            return self.net(**inputs).logits
        hidden = self.encoder(**inputs).last_hidden_state
        return self.pooled_head(hidden, inputs["attention_mask"])

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return classification_loss(self.problem_type, logits, labels, self.loss_weight)

    def scores_and_preds(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return scores_and_preds(self.problem_type, logits, self.threshold)

    # ---- steps
    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch), batch["labels"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def _eval_step(self, stage: str, batch: Mapping[str, torch.Tensor], dataloader_idx: int = 0) -> None:
        logits = self(batch)
        labels = batch["labels"]
        self.log(f"{stage}/loss", self.loss(logits, labels), on_epoch=True, batch_size=len(labels), sync_dist=True)
        scores, preds = self.scores_and_preds(logits)
        target = labels.long()
        self.metrics[stage].update(preds, target)
        if stage == "test":
            for i, label, pred, score in zip(batch["idx"].tolist(), target.tolist(), preds.tolist(), scores.tolist()):
                self.predictions.append({"idx": i, "label": label, "pred": pred, "scores": score})

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
        self.log_dict({f"{stage}/{name}": value for name, value in computed.items()}, prog_bar=False, sync_dist=True)
        self.log(f"{stage}/f1", computed["f1_macro"], prog_bar=True, sync_dist=True)

    # ---- export
    def _export_weights(self, directory: Path) -> None:
        """`save_pretrained` (with the tokenizer, see TaskModule.export_pretrained): a native head loads as
        AutoModelForSequenceClassification; a pooled head saves the backbone plus `head.pt`."""
        if adapters.enabled(self.hparams.peft):
            self._export_adapter(directory)
        elif self.hparams.pooling == "native":
            self.net.save_pretrained(directory)
        else:
            self.backbone.config.id2label = dict(enumerate(self.labels))
            self.backbone.config.label2id = {name: i for i, name in enumerate(self.labels)}
            self.backbone.save_pretrained(directory)
            torch.save(
                {"pooling": self.hparams.pooling, "state_dict": self.pooled_head.state_dict()}, directory / "head.pt"
            )

    def _export_adapter(self, directory: Path) -> None:
        """The peft adapter (+ the trained native head inside it, or head.pt beside it) and how to load its base."""
        native = self.hparams.pooling == "native"
        binary = self.hparams.problem_type == "binary"
        kwargs = {
            "num_labels": 1 if binary else len(self.labels),
            "id2label": {0: self.labels[-1]} if binary else dict(enumerate(self.labels)),
            "label2id": {self.labels[-1]: 0} if binary else {n: i for i, n in enumerate(self.labels)},
        }
        adapters.export(
            self.net if native else self.encoder,
            directory,
            self.hparams.peft,
            {
                "auto_class": "AutoModelForSequenceClassification" if native else "AutoModel",
                "name_or_path": self.hparams.name_or_path,
                "gguf_file": self.hparams.gguf_file,
                "from_scratch": self.hparams.from_scratch is not None,
                "kwargs": kwargs if native else {},
                "pooling": self.hparams.pooling,
                "labels": self.labels,
            },
        )
        if not native:
            torch.save(
                {"pooling": self.hparams.pooling, "state_dict": self.pooled_head.state_dict()}, directory / "head.pt"
            )


def _rows(examples: Sequence[Example], limit: int = 5) -> str:
    """The first few rows, file named once: "d.csv: row 1 (line 2), row 4 (line 5) and 8 more"."""
    by_file: dict[str, list[str]] = {}
    for ex in examples[:limit]:
        where, _, row = (ex.origin or "").rpartition(" row ")
        by_file.setdefault(where, []).append(f"row {row}" if where else ex.id)
    shown = "; ".join(f"{where}: {', '.join(rows)}" if where else ", ".join(rows) for where, rows in by_file.items())
    return shown + (f" and {len(examples) - limit} more" if len(examples) > limit else "")


def check_labelled_examples(examples: Sequence[Example]) -> None:
    """Refuse rows a classifier would silently learn from wrongly: a missing label would become a class 'nan' or
    '', and empty texts collapse into one "duplicate" that carries one of their labels."""
    if all(ex.label is None for ex in examples):
        raise LmlabError(
            "This data has no labels (plain text, or dataset.source.label_column=null), so "
            "task=classification cannot use it. Use task=causal_lm, or give a label column."
        )
    missing = [ex for ex in examples if ex.label is None]
    if missing:
        raise LmlabError(
            f"{len(missing)} of {len(examples)} rows have no label (null, NaN or empty): {_rows(missing)}. "
            f"task=classification needs a label on every row: fill them in or remove those rows "
            f"(task=causal_lm ignores labels)."
        )
    empty = [ex for ex in examples if not ex.text.strip() or (ex.text_pair is not None and not ex.text_pair.strip())]
    if empty:
        raise LmlabError(
            f"{len(empty)} of {len(examples)} rows have an empty text: {_rows(empty)}. Fill in the text "
            f"(dataset.source.text_column / text_pair_column) or remove those rows."
        )


class ClassificationTask(Task):
    """Labels come from the data; checkpoints and sweeps follow `monitor` (val/f1_macro, maximized)."""

    # ---- data
    def prepare(self, datamodule: Any) -> None:
        splits = datamodule.splits
        # Every row the source gave (before dedupe), so each bad row is named, not only those dedupe kept.
        check_labelled_examples(
            getattr(datamodule, "source_examples", None) or [ex for split in splits.values() for ex in split]
        )
        order = datamodule.label_order
        if order is None and datamodule.one_vs_rest:
            order = [f"not_{datamodule.one_vs_rest}", datamodule.one_vs_rest]  # the positive class is index 1
        self.labels = label_names(splits, order)
        classes = Counter(json.dumps(ex.label) for ex in splits["train"])  # multi-label: distinct label sets
        if len(classes) < 2:
            only, count = next(iter(classes.items()))
            raise LmlabError(
                f"The training split has a single class ({json.loads(only)!r}, all {count} examples): every "
                f"prediction would be right and F1 = 1.000 would mean nothing. Check that "
                f"dataset.source.label_column names the label column and that the data holds at least 2 classes."
            )
        self.multi_label = any(isinstance(ex.label, list) for ex in splits["train"])
        counts = [0] * len(self.labels)
        for ex in splits["train"]:
            for name in ex.label if isinstance(ex.label, list) else [ex.label]:
                counts[self.labels.index(name)] += 1
        self.label_counts = counts
        datamodule.labels = self.labels  # shown in the manifest
        logging.getLogger(__name__).info("Labels: %d %s", len(self.labels), self.labels)

    def check_problem_type(self, problem_type: str) -> None:
        if problem_type == "binary" and len(self.labels) != 2:
            raise LmlabError(
                f"model.problem_type=binary needs exactly 2 labels, the data has {len(self.labels)}: "
                f"{self.labels}. Use model.problem_type=single_label, or dataset.one_vs_rest=<label>."
            )
        if self.multi_label != (problem_type == "multi_label"):
            raise LmlabError(
                f"model.problem_type={problem_type} but the labels are "
                f"{'lists (multi-label)' if self.multi_label else 'single names'}; "
                f"set model.problem_type={'multi_label' if self.multi_label else 'single_label'}."
            )
        self.problem_type = problem_type

    def encode_label(self, label: Any) -> Any:
        index = {name: i for i, name in enumerate(self.labels)}
        if self.problem_type == "multi_label":
            hot = [0.0] * len(self.labels)
            for name in label:
                hot[index[name]] = 1.0
            return hot
        if self.problem_type == "binary":
            return float(index[label])
        return index[label]

    # ---- the encoding the datamodule applies (lmlab.data.datamodule.Encoding)
    def tokenize(self, tokenizer: Any, examples: Sequence[Example], max_length: int) -> dict[str, list]:
        pairs = [ex.text_pair for ex in examples] if examples[0].text_pair is not None else None
        # No attention_mask: before padding it is all ones; the collator builds it.
        return dict(
            tokenizer(
                [ex.text for ex in examples], pairs, truncation=True, max_length=max_length, return_attention_mask=False
            )
        )

    def cache_options(self) -> dict[str, Any]:
        return {"truncation": True}

    def dataset(self, split: str, columns: Mapping[str, Any], examples: Sequence[Example]) -> FeatureDataset:
        return FeatureDataset(columns, [self.encode_label(ex.label) for ex in examples])

    def collator(self, tokenizer: Any, pad_to_multiple_of: int | None) -> PadCollator:
        return PadCollator(tokenizer.pad_token_id, tokenizer.padding_side, pad_to_multiple_of)

    # ---- the module
    def module_class(self) -> type:
        return TextClassifier

    def module_kwargs(self, model_cfg: Mapping[str, Any], datamodule: Any) -> dict[str, Any]:
        self.check_problem_type(model_cfg.get("problem_type", "single_label"))
        return {
            "labels": self.labels,
            "label_counts": self.label_counts,
            "num_train_examples": len(datamodule.splits["train"]),
        }

    def load(self, ckpt_path: Path, datamodule: Any, model_cfg: Mapping[str, Any]) -> TextClassifier:
        module = super().load(ckpt_path, datamodule, model_cfg)
        if module.labels != self.labels:
            raise LmlabError(f"Label map mismatch: data has {self.labels}, checkpoint has {module.labels}.")
        self.check_problem_type(module.problem_type)
        return module

    # ---- results
    def results(self, module: TextClassifier, datamodule: Any, logged: Mapping[str, float]) -> dict[str, Any]:
        # `<stage>/f1` is the progress-bar copy of f1_macro.
        metrics = super().results(module, datamodule, {k: v for k, v in logged.items() if not k.endswith("/f1")})
        metrics.update(module.details.get("test", {}))  # per-class F1 and the confusion matrix of the test split
        return metrics

    def write_outputs(
        self, run_dir: Path, module: TextClassifier, datamodule: Any, split: str, loggers: Sequence[Any] = ()
    ) -> None:
        name = rundir.PREDICTIONS if split == "test" else f"{split}_predictions.csv"
        rundir.write_predictions(Path(run_dir) / name, datamodule.example_ids(split), self.labels, module.predictions)
