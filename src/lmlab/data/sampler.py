"""Length-grouped, DDP-aware sampler for dynamic padding.

How it is meant to be used with Lightning
-----------------------------------------
This sampler does its own sharding across DDP ranks. Lightning, with its default
``Trainer(use_distributed_sampler=True)``, wraps any custom sampler that is not a
``DistributedSampler`` in a ``DistributedSamplerWrapper``, which re-shards and
re-shuffles its output: that would shard twice and destroy the grouping. This class
therefore *is* a ``DistributedSampler`` (it inherits only the type; it never runs
``DistributedSampler.__init__`` and has no ``dataset``), and Lightning leaves such
samplers alone. So, under DDP:

* keep ``use_distributed_sampler`` at its default (val/test loaders are then still
  sharded by Lightning as usual);
* build the sampler in ``LightningDataModule.train_dataloader`` with
  ``num_replicas=self.trainer.world_size`` and ``rank=self.trainer.global_rank``
  (the defaults read ``torch.distributed`` only if it is already initialized,
  which is not guaranteed when dataloaders are built);
* pass the *same* ``batch_size`` to the sampler and to the ``DataLoader``
  (``DataLoader(ds, batch_size=B, sampler=sampler, collate_fn=pad_per_batch)``):
  grouping is done in blocks of ``batch_size`` per rank;
* Lightning calls ``sampler.set_epoch(epoch)`` at the start of each epoch
  (``_set_sampler_epoch``), so the order changes per epoch without extra code.

Ordering (per epoch)
--------------------
1. A permutation of ``range(len(lengths))`` from ``torch.Generator`` seeded with
   ``seed + epoch`` (identity order when ``shuffle=False``).
2. DDP even split, like ``DistributedSampler``: pad by repeating the start of the
   permutation up to ``num_samples * num_replicas`` (``drop_last=False``), or cut
   the tail (``drop_last=True``, a different random tail each epoch).
3. Split into mega-batches of ``mega_batch_mult * batch_size * num_replicas``
   indices and sort each by length, descending (as HF ``group_by_length``).
4. The globally longest example is swapped to the front of the first
   mega-batch, so an out-of-memory error shows up in step 1, not mid-epoch.
5. Each mega-batch is cut into rounds of ``batch_size * num_replicas``; in each
   round rank ``r`` takes the contiguous slice ``[r*B, (r+1)*B)``. A rank's
   consecutive ``batch_size`` indices are therefore neighbours in a sorted
   mega-batch (length-homogeneous), and the ranks' batches in one step have
   similar lengths too (no rank waits for another's long batch). The final
   partial round is split into equal contiguous parts, so all ranks get exactly
   ``num_samples`` indices.

6. With ``shuffle=True`` the rounds (one batch per rank) are then put in a random
   order, except that the round holding the longest example stays first and a
   partial final round stays last.

Step 6 is where this differs from HF ``group_by_length``, whose batches run from
long to short inside each mega-batch: that periodic sweep shows up as a sawtooth
training loss (transformers #20810, qlora #228, xtuner #817) and makes any short
window of steps (progress-bar ETA, a throughput sample) unrepresentative of the
epoch. Shuffling whole rounds keeps each batch length-homogeneous and each step's
ranks matched. The randomness across epochs comes from the mega-batch membership
and the round order. With ``shuffle=True`` the
multiplier is reduced (as HF does for its default) so there are at least four
mega-batches — with a 2k-example dataset and ``batch_size=32`` a multiplier of 50
would otherwise put the whole epoch in one or two sorted blocks.

``drop_last`` here is the DDP even-split option of ``DistributedSampler``; whether a
short final batch is dropped is the ``DataLoader``'s ``drop_last``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

__all__ = ["LengthGroupedSampler"]


class LengthGroupedSampler(DistributedSampler):
    """Yield indices so each rank's consecutive ``batch_size`` indices have similar lengths.

    See the module docstring for the ordering and for how to use it with Lightning DDP (why it subclasses
    ``DistributedSampler`` without calling its ``__init__``).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
        mega_batch_mult: int = 50,
    ) -> None:
        if isinstance(lengths, torch.Tensor):
            lengths = lengths.tolist()
        self.lengths: list[int] = [int(x) for x in lengths]
        if len(self.lengths) == 0:
            raise ValueError("LengthGroupedSampler got an empty `lengths`; pass one length per dataset example.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        if not isinstance(mega_batch_mult, int) or mega_batch_mult < 1:
            raise ValueError(f"mega_batch_mult must be a positive int, got {mega_batch_mult!r}.")
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}.")
        if not 0 <= rank < num_replicas:
            raise ValueError(
                f"rank {rank} is out of range for num_replicas={num_replicas}; expected 0 <= rank < "
                "num_replicas (pass rank=trainer.global_rank, num_replicas=trainer.world_size)."
            )
        n = len(self.lengths)
        if drop_last and n < num_replicas:
            raise ValueError(
                f"drop_last=True with {n} examples and num_replicas={num_replicas} leaves no example per "
                "rank; use drop_last=False or more data."
            )
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0
        self._skip: tuple[int, int] | None = None
        # Same even-split arithmetic as torch's DistributedSampler.
        self.num_samples = n // num_replicas if drop_last else -(-n // num_replicas)
        self.total_size = self.num_samples * num_replicas
        round_size = batch_size * num_replicas
        if shuffle:
            # As HF does for its default: keep >= 4 mega-batches, otherwise a small dataset becomes one
            # sorted block and the epoch order is nearly the same every epoch.
            mega_batch_mult = max(1, min(mega_batch_mult, self.total_size // (4 * round_size)))
        self.mega_batch_mult = mega_batch_mult
        self.megabatch_size = mega_batch_mult * round_size

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation for ``epoch`` (Lightning calls this at each epoch start)."""
        self.epoch = int(epoch)

    def skip(self, epoch: int, count: int) -> None:
        """Drop this rank's first ``count`` indices of ``epoch``, once: what a mid-epoch checkpoint already
        trained on (Lightning restarts a resumed epoch at the loader's first batch)."""
        self._skip = (int(epoch), int(count))

    def __len__(self) -> int:
        return self.num_samples

    def _global_order(self) -> list[int]:
        """The full grouped order for all ranks (length ``total_size``), identical on every rank."""
        n = len(self.lengths)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            perm = torch.randperm(n, generator=g).tolist()
        else:
            perm = list(range(n))
        if self.total_size > n:
            # Repeat from the start (cyclically, in case padding exceeds n), as DistributedSampler does.
            pad = self.total_size - n
            perm += (perm * (pad // n + 1))[:pad]
        else:
            perm = perm[: self.total_size]

        lengths = self.lengths
        mbs = self.megabatch_size
        megabatches = [
            sorted(perm[i : i + mbs], key=lengths.__getitem__, reverse=True) for i in range(0, len(perm), mbs)
        ]
        # Longest example into the first batch; re-sorting keeps both mega-batches ordered.
        k = max(range(len(megabatches)), key=lambda j: lengths[megabatches[j][0]])
        if k != 0:
            megabatches[0][0], megabatches[k][0] = megabatches[k][0], megabatches[0][0]
            megabatches[k].sort(key=lengths.__getitem__, reverse=True)
        order = [i for mb in megabatches for i in mb]
        if not self.shuffle:
            return order
        round_size = self.batch_size * self.num_replicas
        full = (len(order) // round_size) * round_size
        rounds = [order[i : i + round_size] for i in range(0, full, round_size)]
        if len(rounds) < 2:
            return order
        rest = torch.randperm(len(rounds) - 1, generator=g).tolist()
        return [i for r in [rounds[0], *(rounds[1 + k] for k in rest)] for i in r] + order[full:]

    def _rank_slices(self, order: list[int], rank: int) -> list[int]:
        b, r = self.batch_size, self.num_replicas
        round_size = b * r
        out: list[int] = []
        # Mega-batches are multiples of round_size except the last, so rounds never straddle two of them.
        full = (len(order) // round_size) * round_size
        for start in range(0, full, round_size):
            out.extend(order[start + rank * b : start + (rank + 1) * b])
        tail = len(order) - full  # a multiple of r because total_size is
        if tail:
            share = tail // r
            out.extend(order[full + rank * share : full + (rank + 1) * share])
        return out

    def __iter__(self) -> Iterator[int]:
        indices = self._rank_slices(self._global_order(), self.rank)
        assert len(indices) == self.num_samples, (len(indices), self.num_samples)
        if self._skip is not None and self._skip[0] == self.epoch:
            indices = indices[self._skip[1] :]
            self._skip = None
        return iter(indices)
