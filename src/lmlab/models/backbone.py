"""Loading tokenizers and transformer backbones: hub ids, local directories, or tiny random-init configs."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmlab.config import LmlabError


def _offline_hint(name_or_path: str, err: Exception) -> LmlabError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "connect" in str(err).lower() or "offline" in str(
        err).lower()
    reason = ("the Hugging Face hub cannot be reached (offline)" if offline
              else f"loading it failed: {str(err).splitlines()[0]}")
    return LmlabError(
        f"Model '{name_or_path}' is not a local directory and is not in the local Hugging Face cache, and "
        f"{reason}. Use model=minilm (bundled, works offline) or model.name_or_path=<a local directory "
        f"saved with save_pretrained>."
    )


@functools.lru_cache(maxsize=8)
def load_tokenizer(name_or_path: str) -> Any:
    """AutoTokenizer with a pad token guaranteed (GPT-2 has none; it reuses EOS, as HF recommends).

    Cached per process: the model (pad id), the datamodule and the export all ask for the same tokenizer, and
    each load costs ~0.3 s. Callers must not modify the returned tokenizer.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise _offline_hint(name_or_path, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Pre-tokenized features are padded per batch by the collator; the fast-tokenizer "pad is slower than
    # __call__" advice does not apply to that use.
    tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True
    return tokenizer


def load_backbone(
    name_or_path: str,
    *,
    auto_class: str,
    from_scratch: Mapping[str, Any] | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    attn_implementation: str | None = None,
    **model_kwargs: Any,
) -> Any:
    """`from_pretrained`, or a random init from `name_or_path`'s config updated by `from_scratch`.

    `auto_class` is a transformers Auto* class name (AutoModel, AutoModelForSequenceClassification).
    """
    import transformers

    cls = getattr(transformers, auto_class)
    overrides = dict(config_overrides or {})
    if attn_implementation:
        model_kwargs["attn_implementation"] = attn_implementation
    try:
        if from_scratch is not None:
            config = transformers.AutoConfig.from_pretrained(name_or_path, **dict(from_scratch), **overrides)
            for key, value in model_kwargs.items():
                if key == "attn_implementation":
                    config._attn_implementation = value
                else:
                    setattr(config, key, value)
            return cls.from_config(config)
        return cls.from_pretrained(name_or_path, **overrides, **model_kwargs)
    except OSError as err:
        if Path(name_or_path).exists():
            raise LmlabError(f"Could not load a model from {name_or_path}: {err}") from err
        raise _offline_hint(name_or_path, err) from err
