"""`dataset.split_rule=hash`: a document's split is a function of its text alone, so no corpus is held in memory.

u = int(sha256(str(split_seed) + "\\0" + text)[:8], big-endian) / 2^64; the document goes to val if
u < fractions.val, to test if u < fractions.val + fractions.test, else to train. Identical texts share a split;
the split of a document does not change when the corpus is re-read in another file order or when documents are
appended. Exact duplicates are removed by an 8-byte content hash (sha256(text)[:8]) kept in a compact sorted
array (8 bytes per kept document, not a Python set).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from lmlab.errors import LmlabError

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def check_fractions(fractions: Mapping[str, float]) -> tuple[float, float]:
    val, test = float(fractions.get("val", 0.0)), float(fractions.get("test", 0.0))
    if not (0 < val and 0 < test and val + test < 1):
        raise LmlabError(
            f"dataset.fractions={dict(fractions)}: split_rule=hash needs 0 < val, 0 < test and val + test < 1 "
            f"(train takes the rest), e.g. dataset.fractions={{train: 0.98, val: 0.01, test: 0.01}}."
        )
    return val, test


def draw_of(text: str, split_seed: int) -> int:
    """The first 8 bytes of sha256(split_seed ‖ NUL ‖ text) as an integer: u * 2^64 (kept exact in the shards)."""
    digest = hashlib.sha256(f"{split_seed}\0".encode() + text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def unit(text: str, split_seed: int) -> float:
    """u in [0, 1) for `text`: the first 8 bytes of sha256(split_seed ‖ NUL ‖ text) over 2^64."""
    return draw_of(text, split_seed) / 2.0**64


def split_of(text: str, split_seed: int, fractions: Mapping[str, float]) -> str:
    val, test = check_fractions(fractions)
    u = unit(text, split_seed)
    return "val" if u < val else "test" if u < val + test else "train"


def content_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


class HashSet:
    """A set of uint64 content hashes: a sorted numpy array (8 bytes per kept document) plus a small set of recent
    hashes merged into it when it grows past 1/8 of the array (amortized O(n log n) in all). `add(hashes)` says
    which are new (the first of equal hashes in the batch counts as new) and keeps them."""

    def __init__(self, hashes: np.ndarray | None = None):
        self.sorted = np.unique(np.asarray(hashes, dtype=np.uint64)) if hashes is not None else np.zeros(0, np.uint64)
        self.recent: set[int] = set()

    def __len__(self) -> int:
        return len(self.sorted) + len(self.recent)

    def add(self, hashes: Sequence[int] | np.ndarray) -> np.ndarray:
        batch = np.asarray(hashes, dtype=np.uint64)
        new = np.ones(len(batch), dtype=bool)
        if len(self.sorted) and len(batch):
            pos = np.minimum(np.searchsorted(self.sorted, batch), len(self.sorted) - 1)
            new &= self.sorted[pos] != batch
        for i, h in enumerate(batch.tolist()):
            if new[i]:
                if h in self.recent:
                    new[i] = False
                else:
                    self.recent.add(h)
        if len(self.recent) > max(1 << 16, len(self.sorted) // 8):
            self.sorted = np.union1d(self.sorted, np.fromiter(self.recent, np.uint64, len(self.recent)))
            self.recent = set()
        return new

    def array(self) -> np.ndarray:
        return np.union1d(self.sorted, np.fromiter(self.recent, np.uint64, len(self.recent)))
