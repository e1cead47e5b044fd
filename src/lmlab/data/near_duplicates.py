"""Near-duplicate texts across splits: word 8-gram shingles and an inverted index over the reference split.

Exact dedupe misses near-copies (the same story re-filed with a new headline or one paragraph changed); a test
article that shares most of its 8-word sequences with a training article flatters every test number. A text's
*containment* in a reference text is shared shingles / the text's own shingles, so a short text quoted inside a long
one counts as a copy. Plain Python: ~0.5 s for BBC News on one core, so the result is kept beside the tokenization
cache (`dataset.cache_dir`) and a second run on the same texts reads it instead (see find_near_duplicates).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.data.sources import Example
from lmlab.data.workers import fork_pool
from lmlab.errors import LmlabError
from lmlab.rundir import write_json

log = logging.getLogger(__name__)

NGRAM = 8  # words per shingle: long enough that shared shingles mean copied text, not shared phrases
_WORD = re.compile(r"\w+")
_CACHE_FORMAT = 1  # bump when the shingling or the containment rule changes: old cache files are then not read
_PAIRS = (("train", "val"), ("train", "test"), ("val", "test"))  # (reference, later split), in report order


def shingles(text: str, n: int = NGRAM) -> set[int]:
    """Hashes of the text's word n-grams (lower-cased); empty for a text shorter than n words."""
    words = _WORD.findall(text.lower())
    return set(map(hash, zip(*(words[k:] for k in range(n)))))  # zip of shifted lists: the n-grams, no slicing


def _text(ex: Example) -> str:
    return ex.text if ex.text_pair is None else f"{ex.text}\n{ex.text_pair}"


def containment(queries: Sequence[set[int]], reference: set[int]) -> list[float]:
    """Per query: the share of its shingles that occur in `reference` (0 for a query with no shingles)."""
    return [len(query & reference) / len(query) if query else 0.0 for query in queries]


def find_near_duplicates(
    splits: Mapping[str, Sequence[Example]], threshold: float, cache_dir: str | Path | None = None
) -> dict[tuple[str, str], list[int]]:
    """For each pair (earlier split, later split) of train/val/test: the indices of later-split examples with
    containment >= threshold in the earlier split (shared shingles / the example's own shingles).

    The reference is the union of the earlier split's shingles (a set, so each query is one C-level
    intersection): a text stitched from two training articles leaks as much as a copy of one. Only later splits
    are queried: a val/test text near a training text leaks it, and a test text near a validation text flatters a
    model selected on val.

    With `cache_dir` the result is read from, or written to, `<cache_dir>/near-<key>.json`. The key hashes every
    text in split order, the threshold, the shingle size and the cache format, so any change to the data or the
    rule gives a new key, never a stale answer.
    """
    texts = {split: [_text(ex) for ex in splits[split]] for split in ("train", "val", "test")}
    path = Path(cache_dir).expanduser() / f"near-{_cache_key(texts, threshold)}.json" if cache_dir else None
    cached = _read_cached(path, {split: len(t) for split, t in texts.items()}) if path else None
    if cached is not None:
        log.debug("near-duplicate cache hit %s", path)
        return cached
    out = _find(texts, threshold)
    if path is not None:
        try:
            write_json(path, {f"{a}&{b}": indices for (a, b), indices in out.items()})
        except (OSError, LmlabError) as err:  # a read-only or full cache dir costs the next run 0.5 s, not this run
            log.warning("could not write the near-duplicate cache %s: %s", path, err)
    return out


def _cache_key(texts: Mapping[str, Sequence[str]], threshold: float) -> str:
    digest = hashlib.sha256(json.dumps([_CACHE_FORMAT, NGRAM, float(threshold)]).encode())
    for split, items in texts.items():
        digest.update(f"{split}:{len(items)}".encode())
        for text in items:
            data = text.encode()
            digest.update(len(data).to_bytes(8, "little"))  # length-prefixed: no two text lists hash alike
            digest.update(data)
    return digest.hexdigest()[:32]


def _read_cached(path: Path, sizes: Mapping[str, int]) -> dict[tuple[str, str], list[int]] | None:
    """The cached result, or None when there is none or it is not a valid answer for splits of these sizes."""
    try:
        raw = json.loads(path.read_text())
        out = {(a, b): [int(i) for i in raw[f"{a}&{b}"]] for a, b in _PAIRS}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if any(not 0 <= i < sizes[b] for (_, b), indices in out.items() for i in indices):
        return None
    return out


