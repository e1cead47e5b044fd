"""Near-duplicate texts across splits: word 8-gram shingles and an inverted index over the reference split.

Exact dedupe misses near-copies (the same story re-filed with a new headline or one paragraph changed); a test
article that shares most of its 8-word sequences with a training article flatters every test number. A text's
*containment* in a reference text is shared shingles / the text's own shingles, so a short text quoted inside a long
one counts as a copy. Plain Python, cheap enough to run on every start without a cache (see find_near_duplicates).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from lmlab.data.sources import Example

NGRAM = 8  # words per shingle: long enough that shared shingles mean copied text, not shared phrases
_WORD = re.compile(r"\w+")


def shingles(text: str, n: int = NGRAM) -> set[int]:
    """Hashes of the text's word n-grams (lower-cased); empty for a text shorter than n words."""
    words = _WORD.findall(text.lower())
    return set(map(hash, zip(*(words[k:] for k in range(n)))))  # zip of shifted lists: the n-grams, no slicing


def _text(ex: Example) -> str:
    return ex.text if ex.text_pair is None else f"{ex.text}\n{ex.text_pair}"


def containment(queries: Sequence[set[int]], reference: set[int]) -> list[float]:
    """Per query: the share of its shingles that occur in `reference` (0 for a query with no shingles)."""
    return [len(query & reference) / len(query) if query else 0.0 for query in queries]


def find_near_duplicates(splits: Mapping[str, Sequence[Example]], threshold: float
                         ) -> dict[tuple[str, str], list[int]]:
    """For each pair (earlier split, later split) of train/val/test: the indices of later-split examples with
    containment >= threshold in the earlier split (shared shingles / the example's own shingles).

    The reference is the union of the earlier split's shingles (a set, so each query is one C-level
    intersection): a text stitched from two training articles leaks as much as a copy of one. Only later splits
    are queried: a val/test text near a training text leaks it, and a test text near a validation text flatters a
    model selected on val.
    """
    grams = {split: [shingles(_text(ex)) for ex in splits[split]] for split in ("train", "val", "test")}
    out: dict[tuple[str, str], list[int]] = {}
    for reference, later in (("train", ("val", "test")), ("val", ("test",))):
        union: set[int] = set().union(*grams[reference])
        for split in later:
            out[(reference, split)] = [i for i, share in enumerate(containment(grams[split], union))
                                       if share >= threshold]
    return out
