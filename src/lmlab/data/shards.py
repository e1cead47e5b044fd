"""Token shards: a corpus streamed through the tokenizer into plain memory-mappable arrays, split by hash.

Format (nanoGPT/OLMo-core style, chosen over litdata: no extra dependency or chunk server, a shard is two numpy
files anyone can read, exact resume is ours to define, and litdata's resume of combined/streaming datasets has had
open bugs, litData #248/#775). In `<root>/shards-<key>/`:

- `shard-NNNNN.<split>.bin`: the token ids of that shard's documents of `split`, concatenated (each document as
  the `tokenize` callable returns it, e.g. ending in EOS), raw `uint16` when every id < 2^16, else `uint32`;
- `shard-NNNNN.<split>.len.npy`: each document's token count (uint32), so document offsets are its cumsum;
- `shard-NNNNN.<split>.u.npy`: each document's hash-split draw u * 2^64 (uint64), so a val/test token budget
  (dataset.val_tokens / test_tokens) fills a split in increasing u at read time without re-preparing;
- `shard-NNNNN.hashes.npy`: the 8-byte content hashes of the documents kept (exact dedupe state for a resume);
- `shard-NNNNN.json`: written last, by atomic rename: the shard is complete (a half-written shard has none and
  never counts); it records how many corpus documents the shard consumed, so a resume skips exactly those;
- `manifest.json`: written last of all: the shard set is complete (counts, dtype, corpus fingerprint, seconds).

Shards are cut every `shard_bytes` of document text, in corpus order, so a resumed build writes the same shards as
an uninterrupted one. Preparation holds one `fcntl.flock` on `shards-<key>.lock`: one builder, the others wait and
then read. Tokenization runs in `num_proc` forked worker processes on batches of documents, with a bounded number
of batches in flight: memory follows the batch and shard sizes, never the corpus size.

The key covers the corpus fingerprint (`corpus_fingerprint`: every file's path, size and mtime, and sha256 of
samples of its content: the first, last and 4 evenly spaced 64 KiB), the reader options, the tokenizer identity and
the split settings — not the block length, which is cut at read time.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.data.hashsplit import SPLIT_IDS, HashSet, check_fractions, content_hash, draw_of
from lmlab.data.readers import corpus_files, iter_documents
from lmlab.data.workers import fork_pool
from lmlab.errors import LmlabError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: per-document u (the hash-split draw) stored, for dataset.val_tokens/test_tokens
SPLITS = tuple(SPLIT_IDS)
SAMPLE_BYTES = 1 << 16
Tokenize = Callable[[list[str]], Sequence[Sequence[int]]]


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else uint32."""
    if vocab_size <= 0 or vocab_size > 2**32:
        raise ValueError(f"vocab_size={vocab_size} must be in [1, 2^32].")
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def corpus_fingerprint(path: str | Path, samples: int = 4) -> dict[str, Any]:
    """A cheap fingerprint of a corpus: per file path, size, mtime and a hash of sampled 64 KiB pieces."""
    files = []
    for file in corpus_files(path):
        stat = file.stat()
        digest = hashlib.sha256()
        with open(file, "rb") as f:
            offsets = {0, max(stat.st_size - SAMPLE_BYTES, 0)}
            offsets |= {stat.st_size * (i + 1) // (samples + 1) for i in range(samples)}
            for offset in sorted(offsets):
                f.seek(offset)
                digest.update(f.read(SAMPLE_BYTES))
        files.append([str(file.resolve()), stat.st_size, stat.st_mtime_ns, digest.hexdigest()[:16]])
    return {"files": files}


@dataclass
class SplitTokens:
    """One split's tokens over several shard files: `tokens[a:b]` is an array (copied only across a shard seam)."""

    parts: list[np.ndarray]  # memmaps
    offsets: np.ndarray  # int64 document offsets into the concatenated stream, len = documents + 1

    def __post_init__(self) -> None:
        self.bounds = np.zeros(len(self.parts) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in self.parts], out=self.bounds[1:])
        self.dtype = self.parts[0].dtype if self.parts else np.dtype(np.uint16)

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("SplitTokens supports contiguous slices only")
        start, stop, _ = key.indices(len(self))
        if stop <= start:
            return np.zeros(0, dtype=self.dtype)
        first = int(np.searchsorted(self.bounds, start, side="right")) - 1
        last = int(np.searchsorted(self.bounds, stop, side="left")) - 1
        if first == last:
            base = self.bounds[first]
            return self.parts[first][start - base : stop - base]
        pieces = []
        for i in range(first, last + 1):
            base = int(self.bounds[i])
            pieces.append(self.parts[i][max(start - base, 0) : min(stop - base, len(self.parts[i]))])
        return np.concatenate(pieces)

    def document(self, i: int) -> np.ndarray:
        return self[int(self.offsets[i]) : int(self.offsets[i + 1])]


