"""On-disk tokenization cache, keyed by data + full tokenizer identity, safe under concurrent starts.

Why not HF ``datasets``' own cache: its fingerprint of a ``map(tokenize)`` call hashes the function
and can reuse a cache after the tokenizer changed (huggingface/datasets #5985, #6179). Here the key
is built explicitly from the tokenizer's class, name_or_path, full vocab, added and special tokens,
sides, lower-casing, its backend pipeline (normalizer, pre-tokenizer, post-processor, model), plus
``max_length`` and caller options.

Storage is one uncompressed ``.npz`` per key: every variable-length int column is stored as a flat
int32 array plus int64 offsets, scalar columns as plain arrays. No pickle. Loading 100k x 256
tokens takes well under a second (see tests/test_cache.py::test_load_time_100k_x_256).

Concurrency: an ``fcntl.flock`` on ``<key>.lock`` lets one process build while the others (sweep
jobs, DDP ranks starting together) wait and then read. The build is written to a temporary file in
the same directory and moved into place with ``os.replace``, so the final path only ever holds a
complete file; a crashed build leaves at most a ``*.tmp`` file, which is never read. ``flock``
works across processes on local filesystems; on NFS Linux emulates it with POSIX locks (needs
working lockd), on filesystems without locking put the cache on local disk.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RaggedColumn", "cache_key", "cache_path", "load_or_build", "tokenizer_fingerprint"]

logger = logging.getLogger("lmlab.data.cache")

FORMAT_VERSION = 1
_META = "__meta__"


def _sha(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """Everything about ``tokenizer`` that can change its output, as a JSON-able dict of short hashes.

    Also useful in a run manifest. Takes a ``PreTrainedTokenizerBase`` (typed ``Any`` so importing this
    module does not import transformers).
    """
    tok = tokenizer
    added = sorted(
        (
            int(i),
            t.content,
            bool(getattr(t, "special", False)),
            bool(t.lstrip),
            bool(t.rstrip),
            bool(t.normalized),
            bool(t.single_word),
        )
        for i, t in getattr(tok, "added_tokens_decoder", {}).items()
    )
    do_lower_case = getattr(tok, "do_lower_case", None)
    if do_lower_case is None:
        do_lower_case = getattr(tok, "init_kwargs", {}).get("do_lower_case")
    fp: dict[str, Any] = {
        "class": f"{type(tok).__module__}.{type(tok).__qualname__}",
        "name_or_path": str(getattr(tok, "name_or_path", "")),
        "vocab_sha256": _sha(sorted(tok.get_vocab().items())),
        "added_tokens_sha256": _sha(added),
        "special_tokens_sha256": _sha(
            {
                "map": getattr(tok, "special_tokens_map", None),
                "all": list(getattr(tok, "all_special_tokens", [])),
                "ids": list(getattr(tok, "all_special_ids", [])),
            }
        ),
        "truncation_side": getattr(tok, "truncation_side", None),
        "padding_side": getattr(tok, "padding_side", None),
        "do_lower_case": do_lower_case,
        "model_max_length": int(getattr(tok, "model_max_length", 0) or 0),
    }
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        # Truncation/padding are call-time state that the HF wrapper rewrites on every __call__;
        # including them would make the key depend on the last call, not on the tokenizer.
        spec.pop("truncation", None)
        spec.pop("padding", None)
        fp["backend_sha256"] = _sha(spec)
    return fp


def cache_key(*, data_fingerprint: str, tokenizer: Any, max_length: int, options: dict[str, Any]) -> str:
    """A filename-safe key (hex) that changes whenever the data, tokenizer, max_length or options do.

    ``options`` must be JSON-serialisable (e.g. ``{"text_field": "text", "truncation": True}``).
    """
    if not isinstance(data_fingerprint, str) or not data_fingerprint:
        raise ValueError(f"data_fingerprint must be a non-empty string, got {data_fingerprint!r}.")
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}.")
    try:
        options_blob = json.dumps(options, sort_keys=True)
    except TypeError as e:
        raise TypeError(
            f"cache_key options must be JSON-serialisable (str/int/float/bool/None/list/dict); got {options!r}: {e}"
        ) from e
    payload = {
        "format": FORMAT_VERSION,
        "data": data_fingerprint,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": max_length,
        "options": json.loads(options_blob),
    }
    return _sha(payload)[:32]


def cache_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"tok-{key}.npz"


class RaggedColumn(Sequence[np.ndarray]):
    """A variable-length int column stored flat: ``col[i]`` is a zero-copy view of example ``i``."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        self.flat = flat
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for RaggedColumn of length {n}")
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.flat[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        """Per-example lengths (what LengthGroupedSampler needs), without touching the data."""
        return np.diff(self.offsets)

    def to_lists(self) -> list[list[int]]:
        return [x.tolist() for x in self]


def _is_sequence_value(v: Any) -> bool:
    return isinstance(v, (list, tuple, np.ndarray)) and not isinstance(v, (str, bytes))


def _to_arrays(columns: dict[str, Sequence]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if not isinstance(columns, dict) or not columns:
        raise TypeError(f"build() must return a non-empty dict of column name -> list, got {type(columns).__name__}.")
    sizes = {name: len(col) for name, col in columns.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(
            f"build() returned columns of different lengths: {sizes}; every column needs one row per example."
        )
    arrays: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    for name, col in columns.items():
        if name.startswith("__") or "/" in name:
            raise ValueError(f"column name {name!r} is reserved or contains '/'; rename it.")
        if len(col) and _is_sequence_value(col[0]):
            lens = np.fromiter((len(x) for x in col), dtype=np.int64, count=len(col))
            offsets = np.zeros(len(col) + 1, dtype=np.int64)
            np.cumsum(lens, out=offsets[1:])
            parts = [np.asarray(x) for x in col]
            flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
            if flat.size and not np.issubdtype(flat.dtype, np.integer):
                raise TypeError(f"column {name!r}: variable-length columns must hold ints, got {flat.dtype}.")
            if flat.size and (flat.min() < np.iinfo(np.int32).min or flat.max() > np.iinfo(np.int32).max):
                flat = flat.astype(np.int64)
            else:
                flat = flat.astype(np.int32)
            arrays[f"{name}/flat"] = flat
            arrays[f"{name}/offsets"] = offsets
            kinds[name] = "ragged"
        else:
            arr = np.asarray(col)
            if arr.dtype == object or arr.ndim != 1:
                raise TypeError(
                    f"column {name!r}: expected a list of ints/floats/strings or of int lists, "
                    f"got values like {col[0]!r}."
                )
            arrays[name] = arr
            kinds[name] = "scalar"
    return arrays, {"kinds": kinds, "n": next(iter(sizes.values()))}


def _write(path: Path, key: str, columns: dict[str, Sequence]) -> None:
    arrays, meta = _to_arrays(columns)
    meta.update({"format": FORMAT_VERSION, "key": key})
    arrays[_META] = np.array(json.dumps(meta))
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see nothing or the complete file
    finally:
        if tmp.exists():
            tmp.unlink()


def _read(path: Path, key: str) -> dict[str, Sequence]:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z[_META]))
        if meta.get("format") != FORMAT_VERSION or meta.get("key") != key:
            raise ValueError(
                f"cache file {path} has format/key {meta.get('format')}/{meta.get('key')}, expected "
                f"{FORMAT_VERSION}/{key}"
            )
        out: dict[str, Sequence] = {}
        for name, kind in meta["kinds"].items():
            if kind == "ragged":
                out[name] = RaggedColumn(z[f"{name}/flat"], z[f"{name}/offsets"])
            else:
                out[name] = z[name]
    return out


def _try_read(path: Path, key: str) -> dict[str, Sequence] | None:
    if not path.exists():
        return None
    try:
        return _read(path, key)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        # Only reachable if the file was damaged after it was written (disk full/copy/manual edit):
        # os.replace never exposes a partial build. Rebuild instead of failing or serving bad data.
        logger.warning("tokenization cache file %s is unreadable (%s); rebuilding it", path, e)
        return None


def load_or_build(
    cache_dir: Path,
    key: str,
    build: Callable[[], dict[str, Sequence]],
    *,
    lock_timeout_s: float = 3600.0,
) -> tuple[dict[str, Sequence], bool]:
    """Return ``(columns, hit)``; run ``build()`` only if no complete cache for ``key`` exists.

    ``build`` returns ``{column: list}`` where each value is a list of int lists / 1-d int arrays
    (``input_ids``...) or a list of scalars (labels, ids). The returned columns are read back from
    disk in both the hit and the miss case, so callers see one type: a :class:`RaggedColumn` for
    variable-length columns, a numpy array for scalar columns.

    Logs exactly one INFO line on ``lmlab.data.cache``: ``tokenization cache hit`` or
    ``tokenization cache miss``, with the key and path.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_path(cache_dir, key)
    t0 = time.perf_counter()

    cols = _try_read(path, key)  # fast path, no lock: a present file is always complete
    if cols is not None:
        logger.info("tokenization cache hit key=%s path=%s (%.2fs)", key, path, time.perf_counter() - t0)
        return cols, True

    lock_path = cache_dir / f"tok-{key}.lock"
    with open(lock_path, "a+") as lock_file:
        deadline = time.monotonic() + lock_timeout_s
        waited = False
        while True:
            try:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = True
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"waited {lock_timeout_s:.0f}s for another process building the tokenization cache "
                        f"(lock {lock_path}). If no build is running, a stale lock holder may be hung: "
                        "stop it, or raise lock_timeout_s."
                    ) from None
                time.sleep(0.05)
        try:
            cols = _try_read(path, key)  # another process may have built it while we waited
            if cols is not None:
                logger.info(
                    "tokenization cache hit key=%s path=%s (waited for another builder: %s, %.2fs)",
                    key,
                    path,
                    waited,
                    time.perf_counter() - t0,
                )
                return cols, True
            # We hold the lock, so any temp file for this key is a leftover of a killed build.
            for stale in cache_dir.glob(f"{path.name}.*.tmp"):
                stale.unlink(missing_ok=True)
            columns = build()
            _write(path, key, columns)
            cols = _read(path, key)
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
    logger.info("tokenization cache miss key=%s path=%s (built in %.2fs)", key, path, time.perf_counter() - t0)
    return cols, False
