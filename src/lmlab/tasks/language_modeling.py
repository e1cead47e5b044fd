"""Causal language modeling: next-token loss, perplexity and bits-per-byte over whole splits, packing, samples.

Blocks: a token stream is cut into blocks of `max_length` tokens that overlap by one token (stride max_length - 1),
so every token but the stream's first is a prediction target exactly once, whatever the batch size. With
`dataset.packing=true` (the default) a split's documents, each ending in EOS, form one stream (`run_clm.py`'s
`group_texts`, without losing the first token of each block); with `packing=false` every document is its own
stream (one example per block of a document, dynamic padding, loss masked on pads). Training drops a partial last
block (no padding at all when packed); val and test keep it, padded and masked, so their numbers are exact.

bits-per-byte = Σ nats / (ln 2 × UTF-8 bytes of the target tokens); an EOS target counts as one byte (the document
boundary a byte-level model would also have to encode), as in benchmarks/ngram.py.
"""

from __future__ import annotations

import contextlib
import logging
import math
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torchmetrics
from torch.nn import functional as F
from torch.utils.data import Dataset

from lmlab import rundir
from lmlab.data.datamodule import PadCollator
from lmlab.data.sources import Example
from lmlab.data.tokenizer import token_byte_lengths
from lmlab.errors import LmlabError
from lmlab.models import peft as adapters
from lmlab.models.backbone import compile_in_place, load_backbone
from lmlab.tasks.base import Task, TaskModule, task_tokenizer

log = logging.getLogger(__name__)

# Model config keys a causal LM uses; the classification-only ones are listed in conf/task/causal_lm.yaml.
MODEL_KEYS = (
    "name_or_path",
    "tokenizer",
    "bpe_vocab_size",
    "bpe_train_bytes",
    "from_scratch",
    "config_overrides",
    "attn_implementation",
    "compile",
    "compile_dynamic",
    "compile_mode",
    "gguf_file",
    "peft",
)


def block_starts(n_tokens: int, length: int, keep_partial: bool) -> np.ndarray:
    """Starts of blocks of `length` tokens with stride length - 1 over a stream of `n_tokens` tokens.

    Block k covers tokens [s_k, s_k + length) and predicts s_k + 1 ... s_k + length - 1, so the blocks' targets
    are tokens 1 ... n_tokens - 1, each exactly once. Without `keep_partial`, only full blocks are kept.
    """
    if length < 2:
        raise LmlabError(f"dataset.max_length={length}: a language-model block needs at least 2 tokens.")
    stride = length - 1
    starts = np.arange(0, max(n_tokens - 1, 0), stride, dtype=np.int64)
    if not keep_partial:
        starts = starts[starts + length <= n_tokens]
    return starts