@dataclass
class ShardSet:
    directory: Path
    manifest: dict[str, Any]
    built: bool  # True when this process built (part of) it
    held_out: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> docs/tokens outside its budget
    selected: dict[str, np.ndarray] = field(default_factory=dict)  # split -> the documents `split` kept, if not all

    def split(self, split: str, max_tokens: int | None = None, drop: Sequence[int] = ()) -> SplitTokens:
        """The split's tokens, memory-mapped. `drop`: indices of documents left out (near-copies of an earlier
        split). `max_tokens` (dataset.val_tokens / test_tokens): of the rest, only the documents that fit, taken in
        increasing u (the hash-split draw) until the next one would exceed the budget, kept in corpus order and
        copied into memory (evaluation-sized); the others are held out: in this split's files, so never trained
        on, and never scored (`held_out`)."""
        dtype = np.dtype(self.manifest["dtype"])
        parts, lengths = [], []
        for shard in range(self.manifest["shards"]):
            stem = self.directory / f"shard-{shard:05d}.{split}"
            n = np.load(f"{stem}.len.npy")
            lengths.append(n)
            if n.sum():
                parts.append(np.memmap(f"{stem}.bin", dtype=dtype, mode="r"))
        flat_lengths = np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64)
        offsets = np.zeros(len(flat_lengths) + 1, dtype=np.int64)
        np.cumsum(flat_lengths, out=offsets[1:])
        tokens = SplitTokens(parts, offsets)
        self.held_out[split] = {"docs": 0, "tokens": 0}
        candidates = np.setdiff1d(np.arange(len(flat_lengths)), np.asarray(drop, dtype=np.int64))
        selected = candidates
        if max_tokens is not None and flat_lengths[candidates].sum() > max_tokens:
            draws = np.concatenate(
                [np.load(self.directory / f"shard-{i:05d}.{split}.u.npy") for i in range(self.manifest["shards"])]
            )
            by_draw = candidates[np.argsort(draws[candidates], kind="stable")]
            fits = int(np.searchsorted(np.cumsum(flat_lengths[by_draw]), max_tokens, side="right"))
            selected = np.sort(by_draw[:fits])
            self.held_out[split] = {
                "docs": len(candidates) - fits,
                "tokens": int(flat_lengths[candidates].sum() - flat_lengths[selected].sum()),
            }
        self.selected.pop(split, None)
        if len(selected) == len(flat_lengths):
            return tokens
        self.selected[split] = selected
        kept = flat_lengths[selected]
        flat = np.concatenate([tokens.document(int(i)) for i in selected]) if len(selected) else np.zeros(0, dtype)
        kept_offsets = np.zeros(len(selected) + 1, dtype=np.int64)
        np.cumsum(kept, out=kept_offsets[1:])
        return SplitTokens([flat], kept_offsets)


# ---- worker processes: forked, the tokenize callable inherited through this global
_TOKENIZE: Tokenize | None = None
_TEST_HOOK: Callable[[str, int], None] | None = None  # tests: called at points of the build (to kill it there)


def _tokenize_batch(texts: list[str]) -> list[np.ndarray]:
    assert _TOKENIZE is not None
    return [np.asarray(ids, dtype=np.int64) for ids in _TOKENIZE(texts)]


