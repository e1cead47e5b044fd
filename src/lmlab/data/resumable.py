"""A training sampler whose order depends only on (seed, epoch), so a run resumed mid-epoch sees the same batches."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DataLoader, RandomSampler


class ResumableRandomSampler(RandomSampler):
    """Shuffles each epoch with its own generator seeded by (seed, epoch) instead of the global RNG.

    `skip(epoch, n)` drops the first `n` indices of that epoch once: the part a checkpoint had already trained on
    (Lightning restarts a mid-epoch resume at the loader's first batch unless the loader is stateful).
    It subclasses RandomSampler so that under DDP Lightning swaps it for its own seeded DistributedSampler.
    """

    def __init__(self, data_source: Sized, seed: int | None = None) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0
        self._skip: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at every epoch start
        self.epoch = epoch

    def skip(self, epoch: int, count: int) -> None:
        self._skip = (epoch, count)

    def __iter__(self) -> Iterator[int]:
        # seed_everything exports PL_GLOBAL_SEED; read it late so the sampler can be built before seeding.
        seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        generator = torch.Generator().manual_seed(seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.data_source), generator=generator).tolist()
        if self._skip is not None and self._skip[0] == self.epoch:
            order = order[self._skip[1] :]
            self._skip = None
        yield from order


class ResumableDataLoader(DataLoader):
    """The training loader: a mid-epoch resume continues exactly where the checkpoint stopped, because its sampler
    (ResumableRandomSampler, LengthGroupedSampler, SubtaskBatchSampler) skips the batches already trained on
    (`resume_train_sampler`, from the loop's own progress). Lightning only knows that a loader resumes when it has
    `state_dict`/`load_state_dict`, and otherwise warns "your dataloader is not resumable ... unreliable results"
    on every such resume. The position lives in the loop's progress, so the loader's own state is empty."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass
