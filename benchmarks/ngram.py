"""Classical n-gram language models on lmlab's BBC News split, in bits per byte, as baselines for the neural LMs.

Why: a causal LM's bits-per-byte means little without a classical reference measured the same way. These models are
fitted on the train split only, choose their order on val, and report test at that order.

    PYTHONPATH=src python benchmarks/ngram.py                       # byte KN 1..24, word KN 1..20, table
    PYTHONPATH=src python benchmarks/ngram.py --max-order 8 --json /tmp/ngram.json
    PYTHONPATH=src python benchmarks/ngram.py --orders 1,2,3,5,8,12 --word-orders 2,3,4,5

Convention (the same as lmlab's causal-LM bpb, src/lmlab/tasks/language_modeling.py):
  * every document is its UTF-8 bytes followed by ONE end-of-document symbol EOD, a 257th symbol (value 256, not
    the byte 0x00); the documents of a split are concatenated in split order into one stream;
  * bpb = total code length in bits of every symbol of the val/test stream (EOD included) / number of symbols
    (EOD counted as one byte), so it is exactly Σ -log2 p / (UTF-8 bytes + documents);
  * contexts cross document boundaries, as in a packed LM; each stream (train, val, test) is preceded by one EOD
    that is context only, never predicted, so its first document starts like every other;
  * every model is a proper distribution over its alphabet at every position (sums to 1, no zero probability),
    so the bits are an honest code length.

Models (our own counts with numpy; nltk's KN gives infinite perplexity on unseen words and is slow):
  * byte-level interpolated modified Kneser-Ney (Chen & Goodman 1998): three discounts D1, D2, D3+ per order from
    the count-of-counts, continuation counts N1+(• h w) for every order below the highest, interpolation down to
    the uniform distribution over the 257 symbols. All orders 1..N are built and scored in one streaming pass.
  * word-level interpolated modified KN over the tokens `\\w+|\\s+|[^\\w\\s]` (they reconstruct a document's text
    exactly) plus an EOD token; the vocabulary is the train tokens seen >= `min_count` (2) times, the rest are
    <unk>. An out-of-vocabulary token costs -log2 P_KN(<unk> | h) - log2 P_spell(its bytes + an end-of-word marker),
    P_spell being a byte KN (order chosen on val) trained on the train tokens that were mapped to <unk> plus one copy
    of every train token type (rare-word spelling plus general spelling), so every byte is coded exactly once.
    The spelling stream of a split is its OOV tokens in order, each + marker, its contexts running on from one OOV
    token into the next (a decoder has decoded those already). P_spell also gives some mass to spellings of
    in-vocabulary tokens, which are never spelled: wasted mass, so the bits are an upper bound on an exact code
    length, never below it.

Counting is sort-based: the order-k n-gram ending at position j gets the integer key id_{k-1}(j-1) * V + s_j, where
id_{k-1} is the exact index of the (k-1)-gram among the unique train (k-1)-grams, so `np.unique` over int64 keys
counts each order exactly (no hashing, no collisions) and evaluation is one `np.searchsorted` per order.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

EOD = 256  # the end-of-document symbol of the byte streams (and the end-of-word marker of the spelling model)
BYTE_VOCAB = 257  # 256 byte values + EOD
MIN_DISCOUNT = 0.01  # keeps every back-off weight > 0 on degenerate count-of-counts (tiny texts): no zero probability
TOKEN_PATTERN = r"\w+|\s+|[^\w\s]"  # any pattern whose matches cover the text works (see tokenize)
UNK, WORD_EOD = 0, 1  # the word model's reserved token ids
CONVENTION = {
    "eod": "one end-of-document symbol per document: value 256, a 257th symbol (not byte 0x00); counted as 1 byte",
    "stream": "documents of a split concatenated in split order; each stream is preceded by one EOD (context only)",
    "contexts": "cross document boundaries (like a packed LM)",
    "bpb": "total bits of every val/test symbol (EOD included) / (UTF-8 bytes + documents)",
    "byte_model": "interpolated modified Kneser-Ney (Chen & Goodman 1998), D1/D2/D3+ per order, continuation counts "
    "below the top order, interpolated down to uniform over 257 symbols",
    "word_tokens": r"regex \w+|\s+|[^\w\s] (reconstructs the text exactly) + one EOD token per document",
    "word_vocab": "train tokens seen >= min_count times (default 2) + <unk> + <eod>",
    "word_oov": "P_KN(<unk>|h) * P_spell(token bytes + end-of-word marker 256); P_spell = byte KN trained on the train "
    "tokens mapped to <unk> + one copy of every train token type, order chosen on val",
}


# ---------------------------------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------------------------------
def byte_stream(docs: Sequence[str | bytes], end: int = EOD) -> np.ndarray:
    """The symbols a byte-level LM is scored on: each document's UTF-8 bytes, then one `end` symbol (int64)."""
    parts = []
    for doc in docs:
        raw = doc.encode("utf-8") if isinstance(doc, str) else bytes(doc)
        parts.append(np.frombuffer(raw, dtype=np.uint8).astype(np.int64))
        parts.append(np.array([end], dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def tokenize(text: str, pattern: str = TOKEN_PATTERN) -> list[str]:
    """Words, whitespace runs and single other characters: `"".join(tokenize(t)) == t` for every text (checked, since
    a pattern that skipped characters would leave bytes uncoded)."""
    tokens = re.findall(pattern, text)
    if sum(map(len, tokens)) != len(text):
        raise ValueError(f"token pattern {pattern!r} does not cover the text")
    return tokens


# ---------------------------------------------------------------------------------------------------------------
# Interpolated modified Kneser-Ney over an integer alphabet 0..V-1
# ---------------------------------------------------------------------------------------------------------------
def modified_kn_discounts(counts: np.ndarray) -> np.ndarray:
    """[0, D1, D2, D3+] from the count-of-counts n1..n4 of one order (Chen & Goodman 1998, eq. 26):
    Y = n1 / (n1 + 2 n2), D_r = r - (r + 1) Y n_{r+1} / n_r.

    Degenerate statistics (tiny or perfectly repetitive texts) fall back to Y = 0.5 / D_r = Y; every D_r is clipped
    to [MIN_DISCOUNT, r] so that no n-gram's discounted count goes negative (the distribution sums to 1) and every
    back-off weight stays positive (no zero probability)."""
    counts = np.asarray(counts)
    n = np.bincount(np.minimum(counts[counts > 0], 5), minlength=6).astype(np.float64)
    y = n[1] / (n[1] + 2 * n[2]) if n[1] > 0 and n[2] > 0 else 0.5
    disc = np.zeros(4)
    for r in (1, 2, 3):
        d = r - (r + 1) * y * n[r + 1] / n[r] if n[r] > 0 else y
        disc[r] = min(max(d, MIN_DISCOUNT), r)
    return disc


@dataclass
class _Counts:
    """One order's counts of one kind (raw for the top order, continuation below) and their context sums."""

    count: np.ndarray  # per unique n-gram (raw count, or number of distinct left extensions; may be 0)
    disc: np.ndarray  # [0, D1, D2, D3+]
    total: np.ndarray  # per context id: Σ_w count(h w)
    dsum: np.ndarray  # per context id: Σ_w D(count(h w)), i.e. the back-off mass times total

    @classmethod
    def build(cls, keys: np.ndarray, count: np.ndarray, vocab: int, n_ctx: int) -> _Counts:
        disc = modified_kn_discounts(count)
        ctx = keys // vocab
        total = np.bincount(ctx, weights=count.astype(np.float64), minlength=n_ctx)
        dsum = np.bincount(ctx, weights=disc[np.minimum(count, 3)], minlength=n_ctx)
        return cls(count=count, disc=disc, total=total, dsum=dsum)

    def terms(self, ctx: np.ndarray, gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(a, g) with p_k(w | h) = a + g * p_{k-1}(w | h'): a = max(c(hw) - D, 0) / c(h), g = Σ D / c(h).
        An unseen context (id -1, or total 0) backs off completely: a = 0, g = 1."""
        t = np.where(ctx >= 0, self.total[np.maximum(ctx, 0)], 0.0)
        c = np.where(gram >= 0, self.count[np.maximum(gram, 0)], 0)
        seen = t > 0
        t_safe = np.where(seen, t, 1.0)
        a = np.where(seen, (c - self.disc[np.minimum(c, 3)]) / t_safe, 0.0)
        g = np.where(seen, self.dsum[np.maximum(ctx, 0)] / t_safe, 1.0)
        return a, g


@dataclass
class _Level:
    """Order k: the sorted keys (context id * V + symbol) of the train k-grams and their counts."""

    order: int
    keys: np.ndarray
    raw: _Counts
    cont: _Counts | None  # None for the highest order built (nothing above it to count continuations from)


def _grams(seq: np.ndarray, prev_ids: np.ndarray, k: int, vocab: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique order-k grams of `seq` (sorted keys, counts) and the id of the k-gram ending at each position (-1
    where fewer than k symbols precede)."""
    if k == 1:
        keys = seq
    else:
        keys = prev_ids[k - 2 : len(seq) - 1] * vocab + seq[k - 1 :]
    uniq, inv, cnt = np.unique(keys, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    if k == 1:  # the start symbol at position 0 is context only, not an occurrence (it may then count 0)
        cnt = np.bincount(inv[1:], minlength=len(uniq))
    ids = np.full(len(seq), -1, dtype=np.int64)
    ids[k - 1 :] = inv
    return uniq, cnt.astype(np.int64), ids


def _levels(
    train: np.ndarray, vocab: int, max_order: int, start: int, timings: list[float] | None = None
) -> Iterator[_Level]:
    """Orders 1..max_order built from the train stream only, one at a time (two orders in memory at once).

    The continuation count of a k-gram is the number of distinct (k+1)-grams that end with it, so order k is
    yielded once order k+1 has been counted. `timings` gets the cumulative build seconds as each order is yielded."""
    seq = np.concatenate([[start], np.asarray(train, dtype=np.int64)])
    if seq.min() < 0 or seq.max() >= vocab:
        raise ValueError(f"symbols must lie in 0..{vocab - 1}")
    t0, spent = time.perf_counter(), 0.0
    n_prev = 1
    keys, cnt, ids = _grams(seq, np.zeros(len(seq), dtype=np.int64), 1, vocab)
    for k in range(1, max_order + 1):
        if len(keys) * vocab >= 2**62:
            raise OverflowError(f"order {k + 1} keys would overflow int64 ({len(keys)} contexts x {vocab})")
        raw = _Counts.build(keys, cnt, vocab, n_prev)
        cont = None
        if k < max_order:
            nxt = _grams(seq, ids, k + 1, vocab)
            suffix = np.zeros(len(nxt[0]), dtype=np.int64)
            suffix[nxt[2][k:]] = ids[k:]  # each (k+1)-gram -> the k-gram it ends with
            cont = _Counts.build(keys, np.bincount(suffix, minlength=len(keys)), vocab, n_prev)
        spent += time.perf_counter() - t0
        if timings is not None:
            timings.append(spent)
        yield _Level(order=k, keys=keys, raw=raw, cont=cont)
        t0 = time.perf_counter()
        if k < max_order:
            n_prev = len(keys)
            keys, cnt, ids = nxt


def _lookup(sorted_keys: np.ndarray, query: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Index of each valid query in sorted_keys, -1 where absent or not valid."""
    if len(sorted_keys) == 0:
        return np.full(len(query), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_keys, query), len(sorted_keys) - 1)
    return np.where(valid & (sorted_keys[pos] == query), pos, -1)


class _StreamScorer:
    """Scores one eval stream order by order as the levels arrive: after level k it knows log2 p of every symbol
    under the order-k model (raw counts at order k over the continuation-count chain of orders < k)."""

    def __init__(self, stream: np.ndarray, vocab: int, start: int, keep_probs: bool = False) -> None:
        self.seq = np.concatenate([[start], np.asarray(stream, dtype=np.int64)])
        self.vocab = vocab
        self.ids = np.zeros(len(self.seq), dtype=np.int64)  # order-0 ids: the empty context, id 0 everywhere
        self.chain = np.full(len(self.seq) - 1, 1.0 / vocab)  # p_{k-1} of the continuation chain, uniform at 0
        self.bits: dict[int, float] = {}
        self.probs: dict[int, np.ndarray] = {}
        self.keep_probs = keep_probs

    def step(self, level: _Level) -> None:
        k, seq = level.order, self.seq
        if k == 1:
            query, valid = seq, np.ones(len(seq), dtype=bool)
        else:
            prev = self.ids[k - 2 : len(seq) - 1]
            valid = prev >= 0
            query = np.where(valid, prev, 0) * self.vocab + seq[k - 1 :]
        ids = np.full(len(seq), -1, dtype=np.int64)
        ids[k - 1 :] = _lookup(level.keys, query, valid)
        ctx, gram = self.ids[:-1], ids[1:]  # predicting position j: context = (k-1)-gram ending at j-1
        a, g = level.raw.terms(ctx, gram)
        p = a + g * self.chain
        self.bits[k] = float(-np.log2(p).sum())
        if self.keep_probs:
            self.probs[k] = p
        if level.cont is not None:
            a, g = level.cont.terms(ctx, gram)
            self.chain = a + g * self.chain
        self.ids = ids


@dataclass
class KNResult:
    """Total bits per eval stream and order, symbols per stream, cumulative train (count-building) seconds."""

    bits: dict[str, dict[int, float]]
    symbols: dict[str, int]
    train_s: dict[int, float]
    eval_s: float
    probs: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)


def kn_bits(
    train: np.ndarray, evals: Mapping[str, np.ndarray], vocab: int, max_order: int, start: int, keep_probs: bool = False
) -> KNResult:
    """Interpolated modified KN of every order 1..max_order, fitted on `train` only, scored on every eval stream
    in one pass. Each stream is preceded by `start` as context. Only the count tables of two orders are in memory."""
    scorers = {name: _StreamScorer(s, vocab, start, keep_probs) for name, s in evals.items()}
    timings: list[float] = []
    eval_s = 0.0
    for level in _levels(train, vocab, max_order, start, timings):
        t0 = time.perf_counter()
        for scorer in scorers.values():
            scorer.step(level)
        eval_s += time.perf_counter() - t0
    return KNResult(
        bits={n: s.bits for n, s in scorers.items()},
        symbols={n: len(s.seq) - 1 for n, s in scorers.items()},
        train_s={k + 1: t for k, t in enumerate(timings)},
        eval_s=eval_s,
        probs={n: s.probs for n, s in scorers.items()} if keep_probs else {},
    )


class KNModel:
    """All orders of one KN model kept in memory, for inspection (full distributions, counts) on small data; the
    benchmark itself streams the orders through `kn_bits`, which shares this code."""

    def __init__(self, train: np.ndarray, vocab: int = BYTE_VOCAB, max_order: int = 3, start: int = EOD) -> None:
        self.vocab, self.max_order, self.start = vocab, max_order, start
        self.levels = list(_levels(train, vocab, max_order, start))

    def _gram_id(self, symbols: Sequence[int]) -> int:
        """Id of the n-gram `symbols` among the train n-grams of its order (0 for the empty gram, -1 if unseen)."""
        gid = 0
        for m, s in enumerate(symbols, start=1):
            gid = int(_lookup(self.levels[m - 1].keys, np.array([gid * self.vocab + s]), np.array([True]))[0])
            if gid < 0:
                return -1
        return gid

    def distribution(self, history: Sequence[int], order: int) -> np.ndarray:
        """P(w | history) for every w of the alphabet under the order-`order` model; history excludes the start
        symbol, which is prepended as in stream scoring."""
        full = [self.start, *history]
        cands = np.arange(self.vocab, dtype=np.int64)
        chain = np.full(self.vocab, 1.0 / self.vocab)
        for k in range(1, order + 1):
            level = self.levels[k - 1]
            ctx_id = self._gram_id(full[len(full) - (k - 1) :]) if k - 1 <= len(full) else -1
            if k == 1:
                ctx_id = 0
            ctx = np.full(self.vocab, ctx_id, dtype=np.int64)
            gram = _lookup(level.keys, max(ctx_id, 0) * self.vocab + cands, np.full(self.vocab, ctx_id >= 0))
            counts = level.raw if k == order else level.cont
            assert counts is not None, "order above the model's max_order"
            a, g = counts.terms(ctx, gram)
            chain = a + g * chain
        return chain

    def stream_bits(self, stream: np.ndarray, order: int) -> float:
        """Total bits of `stream` (preceded by the start symbol) under the order-`order` model."""
        scorer = _StreamScorer(stream, self.vocab, self.start)
        for level in self.levels[:order]:
            scorer.step(level)
        return scorer.bits[order]


def byte_kn_bpb(train_docs: Sequence[str], eval_docs: Sequence[str], order: int) -> float:
    """Bits per byte of `eval_docs` under the byte-level modified KN model of `order` fitted on `train_docs`."""
    res = kn_bits(byte_stream(train_docs), {"eval": byte_stream(eval_docs)}, BYTE_VOCAB, order, EOD)
    return res.bits["eval"][order] / res.symbols["eval"]


# ---------------------------------------------------------------------------------------------------------------
# Word-level KN with byte spelling of unknown tokens
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class WordData:
    """Token-id streams (one WORD_EOD after each document) and the OOV tokens to spell, per split."""

    vocab: dict[str, int]
    ids: dict[str, np.ndarray]
    oov: dict[str, list[str]]
    spell_train: list[str]  # what the spelling model learns from: train OOV tokens, then every train token type
    n_bytes: dict[str, int]  # UTF-8 bytes + one per document: the bpb denominator, identical to the byte streams'


def word_data(
    texts_by_split: Mapping[str, Sequence[str]], min_count: int = 2, train: str = "train", pattern: str = TOKEN_PATTERN
) -> WordData:
    """Vocabulary from the train split only (tokens seen >= min_count times, ordered by count then text), then
    every split mapped onto it; tokens outside it become <unk> and are kept, in order, for the spelling model."""
    tokens = {split: [tokenize(doc, pattern) for doc in docs] for split, docs in texts_by_split.items()}
    freq = Counter(tok for doc in tokens[train] for tok in doc)
    kept = sorted((tok for tok, c in freq.items() if c >= min_count), key=lambda t: (-freq[t], t))
    vocab = {"<unk>": UNK, "<eod>": WORD_EOD, **{tok: i + 2 for i, tok in enumerate(kept)}}
    ids, oov, n_bytes = {}, {}, {}
    for split, docs in tokens.items():
        out: list[int] = []
        spell: list[str] = []
        for doc in docs:
            for tok in doc:
                i = vocab.get(tok, UNK)
                out.append(i)
                if i == UNK:
                    spell.append(tok)
            out.append(WORD_EOD)
        ids[split] = np.array(out, dtype=np.int64)
        oov[split] = spell
        n_bytes[split] = sum(len(doc.encode("utf-8")) for doc in texts_by_split[split]) + len(docs)
    return WordData(vocab=vocab, ids=ids, oov=oov, spell_train=oov[train] + sorted(freq), n_bytes=n_bytes)


def word_kn(
    texts_by_split: Mapping[str, Sequence[str]],
    orders: Sequence[int],
    eval_splits: Sequence[str],
    min_count: int = 2,
    spell_max_order: int = 12,
    spell_order: int | None = None,
    select_on: str | None = None,
    pattern: str = TOKEN_PATTERN,
) -> dict[str, Any]:
    """Word KN total bits (token bits, with -log2 P(<unk>) for each OOV token, plus the OOV spellings' bits) per
    eval split and order. The spelling model's order is `spell_order`, or else the best of 1..spell_max_order on
    `select_on` (the first eval split by default). Returns bits, bytes, the spelling order and the timings."""
    t0 = time.perf_counter()
    data = word_data(texts_by_split, min_count, pattern=pattern)
    prep_s = time.perf_counter() - t0
    select_on = select_on or eval_splits[0]
    words = kn_bits(data.ids["train"], {s: data.ids[s] for s in eval_splits}, len(data.vocab), max(orders), WORD_EOD)
    spell = kn_bits(
        byte_stream(data.spell_train),
        {s: byte_stream(data.oov[s]) for s in eval_splits},
        BYTE_VOCAB,
        spell_order or spell_max_order,
        EOD,
    )
    if spell_order is None:
        spell_order = min(spell.bits[select_on], key=lambda k: (spell.bits[select_on][k], k))
    bits = {s: {k: words.bits[s][k] + spell.bits[s][spell_order] for k in orders} for s in eval_splits}
    return {
        "bits": bits,
        "n_bytes": {s: data.n_bytes[s] for s in eval_splits},
        "vocab_size": len(data.vocab),
        "min_count": min_count,
        "spell_order": spell_order,
        "spell_bits": {s: spell.bits[s][spell_order] for s in eval_splits},
        "oov_tokens": {s: len(data.oov[s]) for s in data.oov},
        "tokens": {s: len(data.ids[s]) for s in data.ids},
        "train_s": {k: prep_s + words.train_s[k] + spell.train_s[spell_order] for k in orders},
        "eval_s": words.eval_s + spell.eval_s,
    }


def word_kn_bpb(
    train_docs: Sequence[str], eval_docs: Sequence[str], order: int, min_count: int = 2, spell_order: int = 5
) -> float:
    """Bits per byte of `eval_docs` under the order-`order` word KN fitted on `train_docs` (fixed spelling order)."""
    res = word_kn({"train": train_docs, "eval": eval_docs}, [order], ["eval"], min_count, spell_order=spell_order)
    return res["bits"]["eval"][order] / res["n_bytes"]["eval"]


# ---------------------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------------------
def bbc_texts(split_seed: int = 0, fractions: Mapping[str, float] | None = None) -> dict[str, list[str]]:
    """lmlab's BBC News train/val/test texts (dedupe, stratified), as lmlab's datamodule builds them."""
    try:
        from lmlab.data.sources import bbc_news
    except ImportError:  # run as a script without PYTHONPATH=src
        sys.path.insert(0, str(ROOT / "src"))
        from lmlab.data.sources import bbc_news
    from lmlab.data.splits import build_splits

    fractions = dict(fractions or {"train": 0.8, "val": 0.1, "test": 0.1})
    splits, _ = build_splits(bbc_news(), fractions=fractions, split_seed=split_seed, dedupe=True, stratify=True)
    return {s: [ex.text for ex in splits[s]] for s in ("train", "val", "test")}


def _best(by_order: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    order = min(by_order, key=lambda k: (by_order[k]["val_bpb"], int(k)))
    return {"order": int(order), **by_order[order]}


def best_baselines(
    texts_by_split: Mapping[str, Sequence[str]],
    max_order: int = 24,
    orders: Sequence[int] | None = None,
    word_orders: Sequence[int] | None = None,
    min_count: int = 2,
    spell_max_order: int = 12,
    pattern: str = TOKEN_PATTERN,
) -> dict[str, Any]:
    """Byte KN and word KN fitted on texts_by_split["train"], each order scored on val and test; "best" is the
    order with the lowest val bpb (its test bpb is the number to quote). by_order keys are str(order) (JSON)."""
    byte_orders = sorted(set(orders)) if orders else list(range(1, max_order + 1))
    # 1..20: on the LM recipe's split val bottoms out at order 11 (1.6723) and rises after; 1..10 stopped short.
    word_orders = sorted(set(word_orders)) if word_orders else list(range(1, 21))
    streams = {s: byte_stream(texts_by_split[s]) for s in ("train", "val", "test")}
    res = kn_bits(streams["train"], {"val": streams["val"], "test": streams["test"]}, BYTE_VOCAB, max(byte_orders), EOD)
    byte_by_order = {
        str(k): {
            "val_bpb": res.bits["val"][k] / res.symbols["val"],
            "test_bpb": res.bits["test"][k] / res.symbols["test"],
            "train_s": round(res.train_s[k], 2),
        }
        for k in byte_orders
    }
    word = word_kn(texts_by_split, word_orders, ["val", "test"], min_count, spell_max_order, pattern=pattern)
    word_by_order = {
        str(k): {
            "val_bpb": word["bits"]["val"][k] / word["n_bytes"]["val"],
            "test_bpb": word["bits"]["test"][k] / word["n_bytes"]["test"],
            "train_s": round(word["train_s"][k], 2),
        }
        for k in word_orders
    }
    assert word["n_bytes"] == {s: res.symbols[s] for s in ("val", "test")}, "word and byte bpb denominators differ"
    return {
        "convention": CONVENTION,
        "data": {s: {"docs": len(texts_by_split[s]), "symbols": int(len(streams[s]))} for s in streams},
        "byte_kn": {"by_order": byte_by_order, "best": _best(byte_by_order), "eval_s": round(res.eval_s, 2)},
        "word_kn": {
            "by_order": word_by_order,
            "best": _best(word_by_order),
            "eval_s": round(word["eval_s"], 2),
            "vocab_size": word["vocab_size"],
            "min_count": min_count,
            "spell_order": word["spell_order"],
            "oov_tokens": word["oov_tokens"],
            "tokens": word["tokens"],
            "token_pattern": pattern,
            "spell_bpb": {s: v / word["n_bytes"][s] for s, v in word["spell_bits"].items()},
        },
    }


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace(",", " ").split()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-order", type=int, default=24, help="byte KN orders 1..N (default 24)")
    parser.add_argument("--orders", type=_ints, default=None, help="byte KN orders to report, e.g. 1,3,5,8")
    parser.add_argument("--word-orders", type=_ints, default=None, help="word KN orders (default 1..20)")
    parser.add_argument("--word-regex", default=TOKEN_PATTERN, help="word tokens (must cover the text)")
    parser.add_argument("--min-count", type=int, default=2, help="word vocabulary: train tokens seen >= this often")
    parser.add_argument("--spell-max-order", type=int, default=12, help="OOV spelling byte KN: orders 1..N on val")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--json", default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    texts = bbc_texts(args.split_seed, dict(zip(("train", "val", "test"), args.fractions)))
    out = best_baselines(
        texts, args.max_order, args.orders, args.word_orders, args.min_count, args.spell_max_order, args.word_regex
    )
    total_s = time.perf_counter() - t0
    d = out["data"]
    print(
        f"BBC News, split_seed={args.split_seed}, fractions={tuple(args.fractions)}: "
        + ", ".join(f"{s} {d[s]['docs']} docs / {d[s]['symbols']:,} symbols" for s in d)
    )
    print(f"\n{'model':<30} {'order':>5} {'val bpb':>8} {'test bpb':>9} {'train s':>8}")
    for name, key in (("byte KN", "byte_kn"), ("word KN + byte spelling", "word_kn")):
        best = out[key]["best"]["order"]
        for order, v in out[key]["by_order"].items():
            mark = "  <- best on val" if int(order) == best else ""
            print(f"{name:<30} {order:>5} {v['val_bpb']:>8.4f} {v['test_bpb']:>9.4f} {v['train_s']:>8.2f}{mark}")
    w = out["word_kn"]
    print(
        f"\nword KN: vocabulary {w['vocab_size']:,} (train tokens seen >= {w['min_count']}x, + <unk>, <eod>); "
        f"OOV tokens val {w['oov_tokens']['val']:,} / {w['tokens']['val']:,}, test {w['oov_tokens']['test']:,} / "
        f"{w['tokens']['test']:,}; spelling: byte KN order {w['spell_order']} (chosen on val), "
        f"{w['spell_bpb']['val']:.4f} / {w['spell_bpb']['test']:.4f} of the val / test bpb"
    )
    print(
        f"train s: cumulative count-building time for orders 1..N (one streaming pass); eval "
        f"{out['byte_kn']['eval_s']:.1f} s (byte), {w['eval_s']:.1f} s (word); total {total_s:.1f} s"
    )
    out.update(
        date=time.strftime("%Y-%m-%d"),
        split_seed=args.split_seed,
        fractions=list(args.fractions),
        total_s=round(total_s, 1),
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
