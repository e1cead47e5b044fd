"""Multi-task data: one TextDataModule per sub-task, one split per source, and a sampler that mixes their batches.

Each training batch comes from one sub-task (its own labels, collator and batch size); `SubtaskBatchSampler` decides
which sub-task comes next. What an epoch is, per `dataset.sampling` (K sub-tasks, n_t = batches of sub-task t,
ceil(train examples / batch_size)):

- `proportional` (default): an epoch is sum(n_t) batches, every batch of every sub-task exactly once, in a random
  order: each example of every sub-task is seen once per epoch (the MT-DNN schedule).
- `temperature` (`dataset.temperature` T): sub-task t gets round(E * p_t) of the epoch's E = sum(n_t) batches,
  p_t ~ n_t^(1/T) (T=1 is proportional, larger T favours small sub-tasks), in a random order.
- `round_robin`: sub-tasks in turn, one batch each; an epoch is one pass of the largest sub-task (K * max(n_t)
  batches), so the smaller ones are repeated (a fresh shuffle for each repeat).

`dataset.epoch_batches=N` fixes the epoch at N batches instead (shares as above). A sub-task given more batches than
it has repeats its examples (reshuffled per pass); one given fewer sees that many distinct batches. The schedule is a
function of (seed, epoch) only, and `skip` drops what a mid-epoch checkpoint already trained on: resume is exact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lmlab.data.datamodule import TextDataModule
from lmlab.data.resumable import ResumableDataLoader
from lmlab.data.sources import SPLITS, Example
from lmlab.errors import LmlabError

log = logging.getLogger(__name__)

STRATEGIES = ("proportional", "temperature", "round_robin")
# Settings that make a split: sub-tasks of one source must agree on them, so they share one split.
SPLIT_KEYS = ("fractions", "split_seed", "dedupe", "near_duplicate_threshold", "stratify", "max_samples")


def largest_remainder(total: int, shares: Sequence[float]) -> list[int]:
    """Integers summing to `total`, proportional to `shares` (Hamilton's method; ties go to the earlier one)."""
    raw = [total * s / sum(shares) for s in shares]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


class SubtaskBatchSampler(Sampler):
    """Yields `(sub-task index, example indices)` for each batch of an epoch (see the module docstring)."""

    def __init__(
        self,
        sizes: Sequence[int],
        batch_sizes: Sequence[int],
        strategy: str = "proportional",
        temperature: float = 1.0,
        epoch_batches: int | None = None,
        seed: int = 0,
    ) -> None:
        check_sampling(strategy, temperature, epoch_batches)
        self.sizes, self.batch_sizes = [int(n) for n in sizes], [int(b) for b in batch_sizes]
        self.strategy, self.temperature, self.seed = strategy, float(temperature), int(seed)
        self.num_batches = [-(-n // b) for n, b in zip(self.sizes, self.batch_sizes)]
        if strategy == "round_robin":
            total = epoch_batches or len(self.sizes) * max(self.num_batches)
            self.quotas = [total // len(self.sizes) + (i < total % len(self.sizes)) for i in range(len(self.sizes))]
        else:
            power = 1.0 if strategy == "proportional" else 1.0 / self.temperature
            total = epoch_batches or sum(self.num_batches)
            self.quotas = largest_remainder(total, [n**power for n in self.num_batches])
        self.epoch = 0
        self._skip: tuple[int, int] | None = None

    def __len__(self) -> int:
        return sum(self.quotas)

    def set_epoch(self, epoch: int) -> None:  # Lightning calls it at every epoch start
        self.epoch = int(epoch)

    def skip(self, epoch: int, batches: int) -> None:
        """Drop the first `batches` of `epoch`'s schedule, once: what a mid-epoch checkpoint already trained on."""
        self._skip = (int(epoch), int(batches))

    def _generator(self, *parts: int) -> torch.Generator:
        return torch.Generator().manual_seed(
            int(hashlib.sha256(json.dumps([self.seed, *parts]).encode()).hexdigest()[:15], 16)
        )

    def task_batches(self, task: int, epoch: int) -> list[list[int]]:
        """The sub-task's batches this epoch: shuffled passes over its examples, as many as its quota needs."""
        out: list[list[int]] = []
        n, b = self.sizes[task], self.batch_sizes[task]
        for cycle in range(-(-self.quotas[task] // self.num_batches[task])):
            order = torch.randperm(n, generator=self._generator(epoch, task, cycle)).tolist()
            out += [order[i : i + b] for i in range(0, n, b)]
        return out[: self.quotas[task]]

    def schedule(self, epoch: int) -> list[tuple[int, list[int]]]:
        """The epoch's batches in order, each `(sub-task, indices)`."""
        if self.strategy == "round_robin":
            tasks = [t for r in range(max(self.quotas)) for t in range(len(self.sizes)) if r < self.quotas[t]]
        else:
            slots = [t for t, q in enumerate(self.quotas) for _ in range(q)]
            tasks = [slots[i] for i in torch.randperm(len(slots), generator=self._generator(epoch, -1)).tolist()]
        streams = [iter(self.task_batches(t, epoch)) for t in range(len(self.sizes))]
        return [(t, next(streams[t])) for t in tasks]

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        batches = self.schedule(self.epoch)
        if self._skip is not None and self._skip[0] == self.epoch:
            batches = batches[self._skip[1] :]
            self._skip = None
        yield from batches


def check_sampling(strategy: str, temperature: float, epoch_batches: int | None) -> None:
    if strategy not in STRATEGIES:
        raise LmlabError(f"dataset.sampling={strategy!r} is not one of {list(STRATEGIES)}.")
    if strategy == "temperature" and not (isinstance(temperature, (int, float)) and temperature > 0):
        raise LmlabError(
            f"dataset.temperature={temperature!r} must be a number > 0 (1 = proportional; 2 or more "
            f"samples the smaller sub-tasks more often)."
        )
    if epoch_batches is not None and (
        isinstance(epoch_batches, bool) or not isinstance(epoch_batches, int) or epoch_batches < 1
    ):
        raise LmlabError(
            f"dataset.epoch_batches={epoch_batches!r} must be a positive number of batches, or null "
            f"(the strategy's own epoch)."
        )


class SubtaskBatches(Dataset):
    """Indexed by `(sub-task, indices)`: that sub-task's examples, collated by its collator, tagged with `task`."""

    def __init__(self, datasets: Sequence[Dataset], collators: Sequence[Any]) -> None:
        self.datasets, self.collators = list(datasets), list(collators)

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key: tuple[int, list[int]]) -> dict[str, Any]:
        task, indices = key
        batch = self.collators[task]([self.datasets[task][i] for i in indices])
        batch["task"] = torch.tensor(task)
        return batch


def _whole_batch(batch: Any) -> Any:
    return batch  # module level (not a lambda): picklable for loader workers


def _source_key(source: Any) -> str:
    """The identity of a source (a functools.partial of a lmlab.data.sources function and its arguments)."""
    func = getattr(source, "func", source)
    keywords = getattr(source, "keywords", {})
    name = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', repr(func))}"
    return json.dumps([name, list(getattr(source, "args", ())), keywords], sort_keys=True, default=str)


def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


class MultiTaskDataModule(pl.LightningDataModule):
    """Sub-tasks, each a TextDataModule: the `dataset.*` settings here are every sub-task's defaults, and
    `subtasks.<name>` holds what differs (e.g. `{one_vs_rest: sports}`), or a whole dataset config
    (`+dataset@dataset.subtasks.<name>=files`). Sub-tasks on one source share one split, made before any
    relabelling."""

    def __init__(
        self,
        subtasks: Mapping[str, Any],
        sampling: str = "proportional",
        temperature: float = 2.0,
        epoch_batches: int | None = None,
        **defaults: Any,
    ) -> None:
        super().__init__()
        if not subtasks:
            raise LmlabError("task=multitask needs at least one sub-task: dataset.subtasks.<name>={...}.")
        self.sampling, self.temperature, self.epoch_batches = sampling, temperature, epoch_batches
        self.defaults = {k: _plain(v) for k, v in defaults.items()}
        self.subtasks: dict[str, TextDataModule] = {}
        for name, spec in subtasks.items():
            if "/" in str(name):
                raise LmlabError(
                    f"dataset.subtasks: the sub-task name {name!r} may not contain '/' (metric names "
                    f"are <stage>/<sub-task>/<metric>)."
                )
            if isinstance(spec, TextDataModule):  # a whole dataset config, instantiated by Hydra
                self.subtasks[str(name)] = spec
            else:
                changes = {k: _plain(v) for k, v in dict(spec or {}).items()}
                unknown = sorted(set(changes) - set(self.defaults) - {"source"})
                if unknown:
                    raise LmlabError(
                        f"dataset.subtasks.{name} has unknown dataset keys {unknown}; known: {sorted(self.defaults)}."
                    )
                self.subtasks[str(name)] = TextDataModule(**{**self.defaults, **changes})
        self.names = list(self.subtasks)
        first = self.subtasks[self.names[0]]
        # What the rest of lmlab reads from a datamodule (the cache dir, the run seed).
        self.cache_dir, self.seed, self.batch_size = first.cache_dir, first.seed, first.batch_size
        self.max_length, self.packing = first.max_length, first.packing
        self.splits: dict[str, list[Example]] | None = None
        self.sampler: SubtaskBatchSampler | None = None
        self._resume_skip: tuple[int, int] | None = None
        self.labels: list[str] | None = None  # "<sub-task>/<label>", set by the task: the manifest shows them

    # ---- data
    def load(self) -> dict[str, list[Example]]:
        """Each sub-task's splits; sub-tasks reading the same source share its split (checked to be identical)."""
        if self.splits is not None:
            return self.splits
        check_sampling(self.sampling, self.temperature, self.epoch_batches)
        groups: dict[str, list[str]] = {}
        for name, dm in self.subtasks.items():
            groups.setdefault(_source_key(dm.source), []).append(name)
        self.groups = list(groups.values())
        for names in self.groups:
            lead = self.subtasks[names[0]]
            for name in names[1:]:
                dm = self.subtasks[name]
                differ = [k for k in SPLIT_KEYS if _plain(getattr(dm, k)) != _plain(getattr(lead, k))]
                if differ:
                    raise LmlabError(
                        f"Sub-tasks {names[0]!r} and {name!r} read the same source but would split it differently "
                        f"({', '.join(f'{k}: {getattr(lead, k)} vs {getattr(dm, k)}' for k in differ)}): one "
                        f"would train on the other's test examples through the shared encoder. Sub-tasks of one "
                        f"source share one split: give them the same {', '.join(differ)}."
                    )
            lead.load()
            for name in names[1:]:
                self.subtasks[name].load(shared=lead)
                ids = {s: [ex.id for ex in self.subtasks[name].splits[s]] for s in SPLITS}
                assert ids == {s: [ex.id for ex in lead.splits[s]] for s in SPLITS}, (names[0], name)
        # Each source's examples once (the lead sub-task's labels), for what reads `datamodule.splits`: the
        # manifest's sizes, a BPE tokenizer trained on the training text.
        self.splits = {s: [ex for names in self.groups for ex in self.subtasks[names[0]].splits[s]] for s in SPLITS}
        self.data_fingerprint = hashlib.sha256(
            json.dumps([[name, dm.data_fingerprint] for name, dm in self.subtasks.items()]).encode()
        ).hexdigest()[:16]
        self.duplicates = {
            f"{names[0]}/{k}": v for names in self.groups for k, v in self.subtasks[names[0]].duplicates.items()
        }
        self.source_examples = [ex for names in self.groups for ex in self.subtasks[names[0]].source_examples]
        log.info(
            "Sub-tasks %s; shared splits: %s",
            {n: {s: len(dm.splits[s]) for s in SPLITS} for n, dm in self.subtasks.items()},
            [names for names in self.groups if len(names) > 1] or "none",
        )
        return self.splits

    def connect(self, tokenizer: Any, encodings: Mapping[str, Any]) -> None:
        """One tokenizer (the shared encoder's), one encoding per sub-task (its labels)."""
        self.tokenizer = tokenizer
        for name, dm in self.subtasks.items():
            dm.connect(tokenizer, encodings[name])

    def setup(self, stage: str | None = None) -> None:
        self.load()
        for dm in self.subtasks.values():
            dm.setup(stage)
        self.datasets = {name: dm.datasets for name, dm in self.subtasks.items()}

    # ---- loaders
    def train_dataloader(self) -> DataLoader:
        dms = [self.subtasks[n] for n in self.names]
        self.sampler = SubtaskBatchSampler(
            [len(dm.datasets["train"]) for dm in dms],
            [dm.batch_size for dm in dms],
            self.sampling,
            self.temperature,
            self.epoch_batches,
            seed=self.seed,
        )
        if self._resume_skip is not None:
            # Lightning iterates (and prefetches) the resumed epoch before it calls set_epoch.
            epoch, batches_done = self._resume_skip
            self.sampler.set_epoch(epoch)
            self.sampler.skip(epoch, batches_done)
            self._resume_skip = None
        workers = dms[0].num_workers
        # batch_size=None: the sampler yields whole batches, the dataset collates them.
        return ResumableDataLoader(  # a mid-epoch resume is exact: the sampler skips what was done
            SubtaskBatches([dm.datasets["train"] for dm in dms], [dm.collate for dm in dms]),
            batch_size=None,
            sampler=self.sampler,
            collate_fn=_whole_batch,
            num_workers=workers,
            generator=torch.Generator().manual_seed(int(os.environ.get("PL_GLOBAL_SEED", 0))),
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def resume_train_sampler(self, epoch: int, batches_done: int) -> None:
        """Called by the requeue callback on restore: epoch `epoch` had already trained on `batches_done` batches."""
        self._resume_skip = (epoch, batches_done)

    def loader(self, split: str) -> list[DataLoader]:
        """One loader per sub-task, in `names` order (dataloader_idx = the sub-task's position)."""
        return [self.subtasks[n].loader(split) if split != "train" else self._ordered(n) for n in self.names]

    def _ordered(self, name: str) -> DataLoader:
        dm = self.subtasks[name]  # eval on the training split: in order, no shuffling
        return DataLoader(
            dm.datasets["train"], batch_size=dm.eval_batch_size, collate_fn=dm.collate, num_workers=dm.num_workers
        )

    def val_dataloader(self) -> list[DataLoader]:
        return self.loader("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self.loader("test")

    def example_ids(self, split: str) -> list[str]:
        return [f"{n}/{i}" for n in self.names for i in self.subtasks[n].example_ids(split)]

    def state_dict(self) -> dict[str, Any]:
        return {"data_fingerprint": self.data_fingerprint}