class _ShardWriter:
    """The files of one shard, written to temporary names and renamed when the shard is complete."""

    def __init__(self, directory: Path, index: int, dtype: np.dtype, vocab_size: int):
        self.directory, self.index, self.dtype, self.vocab_size = directory, index, dtype, vocab_size
        self.stem = directory / f"shard-{index:05d}"
        self.files = {s: open(f"{self.stem}.{s}.bin.tmp", "wb") for s in SPLITS}
        self.lengths: dict[str, list[int]] = {s: [] for s in SPLITS}
        self.draws: dict[str, list[int]] = {s: [] for s in SPLITS}  # u * 2^64 of each document (hashsplit.unit)
        self.hashes: list[int] = []
        self.raw_docs = 0
        self.text_bytes = 0

    def write(self, split: str, ids: np.ndarray, draw: int) -> None:
        if len(ids) and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise LmlabError(
                f"The tokenizer returned id {int(ids.max())} outside its vocabulary of {self.vocab_size} tokens; "
                f"the shards cannot store it."
            )
        self.files[split].write(ids.astype(self.dtype).tobytes())
        self.lengths[split].append(len(ids))
        self.draws[split].append(draw)

    def discard(self) -> None:
        for split, f in self.files.items():
            f.close()
            os.unlink(f"{self.stem}.{split}.bin.tmp")

    def finish(self) -> dict[str, Any]:
        for split, f in self.files.items():
            f.flush()
            os.fsync(f.fileno())
            f.close()
            np.save(f"{self.stem}.{split}.len.tmp.npy", np.asarray(self.lengths[split], dtype=np.uint32))
            np.save(f"{self.stem}.{split}.u.tmp.npy", np.asarray(self.draws[split], dtype=np.uint64))
        np.save(f"{self.stem}.hashes.tmp.npy", np.asarray(self.hashes, dtype=np.uint64))
        for split in SPLITS:
            os.replace(f"{self.stem}.{split}.bin.tmp", f"{self.stem}.{split}.bin")
            os.replace(f"{self.stem}.{split}.len.tmp.npy", f"{self.stem}.{split}.len.npy")
            os.replace(f"{self.stem}.{split}.u.tmp.npy", f"{self.stem}.{split}.u.npy")
        os.replace(f"{self.stem}.hashes.tmp.npy", f"{self.stem}.hashes.npy")
        meta = {
            "raw_docs": self.raw_docs,
            "docs": {s: len(v) for s, v in self.lengths.items()},
            "tokens": {s: int(sum(v)) for s, v in self.lengths.items()},
        }
        _atomic_json(Path(f"{self.stem}.json"), meta)
        return meta


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def shard_key(fingerprint: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    blob = json.dumps([FORMAT_VERSION, fingerprint, settings], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _lock(path: Path, timeout_s: float) -> Any:
    handle = open(path, "a+")
    deadline = time.monotonic() + timeout_s
    waited = False
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle, waited
        except BlockingIOError:
            if not waited:
                log.info("Token shards: another process is preparing them (lock %s); waiting", path)
            waited = True
            if time.monotonic() > deadline:
                handle.close()
                raise LmlabError(
                    f"Waited {timeout_s:.0f} s for another process preparing the token shards (lock {path}). If none "
                    f"is running, a hung one holds the lock: stop it."
                ) from None
            time.sleep(0.1)


def prepare(
    path: str | Path,
    root: str | Path,
    *,
    tokenize: Tokenize,
    vocab_size: int,
    identity: Mapping[str, Any],
    split_seed: int = 0,
    fractions: Mapping[str, float] | None = None,
    dedupe: bool = True,
    text_column: str = "text",
    txt: str = "line",
    num_proc: int = 1,
    batch_docs: int = 256,
    shard_bytes: int = 64 << 20,
    lock_timeout_s: float = 24 * 3600.0,
) -> ShardSet:
    """The token shards of the corpus at `path` under `root` (built, resumed, or read from cache).

    `tokenize(texts)` returns each text's ids (what training will read, e.g. ending in EOS); `identity`: a JSON-able
    description of it (tokenizer fingerprint and options) that keys the cache with the corpus fingerprint and
    the split settings."""
    global _TOKENIZE
    fractions = dict(fractions or {"train": 0.8, "val": 0.1, "test": 0.1})
    val, test = check_fractions(fractions)
    fingerprint = corpus_fingerprint(path)
    settings = {
        "identity": identity,
        "split_seed": split_seed,
        "val": val,
        "test": test,
        "dedupe": bool(dedupe),
        "text_column": text_column,
        "txt": txt,
        "vocab_size": vocab_size,
        "shard_bytes": shard_bytes,
    }
    key = shard_key(fingerprint, settings)
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    directory = root / f"shards-{key}"
    manifest_path = directory / "manifest.json"
    if manifest_path.is_file():  # complete: no lock needed
        log.info("Token shards: cache hit %s", directory)
        return ShardSet(directory, json.loads(manifest_path.read_text()), built=False)
    handle, _ = _lock(root / f"shards-{key}.lock", lock_timeout_s)
    try:
        if manifest_path.is_file():  # another process built it while this one waited
            log.info("Token shards: built by another process, %s", directory)
            return ShardSet(directory, json.loads(manifest_path.read_text()), built=False)
        directory.mkdir(exist_ok=True)
        for stale in directory.glob("*.tmp*"):  # a killed build's half shard: never counted, removed
            stale.unlink()
        _TOKENIZE = tokenize
        try:
            manifest = _build(path, directory, fingerprint, settings, num_proc, batch_docs, split_seed, fractions)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise LmlabError(
                f"No space left writing token shards in {directory} ({err.strerror}). Free space there, or put "
                f"them on a larger disk with dataset.cache_dir=<dir>; the shards finished so far are kept and the "
                f"next run resumes after them."
            ) from err
        _atomic_json(manifest_path, manifest)
        return ShardSet(directory, manifest, built=True)
    finally:
        _TOKENIZE = None
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


def _build(
    path: str | Path,
    directory: Path,
    fingerprint: Mapping[str, Any],
    settings: Mapping[str, Any],
    num_proc: int,
    batch_docs: int,
    split_seed: int,
    fractions: Mapping[str, float],
) -> dict[str, Any]:
    start = time.perf_counter()
    vocab_size, shard_bytes = int(settings["vocab_size"]), int(settings["shard_bytes"])
    val, test = check_fractions(fractions)
    dtype = token_dtype(vocab_size)
    done: list[dict[str, Any]] = []
    while (directory / f"shard-{len(done):05d}.json").is_file():
        done.append(json.loads((directory / f"shard-{len(done):05d}.json").read_text()))
    seen = HashSet(
        np.concatenate([np.load(directory / f"shard-{i:05d}.hashes.npy") for i in range(len(done))]) if done else None
    )
    skip = sum(m["raw_docs"] for m in done)
    if done:
        log.info("Token shards: resuming after %d complete shards (%d documents)", len(done), skip)
    duplicates = sum(m["raw_docs"] - sum(m["docs"].values()) for m in done)
    stack = contextlib.ExitStack()  # the worker pool: joined on success, terminated on an error (data.workers)
    pool = stack.enter_context(fork_pool(num_proc)) if num_proc > 1 else None
    pending: collections.deque = collections.deque()
    writer = _ShardWriter(directory, len(done), dtype, vocab_size)
    shards = list(done)

    def drain(limit: int) -> None:
        while len(pending) > limit:
            result, batch_splits, batch_draws = pending.popleft()
            ids = result.get() if pool is not None else result
            for split, doc, draw in zip(batch_splits, ids, batch_draws):
                writer.write(split, doc, draw)
            if _TEST_HOOK is not None:
                _TEST_HOOK("batch", writer.index)

    texts: list[str] = []
    text_splits: list[str] = []
    text_draws: list[int] = []

    def submit() -> None:
        if not texts:
            return
        batch = list(texts)
        pending.append(
            (
                pool.apply_async(_tokenize_batch, (batch,)) if pool else _tokenize_batch(batch),
                list(text_splits),
                list(text_draws),
            )
        )
        texts.clear()
        text_splits.clear()
        text_draws.clear()
        drain(2 * num_proc)

    with stack:
        for n, doc in enumerate(iter_documents(path, str(settings["text_column"]), str(settings["txt"]))):
            if n < skip:
                continue
            writer.raw_docs += 1
            writer.text_bytes += len(doc.text)
            h = content_hash(doc.text)
            if settings["dedupe"] and not seen.add([h])[0]:
                duplicates += 1
            else:
                draw = draw_of(doc.text, split_seed)
                u = draw / 2.0**64
                texts.append(doc.text)
                text_splits.append("val" if u < val else "test" if u < val + test else "train")
                text_draws.append(draw)
                writer.hashes.append(h)
                if len(texts) >= batch_docs:
                    submit()
            if writer.text_bytes >= shard_bytes:
                submit()
                drain(0)
                shards.append(writer.finish())
                log.info("Token shards: shard %d done (%d documents read)", writer.index, skip + n + 1)
                writer = _ShardWriter(directory, len(shards), dtype, vocab_size)
        submit()
        drain(0)
        if writer.raw_docs or not shards:
            shards.append(writer.finish())
        else:
            writer.discard()
    tokens = {s: sum(m["tokens"][s] for m in shards) for s in SPLITS}
    docs = {s: sum(m["docs"][s] for m in shards) for s in SPLITS}
    return {
        "format": FORMAT_VERSION,
        "dtype": dtype.name,
        "shards": len(shards),
        "documents_read": sum(m["raw_docs"] for m in shards),
        "duplicates_removed": duplicates,
        "docs": docs,
        "tokens": tokens,
        "resumed_shards": len(done),
        "fingerprint": fingerprint,
        "settings": settings,
        "seconds": round(time.perf_counter() - start, 3),
    }
