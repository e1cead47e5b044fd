"""Tokenizers: any HF tokenizer by name or path, or a byte-level BPE trained on the training split only.

The data package owns tokenizers (the model is sized from the tokenizer, not the other way round), so loading one
needs no model code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"  # the one special token of a trained BPE: end of document (and BOS/pad/unk stand-in)
BPE = "bpe"  # model.tokenizer=bpe: train a byte-level BPE on the training split


def offline_hint(name_or_path: str, err: Exception) -> LmlabError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "connect" in str(err).lower() or "offline" in str(err).lower()
    reason = (
        "the Hugging Face hub cannot be reached (offline)"
        if offline
        else f"loading it failed: {str(err).splitlines()[0]}"
    )
    return LmlabError(
        f"Model '{name_or_path}' is not a local directory and is not in the local Hugging Face cache, and "
        f"{reason}. Use model=minilm (bundled, works offline) or model.name_or_path=<a local directory "
        f"saved with save_pretrained>."
    )


@functools.lru_cache(maxsize=8)
def load_tokenizer(name_or_path: str, gguf_file: str | None = None) -> Any:
    """AutoTokenizer with a pad token guaranteed (GPT-2 has none; it reuses EOS, as HF recommends).

    Cached per process: the model (pad id), the datamodule and the export all ask for the same tokenizer, and
    each load costs ~0.3 s. Callers must not modify the returned tokenizer.
    """
    from transformers import AutoTokenizer

    from lmlab.config.hub import check_loadable

    check_loadable(name_or_path, "model.tokenizer")
    try:
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as err:
        raise offline_hint(name_or_path, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Pre-tokenized features are padded per batch by the collator; the fast-tokenizer "pad is slower than
    # __call__" advice does not apply to that use.
    tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True
    return tokenizer


def wrap_bpe(tokenizer_json: str) -> Any:
    """A transformers fast tokenizer around a trained `tokenizers` BPE (what models, export and eval use)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json), eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=EOS
    )


# The BPE learns from at most this many UTF-8 bytes of training text (model.bpe_train_bytes): a seeded sample of the
# train split's documents (streamed, never one list of a large corpus). BBC News' train split (~4 MB) is used whole,
# in its order, as before.
BPE_TRAIN_BYTES = 100_000_000


def _sample(texts: Iterable[str], limit: int, rate: float, seen: list[int]) -> Iterator[str]:
    """Each document with probability `rate`, decided by its own hash (seeded, so the same corpus gives the same
    sample in any run), until `limit` bytes: `rate` is set so that the sample spreads over the whole split."""
    total = 0
    for text in texts:
        data = text.encode("utf-8")
        if rate < 1 and int.from_bytes(hashlib.sha256(b"bpe-sample\0" + data).digest()[:8], "big") >= rate * 2.0**64:
            continue
        total += len(data)
        seen[0] += 1
        yield text
        if total >= limit:  # no further document is read
            return


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    *,
    data_fingerprint: str,
    cache_dir: str | Path | None,
    max_bytes: int = BPE_TRAIN_BYTES,
    total_bytes: int | None = None,
) -> Any:
    """A byte-level BPE of `vocab_size` tokens learnt from `texts` (pass the training split only, so no val/test
    text shapes the vocabulary; at most `max_bytes` of it, streamed: when the split's `total_bytes` (an estimate)
    exceed `max_bytes`, a seeded sample of its documents at rate max_bytes / total_bytes, else all of it in order),
    cached by the data fingerprint and settings like the tokenization cache."""
    import tokenizers

    if vocab_size < 257 + 1:
        raise LmlabError(
            f"model.bpe_vocab_size={vocab_size} is too small: a byte-level BPE needs the 256 bytes "
            f"and {EOS}; use e.g. model.bpe_vocab_size=4096."
        )
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise LmlabError(
            f"model.bpe_train_bytes={max_bytes!r}: the BPE's training text budget is a positive number of bytes, "
            f"e.g. model.bpe_train_bytes=100000000 (100 MB, the default)."
        )
    rate = 1.0 if not total_bytes or total_bytes <= max_bytes else max_bytes / total_bytes
    parts = [data_fingerprint, vocab_size, tokenizers.__version__, 1] + (
        [max_bytes, round(rate, 6)] if max_bytes != BPE_TRAIN_BYTES or rate < 1 else []
    )
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()
    path = Path(cache_dir).expanduser() / f"bpe-{key[:24]}.json" if cache_dir else None
    if path is not None and path.is_file():
        log.info("BPE tokenizer (%d tokens) from cache %s", vocab_size, path)
        return wrap_bpe(path.read_text())
    bpe = tokenizers.ByteLevelBPETokenizer()
    # The trainer is deterministic for a given input order (one merge at a time, ties broken by pair order).
    count = [0]
    bpe.train_from_iterator(
        _sample(texts, max_bytes, rate, count),
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        show_progress=False,
    )
    blob = bpe._tokenizer.to_str()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(blob)
        os.replace(tmp, path)
    log.info(
        "BPE tokenizer: %d tokens trained on %d training documents%s",
        bpe.get_vocab_size(),
        count[0],
        f" (a seeded {rate:.2%} sample: model.bpe_train_bytes={max_bytes})" if rate < 1 else "",
    )
    return wrap_bpe(blob)


def token_byte_lengths(tokenizer: Any) -> list[int]:
    """UTF-8 bytes each token id stands for, for bits-per-byte: exact for byte-level BPEs (GPT-2, Llama 3, SmolLM2,
    ours); EOS counts as 1 byte (the document boundary a byte-level model must also encode), other specials as 0."""
    from tokenizers.pre_tokenizers import ByteLevel

    byte_of = set(ByteLevel.alphabet())  # the 256 printable stand-ins of a byte-level vocabulary, one per byte
    special = set(tokenizer.all_special_ids)
    size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    lengths = [0] * size
    for token, i in tokenizer.get_vocab().items():
        if i in special:
            continue
        if all(ch in byte_of for ch in token):
            lengths[i] = len(token)  # one unicode stand-in per byte
        elif token.startswith("<0x") and token.endswith(">") and len(token) == 6:
            lengths[i] = 1  # SentencePiece byte fallback
        else:  # SentencePiece-style pieces: the text they decode to
            lengths[i] = len(token.replace("\u2581", " ").encode("utf-8"))
    if tokenizer.eos_token_id is not None:
        lengths[tokenizer.eos_token_id] = 1
    return lengths
