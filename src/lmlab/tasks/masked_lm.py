"""Masked language modeling: continued pre-training of an encoder (BERT, MiniLM, any HF MLM) on the dataset's text.

Masking is transformers' `DataCollatorForLanguageModeling` (`torch_mask_tokens`): `task.mlm_probability` of the
non-special tokens are targets, of which 80% become [MASK], 10% a random token and 10% stay. Training draws the
masks from the global torch RNG (seeded by `seed`, restored on resume), a new draw every epoch (dynamic masking).
Validation and test draw each block's mask from its own generator, seeded by (task.eval_mask_seed, split, block
index): the masks do not depend on the run's seed, the batch size or the batch order, so val/test loss and
masked-token accuracy are comparable across runs and `eval.py` reproduces them exactly.

Blocks: every document is tokenized with the model's special tokens ([CLS] doc [SEP]) and, with
`dataset.packing=true` (the default), the split's documents form one stream cut into non-overlapping blocks of
`max_length` tokens (`run_mlm.py`'s `group_texts`); with `packing=false` each document is cut on its own. Training
drops a partial last block; val and test keep it, so every token of those splits can be a target.

Metrics (sums over the whole split, like the causal LM's): `<stage>/loss` = nats per masked target, `/ppl` =
exp(loss) over the masked targets, `/masked_acc` = argmax accuracy on them, `/tokens` = the number of targets.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from lmlab.data.datamodule import PadCollator
from lmlab.data.sources import Example
from lmlab.errors import LmlabError
from lmlab.models.backbone import compile_in_place
from lmlab.tasks.base import task_tokenizer
from lmlab.tasks.language_modeling import BlockDataset, LMModule, LMTask, lm_metrics

log = logging.getLogger(__name__)


def mlm_blocks(flat: np.ndarray, offsets: np.ndarray, length: int, packing: bool, keep_partial: bool) -> BlockDataset:
    """Non-overlapping blocks of `length` tokens over one split (documents flat[offsets[i]:offsets[i+1]])."""
    streams = (
        [(int(offsets[0]), int(offsets[-1]))] if packing else list(zip(offsets[:-1].tolist(), offsets[1:].tolist()))
    )
    starts, lengths = [], []
    for begin, end in streams:
        s = np.arange(begin, end, length, dtype=np.int64)
        n = np.minimum(length, end - s)
        keep = n == length if not keep_partial else n > 0
        starts.append(s[keep])
        lengths.append(n[keep])
    return BlockDataset(
        flat,
        np.concatenate(starts) if starts else np.zeros(0, np.int64),
        np.concatenate(lengths) if lengths else np.zeros(0, np.int64),
    )


class EvalBlocks(BlockDataset):
    """Val/test blocks: each carries the seed of its fixed mask."""

    def __init__(self, blocks: BlockDataset, base_seed: int):
        super().__init__(blocks.tokens, blocks.starts, blocks.lengths)
        self.base_seed = base_seed

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**super().__getitem__(index), "mask_seed": self.base_seed + index}


class MaskingCollator:
    """Pads (PadCollator) and masks with DataCollatorForLanguageModeling's 80/10/10 rule; padding and special
    tokens are never targets. A batch whose rows carry `mask_seed` is masked row by row, each with its own seeded
    generator (fixed eval masks); otherwise the whole batch is masked from the global torch RNG."""

    def __init__(self, tokenizer: Any, mlm_probability: float, pad_to_multiple_of: int | None):
        from transformers import DataCollatorForLanguageModeling

        # causal_labels: PadCollator's labels are the ids (pads -100); the masking below replaces them.
        self.pad = PadCollator(tokenizer.pad_token_id, tokenizer.padding_side, pad_to_multiple_of, causal_labels=True)
        self.masker = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        seeds = [f.pop("mask_seed") for f in features if "mask_seed" in f]
        batch = self.pad(features)
        ids = batch["input_ids"]
        special = torch.isin(ids, self.special_ids) | (batch["attention_mask"] == 0)
        if seeds:
            rows, labels = [], []
            for row, no_mask, seed in zip(ids, special, seeds):
                self.masker.generator = torch.Generator().manual_seed(int(seed))
                masked, target = self.masker.torch_mask_tokens(row[None].clone(), no_mask[None])
                rows.append(masked)
                labels.append(target)
            batch["input_ids"], batch["labels"] = torch.cat(rows), torch.cat(labels)
        else:
            self.masker.generator = None  # the global RNG: seeded by `seed`, saved in checkpoints
            batch["input_ids"], batch["labels"] = self.masker.torch_mask_tokens(ids.clone(), special)
        return batch


class MaskedLM(LMModule, pl.LightningModule):
    """An HF `AutoModelForMaskedLM` (pretrained, or random init) trained on masked-token prediction."""

    auto_class = "AutoModelForMaskedLM"
    accuracy = "masked_acc"

    def __init__(
        self,
        name_or_path: str | None,
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any],
        tokenizer: str | None = None,
        bpe_vocab_size: int | None = None,
        bpe_train_bytes: int | None = None,
        from_scratch: Mapping[str, Any] | None = None,
        config_overrides: Mapping[str, Any] | None = None,
        attn_implementation: str | None = None,
        compile: bool | str = False,
        compile_dynamic: bool | None = None,
        compile_mode: str | None = None,
        gguf_file: str | None = None,
        tokenizer_object: Any = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer_object"])
        self._use_tokenizer(tokenizer_object)
        self.net = self._load_net(name_or_path, from_scratch, config_overrides, attn_implementation, gguf_file)
        if from_scratch is None and name_or_path is not None:
            log_fresh_head(self.net, name_or_path)
        self.compiled = compile_in_place(self.net, compile, compile_dynamic, compile_mode)
        # No bytes total: bits-per-byte is a causal-LM metric.
        self.metrics = torch.nn.ModuleDict(
            {stage: lm_metrics(("nats", "tokens", "correct")) for stage in ("val", "test")}
        )
        self.train()  # from_pretrained returns eval mode, and Lightning keeps each module's mode as found

    def token_losses(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Nats, targets and argmax predictions of the masked positions only (flat: no -100 targets).

        The vocabulary projection runs on the ~15% of positions that are targets (MiniLM: 30,522 x 384 per token,
        ~1/3 of a full step's FLOPs otherwise) when the model's head is one module over the base model's hidden
        states (BERT `cls`, RoBERTa `lm_head`, ...); other models compute every position's logits.
        """
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        target = batch["labels"]
        selected = target != -100
        heads = list(self.head)
        if len(heads) == 1:
            hidden = self.net.base_model(**inputs).last_hidden_state
            logits = heads[0](hidden[selected]).float()
        else:
            logits = self.net(**inputs).logits[selected].float()
        target = target[selected]
        nats = F.cross_entropy(logits, target, reduction="none")
        return nats, target, logits.argmax(-1)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        nats, target, _ = self.token_losses(batch)
        loss = nats.sum() / max(target.numel(), 1)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=max(target.numel(), 1))
        return loss


