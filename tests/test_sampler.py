"""LengthGroupedSampler: coverage, DDP split, determinism, homogeneity and padding saved."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lmlab.data.sampler import LengthGroupedSampler


def skewed_lengths(n: int = 4000, seed: int = 0, max_length: int = 512) -> list[int]:
    # Log-normal, like token counts of real documents: most short, a long tail clipped at max_length.
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=4.5, sigma=0.8, size=n).astype(int), 4, max_length).tolist()


def batches(indices: list[int], b: int) -> list[list[int]]:
    return [indices[i : i + b] for i in range(0, len(indices), b)]


def pad_stats(indices: list[int], lengths: list[int], b: int) -> tuple[float, float]:
    """(mean max-min spread per batch, padded tokens / all tokens) for per-batch dynamic padding."""
    spreads, real, total = [], 0, 0
    for batch in batches(indices, b):
        ls = [lengths[i] for i in batch]
        spreads.append(max(ls) - min(ls))
        real += sum(ls)
        total += max(ls) * len(ls)
    return float(np.mean(spreads)), 1 - real / total


@pytest.mark.parametrize("n", [1, 31, 1000, 1003])
def test_single_replica_each_example_exactly_once(n: int) -> None:
    lengths = skewed_lengths(n)
    s = LengthGroupedSampler(lengths, batch_size=32, seed=3, num_replicas=1, rank=0)
    idx = list(s)
    assert len(s) == n
    assert sorted(idx) == list(range(n))


@pytest.mark.parametrize("n", [1000, 1001, 1037])
def test_two_ranks_cover_all_with_equal_sizes(n: int) -> None:
    lengths = skewed_lengths(n)
    per_rank = [list(LengthGroupedSampler(lengths, 16, seed=1, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == -(-n // 2)
    union = per_rank[0] + per_rank[1]
    assert set(union) == set(range(n))
    # Odd n: exactly one example is repeated to even the split (DistributedSampler's padding).
    assert len(union) - n == (n % 2)
    if n % 2 == 0:
        assert not set(per_rank[0]) & set(per_rank[1])


def test_two_ranks_drop_last_disjoint_and_equal() -> None:
    lengths = skewed_lengths(1001)
    per_rank = [list(LengthGroupedSampler(lengths, 16, seed=1, num_replicas=2, rank=r, drop_last=True)) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 500
    assert not set(per_rank[0]) & set(per_rank[1])


def test_ranks_batches_are_homogeneous() -> None:
    lengths = skewed_lengths(4000)
    b = 16
    rnd = torch.randperm(4000, generator=torch.Generator().manual_seed(0)).tolist()
    random_spread, _ = pad_stats(rnd[:2000], lengths, b)
    for r in (0, 1):
        idx = list(LengthGroupedSampler(lengths, b, seed=5, num_replicas=2, rank=r))
        spread, _ = pad_stats(idx, lengths, b)
        assert spread < 0.1 * random_spread, (r, spread, random_spread)


def test_epochs_differ_and_seed_epoch_is_deterministic() -> None:
    lengths = skewed_lengths(2000)
    s = LengthGroupedSampler(lengths, 32, seed=7)
    e0 = list(s)
    assert list(s) == e0  # same epoch -> same order
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != e0
    assert sorted(e1) == sorted(e0)
    # A fresh sampler with the same seed and epoch reproduces it (another process/rank would too).
    t = LengthGroupedSampler(lengths, 32, seed=7)
    t.set_epoch(1)
    assert list(t) == e1
    other_seed = LengthGroupedSampler(lengths, 32, seed=8)
    other_seed.set_epoch(1)
    assert list(other_seed) != e1
    # Batch membership changes across epochs too, not just the batch order.
    assert {tuple(sorted(x)) for x in batches(e0, 32)} != {tuple(sorted(x)) for x in batches(e1, 32)}


def test_longest_example_in_first_batch() -> None:
    lengths = skewed_lengths(3000)
    for epoch in range(3):
        s = LengthGroupedSampler(lengths, 32, seed=0)
        s.set_epoch(epoch)
        first = list(s)[:32]
        assert max(lengths[i] for i in first) == max(lengths)


def test_spread_and_padding_saved_vs_random_batching() -> None:
    lengths = skewed_lengths(4000)
    b = 32
    rnd = torch.randperm(4000, generator=torch.Generator().manual_seed(0)).tolist()
    random_spread, random_pad = pad_stats(rnd, lengths, b)
    idx = list(LengthGroupedSampler(lengths, b, seed=0))
    grouped_spread, grouped_pad = pad_stats(idx, lengths, b)
    fixed_pad = 1 - sum(lengths) / (512 * len(lengths))  # pad to max_length
    # Measured for this distribution (seed 0): pad fraction random 0.726, grouped 0.080, fixed 0.766;
    # mean per-batch length spread random 418, grouped 19.
    assert random_pad > 0.7
    assert grouped_pad < 0.10
    assert fixed_pad > 0.75
    assert (random_pad - grouped_pad) / random_pad > 0.85  # >85% of dynamic-padding waste removed
    assert grouped_spread < 0.08 * random_spread


def test_shuffle_false_is_epoch_independent_and_grouped() -> None:
    lengths = skewed_lengths(500)
    s = LengthGroupedSampler(lengths, 10, shuffle=False)
    a = list(s)
    s.set_epoch(4)
    assert list(s) == a
    assert sorted(a) == list(range(500))
    # One mega-batch of 500: the whole order is sorted by length except the first element (the longest).
    assert [lengths[i] for i in a] == sorted(lengths, reverse=True)


def test_works_as_dataloader_sampler() -> None:
    lengths = skewed_lengths(100)
    ds = list(range(100))
    dl = DataLoader(ds, batch_size=8, sampler=LengthGroupedSampler(lengths, 8, seed=0))
    got = torch.cat(list(dl)).tolist()
    assert sorted(got) == ds
    assert len(dl) == 13


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"lengths": [], "batch_size": 4}, "empty"),
        ({"lengths": [1, 2], "batch_size": 0}, "batch_size"),
        ({"lengths": [1, 2], "batch_size": 2, "num_replicas": 2, "rank": 2}, "rank 2"),
        ({"lengths": [1, 2], "batch_size": 2, "mega_batch_mult": 0}, "mega_batch_mult"),
        ({"lengths": [1], "batch_size": 2, "num_replicas": 2, "rank": 0, "drop_last": True}, "drop_last"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, msg: str) -> None:
    lengths = kwargs.pop("lengths")
    with pytest.raises(ValueError, match=msg):
        LengthGroupedSampler(lengths, **kwargs)


def test_skip_drops_the_trained_part_of_one_epoch_once_per_rank() -> None:
    """A mid-epoch resume: each rank continues exactly where its batches stopped, and only in that epoch."""
    lengths = skewed_lengths(200)
    for rank in (0, 1):
        full = LengthGroupedSampler(lengths, 16, seed=4, num_replicas=2, rank=rank)
        full.set_epoch(1)
        expected = list(full)
        resumed = LengthGroupedSampler(lengths, 16, seed=4, num_replicas=2, rank=rank)
        resumed.set_epoch(1)
        resumed.skip(1, 3 * 16)
        assert list(resumed) == expected[48:]
        assert list(resumed) == expected  # once: the next pass over the epoch is whole again
    other_epoch = LengthGroupedSampler(lengths, 16, seed=4)
    other_epoch.skip(1, 32)
    assert len(list(other_epoch)) == 200  # a skip for epoch 1 leaves epoch 0 alone


def test_batch_order_is_shuffled_not_a_long_to_short_sweep() -> None:
    """HF's group_by_length runs each mega-batch from long to short (a sawtooth loss, transformers #20810); here the
    batches come in random order, so batch widths rise about as often as they fall, and the first steps are a fair
    sample of the epoch. Batches stay homogeneous, and the longest still comes first."""
    lengths = skewed_lengths(4000)
    b = 32
    idx = list(LengthGroupedSampler(lengths, b, seed=0))
    widths = [max(lengths[i] for i in batch) for batch in batches(idx, b)]
    assert widths[0] == max(lengths)
    rises = sum(later > earlier for earlier, later in zip(widths[1:], widths[2:]))
    assert 0.35 < rises / (len(widths) - 2) < 0.65  # a sorted sweep would give ~0
    # The first 12 batches after the first: their mean width is near the epoch's (a sweep would give the widest).
    assert abs(np.mean(widths[1:13]) - np.mean(widths)) < 0.3 * np.mean(widths)
    assert sorted(idx) == list(range(4000))