class BlockDataset(Dataset):
    """Blocks (start, length) into one flat token array: zero-copy views, `idx` travels with each batch."""

    def __init__(self, tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
        self.tokens = tokens
        self.starts = starts
        self.lengths = lengths

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        start = int(self.starts[index])
        return {"input_ids": self.tokens[start : start + int(self.lengths[index])], "idx": index}


def lm_blocks(flat: np.ndarray, offsets: np.ndarray, length: int, packing: bool, keep_partial: bool) -> BlockDataset:
    """Blocks of one split whose documents are flat[offsets[i]:offsets[i+1]] (absolute offsets)."""
    streams = (
        [(int(offsets[0]), int(offsets[-1]))] if packing else list(zip(offsets[:-1].tolist(), offsets[1:].tolist()))
    )
    starts, lengths = [], []
    for begin, end in streams:
        s = block_starts(end - begin, length, keep_partial)
        starts.append(begin + s)
        lengths.append(np.minimum(length, end - begin - s))
    return BlockDataset(
        flat,
        np.concatenate(starts) if starts else np.zeros(0, np.int64),
        np.concatenate(lengths) if lengths else np.zeros(0, np.int64),
    )


class CausalCollator(PadCollator):
    """PadCollator that also says, as batch["padded"], whether the batch has padding: decided on the host when
    the batch is built, so the model needs no device sync to learn that a batch (every packed training block) has
    none. Such a batch runs with no attention mask: transformers then takes SDPA's is_causal path without reading
    the mask itself (a sync per step), and a compiled model does not build a 4-D mask (which rules out the flash
    kernel)."""

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = super().__call__(features)
        batch["padded"] = not bool(batch["attention_mask"].all())
        return batch


def lm_metrics(names: Sequence[str] = ("nats", "tokens", "correct", "bytes")) -> torchmetrics.MetricCollection:
    """Split totals (summed over every batch, synced across ranks): nats, targets, correct, bytes. Only the totals a
    task updates: computing one that was never updated makes torchmetrics warn at every epoch end."""
    sums = {name: torchmetrics.SumMetric().set_dtype(torch.float64) for name in names}
    return torchmetrics.MetricCollection(sums, compute_groups=False)


class LMModule(TaskModule):
    """What CausalLM and MaskedLM share: an HF `*ForCausalLM` / `*ForMaskedLM` in `self.net` (peft-wrapped or not),
    split totals in `self.metrics[stage]` (`lm_metrics`: nats, tokens, correct, and bytes where bits-per-byte is a
    metric), their epoch-end loss/ppl/accuracy, and the export. The training steps stay apart: the causal loss
    counts its unmasked targets, the masked one has only targets (no -100s) and needs no count."""

    auto_class: str  # the transformers Auto class of `self.net`; an exported dir loads with it
    accuracy: str  # the name of the argmax accuracy over the targets: token_acc, masked_acc

    def _load_net(
        self,
        name_or_path: str | None,
        from_scratch: Mapping[str, Any] | None,
        config_overrides: Mapping[str, Any] | None,
        attn_implementation: str | None,
        gguf_file: str | None,
    ) -> torch.nn.Module:
        """The `auto_class` model (a hub/local checkpoint, or random init from `from_scratch`); a loaded one pads
        with the connected tokenizer's pad token (`_use_tokenizer` runs first)."""
        return load_backbone(
            name_or_path,
            auto_class=self.auto_class,
            from_scratch=from_scratch,
            config_overrides=dict(config_overrides or {}),
            attn_implementation=attn_implementation,
            gguf_file=gguf_file,
            **({"pad_token_id": self.tokenizer.pad_token_id} if from_scratch is None else {}),
        )

    # ---- the parts optimizer groups and the throughput callback work on: the base model, the head modules around it
    @property
    def backbone(self) -> torch.nn.Module:
        return adapters.unwrap(self.net).base_model

    @property
    def head(self) -> torch.nn.Module:
        net = adapters.unwrap(self.net)
        return torch.nn.ModuleList(m for m in net.children() if m is not net.base_model)

    @abstractmethod
    def token_losses(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-target nats (0 where masked), the target ids (-100 where masked), and the argmax predictions."""

    def _eval_step(self, stage: str, batch: Mapping[str, torch.Tensor], dataloader_idx: int = 0) -> None:
        nats, target, pred = self.token_losses(batch)
        valid = target != -100
        metrics = self.metrics[stage]
        metrics["nats"].update(nats.double().sum())
        metrics["tokens"].update(valid.sum().double())
        metrics["correct"].update(((pred == target) & valid).sum().double())
        if "bytes" in metrics:
            metrics["bytes"].update((self.token_bytes[target.clamp(min=0)] * valid).sum())
        per_source = getattr(self, "source_metrics", None)
        if per_source is not None and "source" in batch:
            # dataset=mixture: each block's source; every source's sums are updated on every batch (zeros where
            # absent), so none is computed without an update (torchmetrics warns) whatever a rank's shard holds.
            nats, rows = nats.double(), batch["source"].to(target.device)
            for k, sums in enumerate(per_source[stage]):
                mine = valid & (rows == k)[:, None]
                sums["nats"].update((nats * mine).sum())
                sums["tokens"].update(mine.sum().double())
                sums["correct"].update(((pred == target) & mine).sum().double())
                sums["bytes"].update((self.token_bytes[target.clamp(min=0)] * mine).sum())

    def _epoch_values(self, collection: torchmetrics.MetricCollection) -> dict[str, float]:
        """loss, ppl, accuracy, bpb (where bytes are summed) and tokens of a collection's totals; resets it."""
        totals = {k: float(v) for k, v in collection.compute().items()}
        collection.reset()
        tokens = max(totals["tokens"], 1.0)
        loss = totals["nats"] / tokens
        values = {"loss": loss, "ppl": math.exp(min(loss, 700.0)), self.accuracy: totals["correct"] / tokens}
        if "bytes" in totals:
            values["bpb"] = totals["nats"] / (math.log(2) * totals["bytes"]) if totals["bytes"] else float("nan")
        values["tokens"] = totals["tokens"]
        return values

    def _log_epoch_metrics(self, stage: str) -> None:
        values = self._epoch_values(self.metrics[stage])
        # Already reduced over ranks by torchmetrics; logged as plain numbers.
        logged = {f"{stage}/{name}": value for name, value in values.items()}
        per_source = getattr(self, "source_metrics", None)
        if per_source is not None:
            # dataset=mixture: <stage>/<source>/<metric>, and its bytes (the totals above are over all sources:
            # loss weighted by tokens, bpb by bytes).
            for source, sums in zip(self.hparams.sources, per_source[stage]):
                bytes_ = float(sums["bytes"].compute())
                source_values = {**self._epoch_values(sums), "bytes": bytes_}
                logged.update({f"{stage}/{source}/{name}": value for name, value in source_values.items()})
        self.log_dict(logged, prog_bar=False)
        self.log(f"{stage}/ppl_bar", values["ppl"], prog_bar=True, logger=False)

    def _export_weights(self, directory: Path) -> None:
        """`save_pretrained` of the model: loads with `auto_class` (with peft: an adapter dir, see
        lmlab.models.peft.export)."""
        if adapters.enabled(self.hparams.get("peft")):
            adapters.export(
                self.net,
                directory,
                self.hparams.peft,
                {
                    "auto_class": self.auto_class,
                    "name_or_path": self.hparams.name_or_path,
                    "gguf_file": self.hparams.gguf_file,
                    "from_scratch": self.hparams.from_scratch is not None,
                    "kwargs": {},
                },
            )
        else:
            self.net.save_pretrained(directory)


class CausalLM(adapters.AdapterCheckpoints, LMModule, pl.LightningModule):
    """An HF `AutoModelForCausalLM` (pretrained, GGUF, or random init) trained on next-token prediction."""

    auto_class = "AutoModelForCausalLM"
    accuracy = "token_acc"

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
        peft: Mapping[str, Any] | None = None,
        sources: Sequence[str] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer_object"])
        self.configure_strict_loading()
        self._use_tokenizer(tokenizer_object)
        rng = adapters.seed_base(peft)  # a rebuild reproduces the frozen base: adapter checkpoints omit it
        self.net = self._load_net(name_or_path, from_scratch, config_overrides, attn_implementation, gguf_file)
        if adapters.enabled(peft):  # adapters only: the (tied) lm_head and embeddings stay frozen
            self.net = adapters.wrap(self.net, peft, "CAUSAL_LM")
        adapters.restore_rng(rng)
        self.compiled = compile_in_place(self.net, compile, compile_dynamic, compile_mode)
        self.register_buffer(
            "token_bytes", torch.tensor(token_byte_lengths(self.tokenizer), dtype=torch.float64), persistent=False
        )
        self.metrics = torch.nn.ModuleDict({stage: lm_metrics() for stage in ("val", "test")})
        if sources:  # dataset=mixture: the sums of each source too (a hyperparameter: eval.py rebuilds them)
            self.source_metrics = torch.nn.ModuleDict(
                {stage: torch.nn.ModuleList(lm_metrics() for _ in sources) for stage in ("val", "test")}
            )
        self.on_train_epoch_start()
        self.train()  # from_pretrained returns eval mode, and Lightning keeps each module's mode as found

    # ---- loss
    def token_losses(
        self, batch: Mapping[str, torch.Tensor], predictions: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Per-target nats (0 where masked), the target ids (-100 where masked), and the argmax predictions
        (None when not asked for: training does not need them, and an argmax over the vocabulary is not free)."""
        ids = batch["input_ids"]
        mask = batch["attention_mask"] if batch.get("padded", True) else None
        if self.compiled and not torch.is_grad_enabled():
            # Eval batches: the last one of a split has fewer rows; a batch dimension dynamic from the first eval
            # graph means val and test reuse it instead of recompiling (tests/test_compile.py counts).
            torch._dynamo.maybe_mark_dynamic(ids, 0)
            if mask is not None:
                torch._dynamo.maybe_mark_dynamic(mask, 0)
        # use_cache=False: training and scoring never reuse keys/values; the cache would be built and dropped.
        logits = self.net(input_ids=ids, attention_mask=mask, use_cache=False).logits
        logits = logits[:, :-1].float()
        target = batch["labels"][:, 1:]
        nats = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none"
        ).view_as(target)
        return nats, target, logits.argmax(-1) if predictions else None

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        nats, target, _ = self.token_losses(batch, predictions=False)
        count = (target != -100).sum()
        loss = nats.sum() / count.clamp(min=1)
        self._log_train_loss(loss, nats, count)
        return loss

    def on_train_epoch_start(self) -> None:
        self._epoch_nats: torch.Tensor | float = 0.0  # device tensors once the first batch is in: no sync per step
        self._epoch_tokens: torch.Tensor | float = 0.0

    def _log_train_loss(self, loss: torch.Tensor, nats: torch.Tensor, count: torch.Tensor) -> None:
        """train/loss_step (also on the progress bar) on the steps the loggers write (and the first), and
        train/loss_epoch, the token-weighted mean, at the epoch end: the names `self.log(on_step=True,
        on_epoch=True)` gives. Lightning's self.log costs ~1-2 ms a call on CPU (it moves its metric state to the
        device again each call) and its epoch mean wants the batch size as a host int, a device sync per step."""
        self._epoch_nats = self._epoch_nats + nats.detach().sum().double()
        self._epoch_tokens = self._epoch_tokens + count
        every = max(int(self.trainer.log_every_n_steps), 1)
        if self.global_step == 0 or (self.global_step + 1) % every == 0:
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)

    def on_train_epoch_end(self) -> None:
        if isinstance(self._epoch_tokens, torch.Tensor):
            mean = self._epoch_nats / self._epoch_tokens.clamp(min=1)
            self.log("train/loss_epoch", mean.float(), on_step=False, on_epoch=True)

    # ---- samples
    @torch.no_grad()
    def complete(
        self, prompts: Sequence[str], max_new_tokens: int, sample: bool, temperature: float, top_k: int, seed: int
    ) -> list[str]:
        """Completions of each prompt: greedy, or sampled with its own seeded generator (global RNG untouched)."""
        was_training = self.training
        self.eval()
        out = []
        # A compiled model generates eager: every new cache length would be a new graph (a recompile per token).
        eager = torch.compiler.set_stance("force_eager") if self.compiled else contextlib.nullcontext()
        with torch.random.fork_rng(devices=[]), eager:
            torch.manual_seed(seed)
            for prompt in prompts:
                ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
                ids = ids.to(self.device)
                generated = self.net.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=sample,
                    temperature=temperature if sample else None,
                    top_k=top_k if sample else None,
                    top_p=None,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
                out.append(self.tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True))
        self.train(was_training)
        return out


def causal_config(model_cfg: Mapping[str, Any]) -> Any:
    """The model's HF config (no weights loaded), refusing encoders that have no causal-LM head."""
    import transformers
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    name, scratch = model_cfg.get("name_or_path"), dict(model_cfg.get("from_scratch") or {})
    if name is None and "model_type" in scratch:
        model_type = scratch["model_type"]
        config = transformers.AutoConfig.for_model(
            model_type, **{k: v for k, v in scratch.items() if k != "model_type"}
        )
    else:
        kwargs = {"gguf_file": model_cfg["gguf_file"]} if model_cfg.get("gguf_file") else {}
        try:
            config = transformers.AutoConfig.from_pretrained(name, **kwargs, **scratch)
        except (OSError, ValueError) as err:
            raise LmlabError(f"Could not read the model config of model.name_or_path={name!r}: {err}") from err
        model_type = config.model_type
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise LmlabError(
            f"task=causal_lm needs a causal (decoder-only) language model, but model.name_or_path={name!r} is a "
            f"'{model_type}' model, an encoder with no causal-LM head. Use model=llama_small, model=gpt2_small, "
            f"model=smollm2, or model.name_or_path=<any HF causal LM>."
        )
    return config


class LMTask(Task):
    """What CausalLMTask and MaskedLMTask share: blocks of dataset.max_length tokens (packed or per document), the
    model's position limit, and the LM model keys."""

    model_keys = MODEL_KEYS
    reads_labels = False
    # Training blocks in one global order, sliced by rank (lmlab.data.packed.ElasticBlockSampler): a resume on
    # another number of ranks continues it, no block repeated or skipped.
    global_order = True

    # Budgets and the evaluation schedule (task.max_tokens | task.max_flops, task.eval_every_tokens): set by
    # set_budget from the subclass's constructor; configure_trainer turns them into steps.
    max_tokens: int | None = None
    max_flops: float | None = None
    eval_every_tokens: int | None = None

    def set_budget(self, max_tokens: int | None, max_flops: float | None, eval_every_tokens: int | None) -> None:
        for key, value in (
            ("max_tokens", max_tokens),
            ("max_flops", max_flops),
            ("eval_every_tokens", eval_every_tokens),
        ):
            if value is not None and float(value) <= 0:
                raise LmlabError(f"task.{key}={value} must be a positive number (or null).")
        self.max_tokens, self.max_flops, self.eval_every_tokens = max_tokens, max_flops, eval_every_tokens

    def configure_trainer(self, trainer: Any, datamodule: Any, global_batch: int) -> None:
        """task.max_tokens | task.max_flops -> optimizer steps, task.eval_every_tokens -> the validation interval
        (lmlab.callbacks.eval_schedule), from the real tokens of a training block (padding not counted)."""
        from lmlab.callbacks.eval_schedule import EvalSchedule

        train = datamodule.datasets["train"]
        tokens_per_example = float(np.mean(train.lengths)) if len(train) else float(self.max_length)
        EvalSchedule.find(trainer).set_budget(
            tokens_per_example,
            global_batch,
            max_tokens=None if self.max_tokens is None else int(self.max_tokens),
            max_flops=None if self.max_flops is None else float(self.max_flops),
            eval_every_tokens=None if self.eval_every_tokens is None else int(self.eval_every_tokens),
        )

    def prepare(self, datamodule: Any) -> None:
        self.max_length, self.packing = int(datamodule.max_length), bool(datamodule.packing)

    def check_position_limit(self, limit: int | None) -> None:
        if limit is not None and self.max_length > int(limit):
            raise LmlabError(
                f"dataset.max_length={self.max_length} is beyond the model's position limit "
                f"({limit} positions); set dataset.max_length<={limit}."
            )


class CausalLMTask(LMTask):
    """Next-token prediction on the dataset's text (labels ignored); monitor val/loss, minimized."""

    def __init__(
        self,
        name: str,
        monitor: str,
        mode: str,
        optimized_metric: str,
        ignores: Sequence[str] = (),
        max_tokens: int | None = None,
        samples: Mapping[str, Any] | None = None,
        score: str = "final",
        max_flops: float | None = None,
        eval_every_tokens: int | None = None,
    ):
        super().__init__(name, monitor, mode, optimized_metric, ignores, score)
        self.set_budget(max_tokens, max_flops, eval_every_tokens)
        self.samples = dict(samples or {})

    # ---- the encoding
    def tokenize(self, tokenizer: Any, examples: Sequence[Example], max_length: int) -> dict[str, list]:
        # Whole documents, never truncated: the blocks are cut afterwards. EOS ends every document.
        ids = tokenizer(
            [ex.text for ex in examples], add_special_tokens=False, return_attention_mask=False, verbose=False
        )["input_ids"]
        eos = tokenizer.eos_token_id
        return {"input_ids": [[*doc, eos] if eos is not None else doc for doc in ids]}

    def cache_options(self) -> dict[str, Any]:
        return {"causal_lm": True, "truncation": False, "eos": True}

    def dataset(self, split: str, columns: Mapping[str, Any], examples: Sequence[Example]) -> BlockDataset:
        col = columns["input_ids"]
        blocks = lm_blocks(col.flat, col.offsets, self.max_length, self.packing, keep_partial=split != "train")
        if len(blocks) == 0:
            tokens = int(col.offsets[-1] - col.offsets[0])
            raise LmlabError(
                f"The {split} split ({len(examples)} documents, {tokens} tokens) yields no full block of "
                f"dataset.max_length={self.max_length} tokens{' per document' if not self.packing else ''}. "
                f"Lower dataset.max_length{', use dataset.packing=true' if not self.packing else ''}, or add data."
            )
        return blocks

    def collator(self, tokenizer: Any, pad_to_multiple_of: int | None) -> PadCollator:
        # Packed blocks: every batch max_length wide (only a split's last, partial block is shorter), so eval
        # batches have one width and a compiled model one graph for them.
        multiple = pad_to_multiple_of or (self.max_length if self.packing else None)
        return CausalCollator(tokenizer.pad_token_id, "right", multiple, causal_labels=True)

    # ---- the module
    def tokenizer(self, model_cfg: Mapping[str, Any], datamodule: Any) -> Any:
        # The architecture checks come first: they read only the config, and a wrong model is the likelier mistake.
        config = causal_config(model_cfg)
        self.check_position_limit(
            getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        )
        tokenizer = task_tokenizer(model_cfg, datamodule)
        if datamodule.packing and tokenizer.eos_token_id is None:
            raise LmlabError(
                f"dataset.packing=true separates documents with the EOS token, but the tokenizer of "
                f"{model_cfg.get('tokenizer') or model_cfg.get('name_or_path')!r} has none. Use dataset.packing=false "
                f"or a tokenizer with an EOS token."
            )
        return tokenizer

    def module_class(self) -> type:
        return CausalLM

    scores_sources = True  # dataset=mixture: CausalLM keeps val/test sums per source (masked LM does not)

    def module_kwargs(self, model_cfg: Mapping[str, Any], datamodule: Any) -> dict[str, Any]:
        # dataset=mixture: the module keeps val/test sums per source (lmlab.data.mixture)
        sources = getattr(datamodule, "source_names", None)
        return {"sources": list(sources)} if sources else {}

    def results(self, module: Any, datamodule: Any, logged: Mapping[str, float]) -> dict[str, Any]:
        """The logged numbers, plus a data mixture's normalised weights and train tokens per source."""
        metrics = super().results(module, datamodule, logged)
        for name, info in (getattr(datamodule, "mixture_info", None) or {}).items():
            metrics.update({f"mixture/{name}/{key}": value for key, value in info.items()})
        return metrics

    # ---- results
    def write_outputs(
        self, run_dir: Path, module: CausalLM, datamodule: Any, split: str, loggers: Sequence[Any] = ()
    ) -> None:
        """samples.md: completions of the fixed prompts, greedy and sampled (seeded); a W&B table when on."""
        prompts = list(self.samples.get("prompts") or [])
        if split != "test" or not prompts:
            return
        opts = {
            "max_new_tokens": int(self.samples.get("max_new_tokens", 40)),
            "temperature": float(self.samples.get("temperature", 0.8)),
            "top_k": int(self.samples.get("top_k", 50)),
            "seed": int(self.samples.get("seed", 0)),
        }
        greedy = module.complete(prompts, sample=False, **opts)
        sampled = module.complete(prompts, sample=True, **opts)
        lines = [
            f"# Samples ({opts['max_new_tokens']} new tokens; sampled: temperature {opts['temperature']}, "
            f"top-k {opts['top_k']}, seed {opts['seed']})",
            "",
        ]
        for prompt, g, s in zip(prompts, greedy, sampled):
            lines += [f"## {prompt}", "", f"- greedy: {prompt}**{g}**", f"- sampled: {prompt}**{s}**", ""]
        (Path(run_dir) / rundir.SAMPLES).write_text("\n".join(lines))
        for logger in loggers:
            if hasattr(logger, "log_table"):  # WandbLogger
                logger.log_table(
                    key="samples",
                    columns=["prompt", "greedy", "sampled"],
                    data=[list(row) for row in zip(prompts, greedy, sampled)],
                )