def log_fresh_head(model: Any, name_or_path: str) -> None:
    """Say which tensors the checkpoint did not have (MiniLM's bundled checkpoint has no MLM head)."""
    from lmlab.models.init_from import checkpoint_tensor_names, relative_names

    stored = checkpoint_tensor_names(Path(name_or_path)) if Path(name_or_path).is_dir() else None
    if stored is None:
        return
    base, head = relative_names(stored, model.base_model_prefix)
    model_base, model_head = relative_names(model.state_dict().keys(), model.base_model_prefix)
    fresh = sorted(f"{model.base_model_prefix}.{k}" for k in set(model_base) - set(base)) + sorted(
        k for k in set(model_head) - set(head) if not _tied(model, k)
    )
    if fresh:
        log.warning(
            "%s has no masked-LM head: initialised freshly (random, decoder tied to the word embeddings): %s",
            name_or_path,
            ", ".join(fresh),
        )


def _tied(model: Any, name: str) -> bool:
    """A head tensor that is the input embedding itself (the MLM decoder weight)."""
    try:
        return model.get_parameter(name) is model.get_input_embeddings().weight
    except AttributeError:
        return False


class MaskedLMTask(LMTask):
    """Masked-token prediction on the dataset's text (labels ignored); monitor val/loss, minimized."""

    def __init__(
        self,
        name: str,
        monitor: str,
        mode: str,
        optimized_metric: str,
        ignores: Sequence[str] = (),
        mlm_probability: float = 0.15,
        eval_mask_seed: int = 0,
        score: str = "best_val",
        max_tokens: int | None = None,
        max_flops: float | None = None,
        eval_every_tokens: int | None = None,
    ):
        super().__init__(name, monitor, mode, optimized_metric, ignores, score)
        self.set_budget(max_tokens, max_flops, eval_every_tokens)
        if not 0 < float(mlm_probability) < 1:
            raise LmlabError(f"task.mlm_probability={mlm_probability} must be in (0, 1), e.g. 0.15 (BERT's).")
        self.mlm_probability = float(mlm_probability)
        self.eval_mask_seed = int(eval_mask_seed)

    # ---- the encoding
    def tokenize(self, tokenizer: Any, examples: Sequence[Example], max_length: int) -> dict[str, list]:
        # Whole documents with their [CLS] ... [SEP], never truncated: the blocks are cut afterwards.
        ids = tokenizer(
            [ex.text for ex in examples],
            add_special_tokens=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )["input_ids"]
        return {"input_ids": ids}

    def cache_options(self) -> dict[str, Any]:
        return {"masked_lm": True, "truncation": False, "special_tokens": True}

    def dataset(self, split: str, columns: Mapping[str, Any], examples: Sequence[Example]) -> BlockDataset:
        col = columns["input_ids"]
        blocks = mlm_blocks(col.flat, col.offsets, self.max_length, self.packing, keep_partial=split != "train")
        if len(blocks) == 0:
            raise LmlabError(
                f"The {split} split ({len(examples)} documents, {int(col.offsets[-1] - col.offsets[0])} tokens) "
                f"yields no full block of dataset.max_length={self.max_length} tokens. Lower dataset.max_length, "
                f"use dataset.packing=true, or add data."
            )
        if split == "train":
            return blocks
        # The split's name in the seed: val and test blocks with the same index get different masks.
        return EvalBlocks(blocks, (zlib.crc32(split.encode()) + self.eval_mask_seed * 1_000_003) * 1_000_000)

    def collator(self, tokenizer: Any, pad_to_multiple_of: int | None) -> MaskingCollator:
        return MaskingCollator(tokenizer, self.mlm_probability, pad_to_multiple_of)

    # ---- the module
    def tokenizer(self, model_cfg: Mapping[str, Any], datamodule: Any) -> Any:
        config = masked_config(model_cfg)
        self.check_position_limit(getattr(config, "max_position_embeddings", None))
        tokenizer = task_tokenizer(model_cfg, datamodule)
        if tokenizer.mask_token is None:
            raise LmlabError(
                f"task=masked_lm needs a tokenizer with a mask token, but "
                f"{model_cfg.get('tokenizer') or model_cfg.get('name_or_path')!r} has none (model.tokenizer=bpe has "
                f"none either). Use the model's own tokenizer, e.g. model=minilm or model=tiny_bert."
            )
        return tokenizer

    def module_class(self) -> type:
        return MaskedLM


def masked_config(model_cfg: Mapping[str, Any]) -> Any:
    """The model's HF config (no weights loaded), refusing models with no masked-LM head (decoders)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    name, scratch = model_cfg.get("name_or_path"), dict(model_cfg.get("from_scratch") or {})
    if name is None and "model_type" in scratch:
        config = transformers.AutoConfig.for_model(scratch.pop("model_type"), **scratch)
    else:
        try:
            config = transformers.AutoConfig.from_pretrained(name, **scratch)
        except (OSError, ValueError) as err:
            raise LmlabError(f"Could not read the model config of model.name_or_path={name!r}: {err}") from err
    if config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise LmlabError(
            f"task=masked_lm needs an encoder with a masked-LM head, but model.name_or_path={name!r} is a "
            f"'{config.model_type}' model. Use model=minilm, model=bert, model=tiny_bert or any HF masked LM."
        )
    return config
