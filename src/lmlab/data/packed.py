"""Packed blocks cut at read time from a memory-mapped token stream, and their order: a pure function of
(seed, epoch) over one global index, sliced by rank.

`PackedBlocks` is what the causal-LM task's packed `BlockDataset` is (the same blocks: `length` tokens, stride
`length - 1`, so every token but the stream's first is a target exactly once), without a precomputed start array:
block k starts at k * (length - 1). Changing `max_length` re-cuts the blocks; the shards are never re-prepared.

`global_order(n, seed, epoch)` is `ResumableRandomSampler`'s permutation (the same torch generator and seed mix),
so at one rank the order is today's. `ElasticBlockSampler` gives step s, rank r of W ranks (batch B) the global
positions [start + s*W*B + r*B, start + s*W*B + (r+1)*B), in full steps only at W > 1 (the remainder is logged; one
rank keeps its last, shorter batch, as today): after S steps on W ranks exactly the first S*W*B positions are
consumed, whatever W was, so a run resumed on another number of ranks with `start` = S*W*B (the checkpoint stores
it: lmlab.launch.requeue) continues the same global order with no block repeated or skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

log = logging.getLogger(__name__)


class PackedBlocks(Dataset):
    """Blocks of `length` tokens with stride `length - 1` over tokens[begin:end] (any sliceable: a numpy array, a
    memmap or `lmlab.data.shards.SplitTokens`). `keep_partial`: keep the last, shorter block (val/test)."""

    def __init__(self, tokens: Any, length: int, keep_partial: bool, begin: int = 0, end: int | None = None):
        if length < 2:
            raise ValueError(f"length={length}: a language-model block needs at least 2 tokens.")
        self.tokens, self.length, self.begin = tokens, length, begin
        self.end = len(tokens) if end is None else end
        n, stride = self.end - self.begin, length - 1
        if n < 2:
            self.count = 0
        elif keep_partial:
            self.count = -(-(n - 1) // stride)
        else:
            self.count = max(0, (n - length) // stride + 1)

    def __len__(self) -> int:
        return self.count

    def start(self, index: int) -> int:
        return self.begin + index * (self.length - 1)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        start = self.start(index)
        return {"input_ids": self.tokens[start : min(start + self.length, self.end)], "idx": index}

    @property
    def lengths(self) -> np.ndarray:
        starts = self.begin + np.arange(self.count, dtype=np.int64) * (self.length - 1)
        return np.minimum(self.length, self.end - starts)


def global_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's permutation of range(n): ResumableRandomSampler's, bit for bit."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).numpy()


class ElasticBlockSampler(DistributedSampler):
    """Rank `rank`'s indices of the global order; a DistributedSampler by type only (Lightning leaves it alone).

    One step of W ranks takes W x B consecutive global positions; rank r's batch is the r-th B of them. At W > 1 an
    epoch is cut to a multiple of W x B (every rank has the same number of full batches: DDP steps together); at
    one rank the last, shorter batch is kept, as a plain DataLoader over ResumableRandomSampler has it (the order and
    batches of today's single-process runs, bit for bit).

    A resume (`resume`) starts the epoch at global position `start`, counted by whatever world size saved it, and
    remembers the loop's batch count `base` there: Lightning numbers the resumed epoch's batches from the restored
    count, so batch `i` is this loader's batch `i - base`.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int | None = None, world_size: int = 1, rank: int = 0, start: int = 0
    ):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.world_size, self.rank = world_size, rank
        self.epoch = 0
        self.per_step = world_size * batch_size
        self.start, self.base = start, 0  # global positions of this epoch consumed before this loader (a resume)
        whole = n if world_size == 1 else n // self.per_step * self.per_step
        if whole < n:
            log.info(
                "Each epoch trains on %d of %d blocks (a multiple of %d ranks x batch %d): the last %d positions of "
                "each epoch's order are left out",
                whole,
                n,
                world_size,
                batch_size,
                n - whole,
            )

    @property
    def usable(self) -> int:
        """Where this epoch's positions end: n at one rank, else the last whole step from `start`."""
        if self.world_size == 1:
            return self.n
        return self.start + (self.n - self.start) // self.per_step * self.per_step

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start = self.base = 0
        self.epoch = epoch

    def resume(self, epoch: int, start: int, batches_done: int) -> None:
        """Epoch `epoch` had consumed global positions [0, start) in `batches_done` batches (the loop's count)."""
        self.epoch, self.start, self.base = epoch, min(start, self.n), batches_done

    def consumed(self, batches_done: int) -> int:
        """Global positions of the current epoch consumed once the loop has counted `batches_done` batches."""
        return min(self.usable, self.start + max(0, batches_done - self.base) * self.per_step)

    def batch_positions(self, batch_idx: int) -> tuple[int, int]:
        """[first, stop): the global positions of this rank's batch `batch_idx` (the loop's index) of the epoch."""
        first = self.start + (batch_idx - self.base) * self.per_step + self.rank * self.batch_size
        return first, min(first + self.batch_size, self.usable)

    def positions(self) -> np.ndarray:
        """The global positions this rank takes this epoch, in order."""
        if self.world_size == 1:
            return np.arange(self.start, self.usable, dtype=np.int64)
        per_step, b = self.per_step, self.batch_size
        steps = np.arange((self.usable - self.start) // per_step, dtype=np.int64)
        return (self.start + steps[:, None] * per_step + self.rank * b + np.arange(b)[None, :]).reshape(-1)

    def __len__(self) -> int:
        # Lightning sizes the epoch (num_training_batches, once per fit) from this length and counts the resumed
        # epoch's batches from `base`: base batches + what is left, and never less than a whole epoch (a resume on
        # another world size: the later epochs are whole; an epoch that ends sooner ends when the loader does).
        left = len(self.positions())
        whole = self.n // self.per_step * self.batch_size if self.world_size > 1 else self.n
        return max(self.base * self.batch_size + left, whole)

    def __iter__(self) -> Iterator[int]:
        # seed_everything exports PL_GLOBAL_SEED; read late, as ResumableRandomSampler does.
        seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        order = self.order(seed)[self.positions()]
        # In chunks: a list of the whole epoch would hold ~36 bytes per block for the whole epoch (~50 MB for a
        # 1 GB corpus at 128 tokens a block).
        for begin in range(0, len(order), 65_536):
            yield from order[begin : begin + 65_536].tolist()

    def order(self, seed: int) -> np.ndarray:
        """The epoch's global order: block index at each global position (a mixture draws its own:
        lmlab.data.mixture.MixtureBlockSampler); positions, resume and rank slicing are this class's alone."""
        return global_order(self.n, seed, self.epoch)
