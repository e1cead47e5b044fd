"""benchmarks/ngram.py: the n-gram baselines are proper distributions, match hand and reference computations, code
every byte exactly once, and never learn from the text they are scored on. Tiny synthetic texts only (fast)."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest

from benchmarks.ngram import (
    BYTE_VOCAB,
    EOD,
    KNModel,
    byte_kn_bpb,
    byte_stream,
    kn_bits,
    modified_kn_discounts,
    tokenize,
    word_data,
    word_kn,
    word_kn_bpb,
)


def _random_docs(seed: int, n_docs: int, length: int, alphabet: str = "abcde ") -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, length))) for _ in range(n_docs)]


def _reference_kn_bits(train: list[int], evals: list[int], vocab: int, order: int, start: int) -> float:
    """A direct, dict-based interpolated modified KN (the textbook recursion, one probability at a time) with the
    module's conventions: `start` precedes each stream as context only, contexts longer than the history back off,
    raw counts at the top order and continuation counts (distinct left extensions) below it."""
    s = [start, *train]
    raw = {k: Counter(tuple(s[j - k + 1 : j + 1]) for j in range(max(k - 1, 1), len(s))) for k in range(1, order + 1)}
    cont = {k: Counter(g[1:] for g in raw[k + 1]) for k in range(1, order)}

    def prob(hist: list[int], w: int, k: int) -> float:
        if k == 0:
            return 1.0 / vocab
        if k - 1 > len(hist):
            return prob(hist, w, k - 1)
        counts = raw[k] if k == order else cont[k]
        disc = modified_kn_discounts(np.array(list(counts.values())))
        h = tuple(hist[len(hist) - (k - 1) :]) if k > 1 else ()
        rows = [c for g, c in counts.items() if g[:-1] == h]
        total = sum(rows)
        if total == 0:
            return prob(hist, w, k - 1)
        c = counts.get((*h, w), 0)
        gamma = sum(disc[min(r, 3)] for r in rows) / total
        return (c - disc[min(c, 3)]) / total + gamma * prob(hist, w, k - 1)

    e = [start, *evals]
    return sum(-math.log2(prob(e[:j], e[j], order)) for j in range(1, len(e)))


def test_discounts_follow_chen_goodman() -> None:
    counts = np.array([1] * 10 + [2] * 5 + [3] * 3 + [4] * 2 + [9])  # n1..n4 = 10, 5, 3, 2
    y = 10 / (10 + 2 * 5)
    expected = [0, 1 - 2 * y * 5 / 10, 2 - 3 * y * 3 / 5, 3 - 4 * y * 2 / 3]
    assert modified_kn_discounts(counts) == pytest.approx(expected)
    # degenerate count-of-counts still give usable discounts: positive and at most r (no negative mass)
    for degenerate in ([5, 5, 5], [1], [2, 2]):
        d = modified_kn_discounts(np.array(degenerate))
        assert all(0 < d[r] <= r for r in (1, 2, 3))


@pytest.mark.parametrize("order", [1, 2, 4])
def test_distribution_sums_to_one_and_is_positive(order: int) -> None:
    train = byte_stream(_random_docs(0, 20, 30) + ["the cat sat on the mat"])
    model = KNModel(train, BYTE_VOCAB, max_order=4, start=EOD)
    histories = [[], list(b"the c"), list(b"zzzz"), [EOD], list(b"ab") + [EOD], list("é€".encode())]
    for hist in histories:
        p = model.distribution(hist, order)
        assert p.shape == (BYTE_VOCAB,)
        assert abs(p.sum() - 1.0) < 1e-9
        assert p.min() > 0
    # a seen continuation is more likely than an unseen byte
    p = model.distribution(list(b"the c"), order)
    assert order == 1 or p[ord("a")] > 10 * p[ord("Q")]


def test_word_alphabet_distribution_sums_to_one() -> None:
    data = word_data({"train": ["a b a b c", "b a c d d"]}, min_count=1)
    model = KNModel(data.ids["train"], len(data.vocab), max_order=3, start=1)
    for hist in ([], [data.vocab["a"]], [data.vocab["b"], data.vocab[" "]], [0, 0]):
        p = model.distribution(hist, 3)
        assert abs(p.sum() - 1.0) < 1e-9 and p.min() > 0


def test_stream_scoring_agrees_with_the_distribution() -> None:
    train = byte_stream(_random_docs(1, 15, 25))
    evals = byte_stream(_random_docs(2, 4, 12, alphabet="abcdefx "))
    model = KNModel(train, BYTE_VOCAB, max_order=3, start=EOD)
    full = [EOD, *evals.tolist()]
    for order in (1, 2, 3):
        by_dist = sum(-math.log2(model.distribution(full[1:j], order)[full[j]]) for j in range(1, len(full)))
        assert model.stream_bits(evals, order) == pytest.approx(by_dist, rel=1e-12)


def test_matches_a_reference_implementation() -> None:
    train = byte_stream(_random_docs(3, 12, 20, alphabet="abcab "))
    evals = byte_stream(_random_docs(4, 3, 15, alphabet="abcabz "))
    res = kn_bits(train, {"eval": evals}, BYTE_VOCAB, 4, EOD)
    for order in (1, 2, 3, 4):
        ref = _reference_kn_bits(train.tolist(), evals.tolist(), BYTE_VOCAB, order, EOD)
        assert res.bits["eval"][order] == pytest.approx(ref, rel=1e-10)


def test_order_one_matches_a_hand_computation() -> None:
    # train stream: a×4 b×3 c×2 d×1 EOD×1 (11 symbols): n1..n4 = 2, 1, 1, 1 -> Y = 1/2, D1 = 1/2, D2 = 1/2, D3 = 1
    total, d1, d2, d3 = 11, 0.5, 0.5, 1.0
    gamma = (d3 * 2 + d2 * 1 + d1 * 2) / total  # a, b (>= 3); c (2); d, EOD (1)
    uniform = gamma / 257
    probs = [(4 - d3) / total + uniform, (3 - d3) / total + uniform, uniform, (1 - d1) / total + uniform]  # a b e EOD
    expected = sum(-math.log2(p) for p in probs) / 4
    assert byte_kn_bpb(["aaaabbbccd"], ["abe"], order=1) == pytest.approx(expected, rel=1e-12)


def test_repetitive_text_is_cheap_at_order_five() -> None:
    docs = ["the quick brown fox jumps over the lazy dog. " * 8] * 3
    held_out = ["the quick brown fox jumps over the lazy dog. " * 4]
    bpb1, bpb5 = byte_kn_bpb(docs, held_out, 1), byte_kn_bpb(docs, held_out, 5)
    assert bpb1 > 3.5  # about the entropy of the character frequencies
    assert bpb5 < 0.5 * bpb1


def test_tokens_reconstruct_text() -> None:
    for text in ["Hello, world!  It's £5.\n\nNew para\t-- ok", "é ß 123abc", ""]:
        assert "".join(tokenize(text)) == text
        assert "".join(tokenize(text, r" ?\w+| ?[^\w\s]|\s+")) == text
    with pytest.raises(ValueError):
        tokenize("a, b", r"\w+")  # a pattern that drops characters would leave bytes uncoded


def test_word_model_spells_unknown_words_and_codes_every_byte() -> None:
    train, evals = ["a b a", "b a c"], ["a zz", "b"]
    # train tokens: a×3, " "×4, b×2, c×1 -> vocabulary <unk>, <eod>, " ", a, b (min_count 2); c is <unk>
    # train ids: a _ b _ a EOD b _ a _ <unk> EOD: " "4 a3 b2 eod2 unk1, 12 tokens; n1..n4 = 1, 2, 1, 1
    y = 1 / (1 + 2 * 2)
    d1, d2, d3 = 1 - 2 * y * 2 / 1, 2 - 3 * y * 1 / 2, 3 - 4 * y * 1 / 1
    gamma = (2 * d3 + 2 * d2 + d1) / 12
    p = {"sp": (4 - d3) / 12, "a": (3 - d3) / 12, "b": (2 - d2) / 12, "eod": (2 - d2) / 12, "unk": (1 - d1) / 12}
    p = {k: v + gamma / 5 for k, v in p.items()}
    # spelling model, order 1, trained on the OOV "c" then every train type (" ", a, b, c), each + marker M:
    # M×5, c×2, " "/a/b×1 (10 symbols): n1..n4 = 3, 1, 0, 0 -> Y = 3/5, D1 = 1 - 2Y/3, D2 = 2 (n3 = 0), D3+ = Y
    ys = 3 / 5
    s1, s2, s3 = 1 - 2 * ys * 1 / 3, 2.0, ys
    spell_gamma = (s3 + s2 + 3 * s1) / 10
    p_z, p_marker = spell_gamma / 257, (5 - s3) / 10 + spell_gamma / 257
    spell_bits = -2 * math.log2(p_z) - math.log2(p_marker)  # z z M
    bits = sum(-math.log2(p[t]) for t in ["a", "sp", "unk", "eod", "b", "eod"]) + spell_bits
    n_bytes = len("a zz") + 1 + len("b") + 1
    bpb = word_kn_bpb(train, evals, order=1, min_count=2, spell_order=1)
    assert math.isfinite(bpb)
    assert bpb == pytest.approx(bits / n_bytes, rel=1e-12)
    # higher orders: still finite, and the bpb denominator is the byte stream's length
    res = word_kn({"train": train, "eval": evals}, [1, 2, 3], ["eval"], spell_order=2)
    assert res["n_bytes"]["eval"] == len(byte_stream(evals)) == n_bytes
    assert all(math.isfinite(b) and b > 0 for b in res["bits"]["eval"].values())


def test_nothing_is_learned_from_eval_text() -> None:
    train = _random_docs(5, 20, 30)
    val = _random_docs(6, 5, 20)
    test_a, test_b = _random_docs(7, 5, 20), ["zzzz yyyy the cat"] * 7
    res_a = kn_bits(byte_stream(train), {"val": byte_stream(val), "test": byte_stream(test_a)}, BYTE_VOCAB, 5, EOD)
    res_b = kn_bits(byte_stream(train), {"val": byte_stream(val), "test": byte_stream(test_b)}, BYTE_VOCAB, 5, EOD)
    assert res_a.bits["val"] == res_b.bits["val"]
    assert res_a.bits["test"] != res_b.bits["test"]
    alone = kn_bits(byte_stream(train), {"test": byte_stream(test_a)}, BYTE_VOCAB, 5, EOD)
    assert alone.bits["test"] == res_a.bits["test"]  # scoring one stream does not depend on the others
    # the word model: vocabulary, counts and val bits are the same whatever the test text is
    word_a = word_kn({"train": train, "val": val, "test": test_a}, [1, 2, 3], ["val", "test"])
    word_b = word_kn({"train": train, "val": val, "test": test_b}, [1, 2, 3], ["val", "test"])
    assert word_a["bits"]["val"] == word_b["bits"]["val"]
    assert word_a["vocab_size"] == word_b["vocab_size"]
    assert word_data({"train": train, "test": test_a}).vocab == word_data({"train": train, "test": test_b}).vocab
