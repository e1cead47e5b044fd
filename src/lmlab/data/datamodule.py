"""The LightningDataModule: source -> checked splits -> tokenized features -> dynamically padded batches."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lmlab.config import LmlabError
from lmlab.data.resumable import ResumableRandomSampler
from lmlab.data.sources import SPLITS, Example, SourceOutput
from lmlab.data.splits import build_splits, fingerprint, label_names
from lmlab.models.backbone import load_tokenizer

log = logging.getLogger(__name__)


class FeatureDataset(Dataset):
    """Tokenized examples; `idx` travels with each batch so predictions map back to example ids."""

    def __init__(self, features: list[dict[str, Any]]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]


class TextClassificationDataModule(pl.LightningDataModule):
    def __init__(
        self,
        source: Callable[[], SourceOutput],
        tokenizer: str,
        problem_type: str = "single_label",
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        fractions: Mapping[str, float] | None = None,
        split_seed: int = 0,
        dedupe: bool = True,
        stratify: bool = True,
        one_vs_rest: str | None = None,
        labels: Sequence[str] | None = None,
        max_samples: Mapping[str, int | None] | None = None,
        pad_to_multiple_of: int | None = None,
    ):
        super().__init__()
        self.source = source
        self.tokenizer_name = tokenizer
        self.problem_type = problem_type
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.fractions = dict(fractions or {"train": 0.8, "val": 0.1, "test": 0.1})
        self.split_seed = split_seed
        self.dedupe = dedupe
        self.stratify = stratify
        self.one_vs_rest = one_vs_rest
        self.label_order = list(labels) if labels is not None else None
        self.max_samples = dict(max_samples or {})
        self.pad_to_multiple_of = pad_to_multiple_of
        self.splits: dict[str, list[Example]] | None = None
        self.datasets: dict[str, FeatureDataset] = {}
        self._resume_skip: tuple[int, int] | None = None

    # ---- data, before any model exists: the module is built from `labels`
    def load(self) -> None:
        """Read, dedupe, split and check the data (idempotent; cheap next to tokenization)."""
        if self.splits is not None:
            return
        splits, self.duplicates = build_splits(
            self.source(), fractions=self.fractions, split_seed=self.split_seed, dedupe=self.dedupe,
            stratify=self.stratify, one_vs_rest=self.one_vs_rest, max_samples=self.max_samples)
        order = self.label_order
        if order is None and self.one_vs_rest:
            order = [f"not_{self.one_vs_rest}", self.one_vs_rest]  # the positive class is index 1
        self.labels = label_names(splits, order)
        if self.problem_type == "binary" and len(self.labels) != 2:
            raise LmlabError(
                f"model.problem_type=binary needs exactly 2 labels, the data has {len(self.labels)}: "
                f"{self.labels}. Use model.problem_type=single_label, or dataset.one_vs_rest=<label>."
            )
        multi = any(isinstance(ex.label, list) for ex in splits["train"])
        if multi != (self.problem_type == "multi_label"):
            raise LmlabError(
                f"model.problem_type={self.problem_type} but the labels are "
                f"{'lists (multi-label)' if multi else 'single names'}; "
                f"set model.problem_type={'multi_label' if multi else 'single_label'}."
            )
        self.splits = splits
        self.data_fingerprint = fingerprint(splits)
        sizes = {split: len(exs) for split, exs in splits.items()}
        log.info("Data: %s examples, %d labels %s, fingerprint %s", sizes, len(self.labels), self.labels,
                 self.data_fingerprint)
        dupes = {k: v for k, v in self.duplicates.items() if v}
        if dupes:
            log.warning("Exact duplicate texts %s (dataset.dedupe=%s%s)", dupes, self.dedupe,
                        ": removed before splitting" if self.dedupe else "")

    def _encode_label(self, label: Any) -> Any:
        index = {name: i for i, name in enumerate(self.labels)}
        if self.problem_type == "multi_label":
            hot = [0.0] * len(self.labels)
            for name in label:
                hot[index[name]] = 1.0
            return hot
        if self.problem_type == "binary":
            return float(index[label])
        return index[label]

    def _tokenize(self, examples: Sequence[Example]) -> list[dict[str, Any]]:
        texts = [ex.text for ex in examples]
        pairs = [ex.text_pair for ex in examples] if examples[0].text_pair is not None else None
        encoded = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length)
        columns = list(encoded.keys())
        return [
            {**{col: encoded[col][i] for col in columns}, "labels": self._encode_label(ex.label), "idx": i}
            for i, ex in enumerate(examples)
        ]

    def setup(self, stage: str | None = None) -> None:
        self.load()
        if self.datasets:
            return
        from transformers import DataCollatorWithPadding

        self.tokenizer = load_tokenizer(self.tokenizer_name)
        self.collate = DataCollatorWithPadding(self.tokenizer, pad_to_multiple_of=self.pad_to_multiple_of)
        assert self.splits is not None
        self.datasets = {split: FeatureDataset(self._tokenize(self.splits[split])) for split in SPLITS}

    # ---- loaders
    def loader(self, split: str) -> DataLoader:
        train = split == "train"
        # Training order is a function of (seed, epoch) and skips what a mid-epoch checkpoint already saw; the
        # loader's own generator keeps iter() from drawing on the global RNG (dropout stays reproducible).
        sampler = None
        if train:
            sampler = ResumableRandomSampler(self.datasets[split])
            if self._resume_skip is not None:
                # Lightning iterates (and prefetches) the resumed epoch before it calls set_epoch.
                epoch, batches_done = self._resume_skip
                sampler.set_epoch(epoch)
                sampler.skip(epoch, batches_done * self.batch_size)
                self._resume_skip = None
        return DataLoader(
            self.datasets[split], batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler, collate_fn=self.collate, num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(int(os.environ.get("PL_GLOBAL_SEED", 0))) if train else None,
            persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def resume_train_sampler(self, epoch: int, batches_done: int) -> None:
        """Called by the requeue callback on restore: epoch `epoch` had already trained on `batches_done`."""
        self._resume_skip = (epoch, batches_done)

    def train_dataloader(self) -> DataLoader:
        return self.loader("train")

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def example_ids(self, split: str) -> list[str]:
        assert self.splits is not None
        return [ex.id for ex in self.splits[split]]

    def state_dict(self) -> dict[str, Any]:
        # Stored in every checkpoint so eval can check it sees the same data the run trained on.
        return {"labels": self.labels, "data_fingerprint": self.data_fingerprint}