def _find(texts: Mapping[str, Sequence[str]], threshold: float) -> dict[tuple[str, str], list[int]]:
    grams = {split: [shingles(text) for text in items] for split, items in texts.items()}
    unions = {reference: set().union(*grams[reference]) for reference in dict.fromkeys(a for a, _ in _PAIRS)}
    return {
        (reference, split): [
            i for i, share in enumerate(containment(grams[split], unions[reference])) if share >= threshold
        ]
        for reference, split in _PAIRS
    }


# ---- dataset.split_rule=hash: the same rule over a streamed corpus, memory following val/test only


def _shingle_array(text: str) -> np.ndarray:
    """`shingles(text)` as a sorted int64 array (8 bytes a shingle instead of a Python set's ~60)."""
    words = _WORD.findall(text.lower())
    grams = zip(*(words[k:] for k in range(NGRAM)))
    return np.unique(np.fromiter(map(hash, grams), dtype=np.int64))


_QUERY: np.ndarray | None = None  # the val/test shingles, inherited by forked workers


def _matched_positions(texts: list[str]) -> np.ndarray:
    """Positions in `_QUERY` of the shingles that occur in `texts`."""
    assert _QUERY is not None
    if not texts:
        return np.zeros(0, np.int64)
    grams = np.concatenate([_shingle_array(t) for t in texts])
    pos = np.minimum(np.searchsorted(_QUERY, grams), len(_QUERY) - 1)
    return np.unique(pos[_QUERY[pos] == grams])


def find_near_duplicates_streamed(
    documents: Callable[[], Iterable[tuple[str, str]]],
    threshold: float,
    num_proc: int = 1,
    batch: int = 512,
    train_bytes: int | None = None,
) -> dict[tuple[str, str], list[int]]:
    """`find_near_duplicates`' answer for a corpus too large to hold: `documents()` yields (split, text) in a fixed
    order and is called twice. Pass 1 keeps the shingles of the val and test documents only (sorted int64
    arrays); pass 2 streams the train documents past them and marks which of those shingles train contains (in
    `num_proc` forked workers). The containment of each val/test document is then the same set arithmetic as
    `_find`'s: memory follows the val/test size, not the corpus size."""
    global _QUERY
    grams: dict[str, list[np.ndarray]] = {"val": [], "test": []}
    for split, text in documents():
        if split in grams:
            grams[split].append(_shingle_array(text))
    flat = {s: np.concatenate(a) if a else np.zeros(0, np.int64) for s, a in grams.items()}
    _QUERY = np.unique(np.concatenate([flat["val"], flat["test"]]))
    matched = np.zeros(len(_QUERY), dtype=bool)
    # Worker processes only where they pay (a train split of more than ~64 MB of text: a small one takes seconds).
    stack = contextlib.ExitStack()  # joined on success, terminated on an error (data.workers)
    big = train_bytes is None or train_bytes > 64 << 20
    pool = stack.enter_context(fork_pool(num_proc)) if num_proc > 1 and len(_QUERY) and big else None
    try:
        with stack:
            pending: list[Any] = []
            texts: list[str] = []

            def collect(limit: int) -> None:  # bounded batches in flight: memory follows the batch size
                while len(pending) > limit:
                    job = pending.pop(0)
                    matched[job.get() if pool else job] = True

            def submit() -> None:
                if texts:
                    pending.append(
                        pool.apply_async(_matched_positions, (list(texts),)) if pool else _matched_positions(texts)
                    )
                    texts.clear()
                collect(2 * num_proc)

            if len(_QUERY):
                for split, text in documents():
                    if split == "train":
                        texts.append(text)
                        if len(texts) >= batch:
                            submit()
                submit()
                collect(0)
    finally:
        query, _QUERY = _QUERY, None
    references = {"train": query[matched], "val": np.unique(flat["val"])}

    def near(split: str, reference: np.ndarray) -> list[int]:
        return [
            i
            for i, doc in enumerate(grams[split])
            if len(doc) and np.isin(doc, reference, assume_unique=True).sum() / len(doc) >= threshold
        ]

    return {(a, b): near(b, references[a]) for a, b in _PAIRS}
