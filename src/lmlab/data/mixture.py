"""`dataset=mixture`: pre-train a causal LM on several sources with weights, scored per source.

Each source of `dataset.mixture` is an ordinary `TextDataModule` (the `files`/`bbc_news` LM path, unchanged: its own
split rule, split, dedupe, val/test token budgets and shard or tokenization cache), built with the mixture's shared
settings and the per-source overrides in `SOURCE_KEYS`. What the mixture adds:

- One tokenizer: `model.tokenizer=bpe` learns from the train text of every source, in mixture order (`splits["train"]`
  chains them; `model.bpe_train_bytes` samples it by document hash as for one source). The weights do not change it,
  so every point of a weight sweep shares one tokenizer, one set of shards and comparable bits-per-byte.
- The training order (`mixture_order`): an epoch is N = the train blocks of all sources (weight 0 included, so every
  point of a weight sweep has the same epoch length). Source i gets q_i = N x w_i of its positions (w normalised;
  largest remainders, so the shares are exact, not a binomial draw); which source fills each position is a seeded
  shuffle of those quotas, and a source's q_i blocks are fresh seeded permutations of its blocks, cycled when q_i
  exceeds its n_i blocks (upsampled) and cut when it is smaller (subsampled: a different subset each epoch). All of
  it is a function of (seed, epoch) over one global index, so `ElasticBlockSampler`'s positions, bitwise resume and
  resume on another number of ranks apply unchanged.
- Val and test: one loader over every source's blocks (source order; a source's blocks never span another), each
  block carrying its source id, so the module sums each source apart: `val/<source>/{loss,ppl,token_acc,bpb,tokens,
  bytes}` beside the totals `val/loss` (token-weighted over sources) and `val/bpb` (byte-weighted: nats over bytes of
  all sources). One loader keeps `eval.py` (which tests one loader) reproducing the test metrics exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from lmlab.data.datamodule import TextDataModule
from lmlab.data.multitask import largest_remainder
from lmlab.data.packed import ElasticBlockSampler
from lmlab.data.sources import SPLITS, Example
from lmlab.errors import LmlabError

log = logging.getLogger(__name__)

# What a `dataset.mixture.<name>` entry may set: its weight and source, and the split settings of its own data
# (the rest, e.g. max_length, batch_size, seed, cache_dir, is the mixture's, shared by every source).
SOURCE_KEYS = (
    "weight",
    "source",
    "fractions",
    "split_seed",
    "dedupe",
    "near_duplicate_threshold",
    "stratify",
    "max_samples",
    "split_rule",
    "num_proc",
    "val_tokens",
    "test_tokens",
)
NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # a source name is a metric path component: val/<name>/bpb


def mixture_order(sizes: Sequence[int], weights: Sequence[float], seed: int, epoch: int) -> np.ndarray:
    """The epoch's global order: at each of sum(sizes) positions, a block index into the sources' concatenated
    blocks (source i's blocks are [sum(sizes[:i]), sum(sizes[:i+1]))). See the module docstring."""
    n = int(sum(sizes))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    live = [i for i, w in enumerate(weights) if w > 0]
    quotas = [0] * len(sizes)
    for i, q in zip(live, largest_remainder(n, [weights[i] for i in live])):
        quotas[i] = q
    which = np.random.default_rng([seed, epoch]).permutation(np.repeat(np.arange(len(sizes)), quotas))
    order = np.empty(n, dtype=np.int64)
    for i in live:
        rng = np.random.default_rng([seed, epoch, i + 1])  # the source's own stream: independent of the others
        passes = -(-quotas[i] // sizes[i])
        local = np.concatenate([rng.permutation(sizes[i]) for _ in range(passes)])[: quotas[i]]
        order[which == i] = offsets[i] + local
    return order


class MixtureBlockSampler(ElasticBlockSampler):
    """`ElasticBlockSampler` (positions, rank slices, resume) over `mixture_order` instead of one permutation."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], batch_size: int, **kwargs: Any):
        super().__init__(int(sum(sizes)), batch_size, **kwargs)
        self.sizes, self.weights = [int(s) for s in sizes], [float(w) for w in weights]

    def order(self, seed: int) -> np.ndarray:
        return mixture_order(self.sizes, self.weights, seed, self.epoch)


class SourceBlocks(Dataset):
    """The sources' blocks of one split, concatenated; each item says its source (its index in the mixture) and
    its global index (`idx`: what the data log records)."""

    def __init__(self, parts: Sequence[Any]):
        self.parts = list(parts)
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        item = dict(self.parts[k][index - int(self.offsets[k])])
        item["idx"], item["source"] = index, k
        return item

    @property
    def lengths(self) -> np.ndarray:
        return np.concatenate([np.asarray(p.lengths) for p in self.parts])


class MixtureSplit(Sequence[Example]):
    """One split of every source, chained (what the BPE, the manifest's example hashes and eval's counts read)."""

    def __init__(self, parts: Sequence[Any]):
        self.parts = list(parts)

    def __iter__(self) -> Iterator[Example]:
        for part in self.parts:
            yield from part

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, index: Any) -> Any:
        raise TypeError("a mixture split is chained from its sources: iterate it")

    def hashes(self) -> list[str]:
        from lmlab.rundir.lineage import split_hashes

        return sorted(h for part in self.parts for h in split_hashes({"s": part})["s"])


@contextlib.contextmanager
def _source(name: str) -> Iterator[None]:
    """A source's own data errors name the source (their `dataset.<key>` is then the shared setting, or the
    source's own `dataset.mixture.<name>.<key>`)."""
    try:
        yield
    except LmlabError as err:
        raise LmlabError(f"dataset.mixture.{name}: {err}") from err


class MixtureDataModule(TextDataModule):
    """Several sources with weights (`dataset.mixture`), one tokenizer, one global training order, per-source
    val/test metrics. The other arguments are `TextDataModule`'s, shared by every source."""

    def __init__(self, mixture: Mapping[str, Mapping[str, Any]] | None = None, **kwargs: Any):
        super().__init__(source=None, **kwargs)  # type: ignore[arg-type]  # each source has its own
        self.mixture = {str(name): dict(entry or {}) for name, entry in (mixture or {}).items()}
        self.shared = kwargs
        self.children: dict[str, TextDataModule] = {}
        self.weights: dict[str, float] = {}
        self.mixture_info: dict[str, dict[str, Any]] = {}

    @property
    def source_names(self) -> list[str]:
        return list(self.mixture)

    def _check(self) -> dict[str, float]:
        """The normalised weights, after checking every entry (here, not in __init__: an error raised under Hydra's
        instantiate would reach the user wrapped in an InstantiationException)."""
        if not self.mixture:
            raise LmlabError(
                "dataset.mixture is empty: give it sources, e.g. dataset=mixture (conf/dataset/mixture.yaml) or "
                "+dataset.mixture.<name>.source=... with +dataset.mixture.<name>.weight=1."
            )
        raw = {}
        for name, entry in self.mixture.items():
            key = f"dataset.mixture.{name}"
            if not NAME.match(name):
                raise LmlabError(
                    f"{key}: a source name is letters, digits, _ and - (it names metrics: val/<name>/bpb)."
                )
            unknown = sorted(set(entry) - set(SOURCE_KEYS))
            if unknown:
                raise LmlabError(
                    f"{key}.{unknown[0]} is not a per-source setting; a source takes {list(SOURCE_KEYS)} (the other "
                    f"dataset settings are shared: set dataset.{unknown[0]} instead)."
                )
            if not callable(entry.get("source")):
                raise LmlabError(
                    f"{key} has no source (the sources are {self.source_names}): give it one, e.g. "
                    f"+{key}.source._target_=lmlab.data.sources.files +{key}.source._partial_=true "
                    f"+{key}.source.path=corpus.jsonl, or fix the name of a source in the overrides."
                )
            weight = entry.get("weight")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise LmlabError(f"{key}.weight={weight!r}: a weight is a number >= 0, e.g. {key}.weight=0.3.")
            if weight < 0:
                raise LmlabError(
                    f"{key}.weight={weight}: weights cannot be negative; set {key}.weight=0 to leave {name} out of "
                    f"training (it is still scored on val/test)."
                )
            raw[name] = float(weight)
        total = sum(raw.values())
        if total == 0:
            raise LmlabError(
                f"every weight of dataset.mixture is 0 ({raw}): nothing to train on. Give at least one source a "
                f"positive weight, e.g. dataset.mixture.{next(iter(raw))}.weight=1."
            )
        return {name: w / total for name, w in raw.items()}

    # ---- data
    def load(self, shared: TextDataModule | None = None) -> dict[str, Any]:
        if self.splits is not None:
            return self.splits
        self.weights = self._check()
        if self.group_by_length:
            raise LmlabError("dataset.group_by_length=true does not apply to dataset=mixture (packed LM blocks).")
        for name, entry in self.mixture.items():
            # A per-source setting left null takes the shared one (conf/dataset/mixture.yaml lists some as null).
            options = {k: v for k, v in entry.items() if k not in ("weight", "source") and v is not None}
            child = TextDataModule(entry["source"], **{**self.shared, **options})
            child.task_reads_labels = self.task_reads_labels
            log.info("Mixture source %s (weight %.4g):", name, self.weights[name])
            with _source(name):
                child.load()
            self.children[name] = child
        self.splits = self.base_splits = {
            split: MixtureSplit([c.splits[split] for c in self.children.values()])  # type: ignore[index]
            for split in SPLITS
        }
        self.source_examples = []
        self._namespace()
        # The data's identity (what eval checks a checkpoint against, what caches the BPE): the sources and their
        # own fingerprints, not the weights (a weight sweep trains on the same data and tokenizer).
        blob = json.dumps([[name, c.data_fingerprint] for name, c in self.children.items()])
        self.data_fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return self.splits

    def _namespace(self) -> None:
        """The sources' duplicate and held-out counts for the manifest, keyed `<source>/<key>`."""
        self.duplicates = {f"{n}/{k}": v for n, c in self.children.items() for k, v in (c.duplicates or {}).items()}
        self.held_out = {f"{n}/{k}": v for n, c in self.children.items() for k, v in (c.held_out or {}).items()}

    def connect(self, tokenizer: Any, encoding: Any) -> None:
        # A task whose blocks are read in one global order and whose module scores each source (CausalLMTask).
        if not (getattr(encoding, "global_order", False) and getattr(encoding, "scores_sources", False)):
            raise LmlabError(
                "dataset=mixture pre-trains a causal LM: use task=causal_lm (this task neither reads a mixture's "
                "order nor scores its sources)."
            )
        super().connect(tokenizer, encoding)
        for child in self.children.values():
            child.connect(tokenizer, encoding)

    def train_text_bytes(self) -> int:
        return sum(c.train_text_bytes() for c in self.children.values())

    def setup(self, stage: str | None = None) -> None:
        self.load()
        if self.datasets:
            return
        if self.encoding is None:
            raise RuntimeError("MixtureDataModule.connect(tokenizer, encoding) must be called before setup().")
        for name, child in self.children.items():
            with _source(name):
                child.setup(stage)
        self.collate = self.encoding.collator(self.tokenizer, self.pad_to_multiple_of)
        for split in SPLITS:
            self.datasets[split] = SourceBlocks([c.datasets[split] for c in self.children.values()])
        self._namespace()
        names = self.source_names
        sizes = [len(self.children[n].datasets["train"]) for n in names]
        live = [n for n in names if self.weights[n] > 0]
        quotas = dict(zip(live, largest_remainder(sum(sizes), [self.weights[n] for n in live])))
        self.mixture_info = {
            name: {
                "weight": self.weights[name],
                "train_blocks": size,
                "train_tokens": int(np.sum(self.children[name].datasets["train"].lengths)),
                "epoch_blocks": quotas.get(name, 0),  # its share of each epoch's sum(train_blocks) positions
            }
            for name, size in zip(names, sizes)
        }
        for name, info in self.mixture_info.items():
            log.info(
                "Mixture %s: weight %.4g, %d of each epoch's %d blocks (%d train blocks: %s)",
                name,
                info["weight"],
                info["epoch_blocks"],
                sum(sizes),
                info["train_blocks"],
                "upsampled" if info["epoch_blocks"] > info["train_blocks"] else "each at most once",
            )

    def block_sampler(self, world_size: int, rank: int) -> ElasticBlockSampler:
        sizes = [len(self.children[n].datasets["train"]) for n in self.source_names]
        weights = [self.weights[n] for n in self.source_names]
        return MixtureBlockSampler(sizes, weights, self.batch_size, world_size=world_size, rank=rank)
