"""`model.init_from=<run dir | exported model dir>`: start any task from an earlier run's exported weights.

`Task.build` opens `initializing_from(...)` around the module's construction; every backbone built inside it
through `load_backbone` gets the parent's tensors copied in right after it is built (before a task wraps it, e.g.
in peft). What is copied:
- the backbone (the HF base model: `bert.*`, `model.*`, ...) always, tensor by tensor by name; backbone tensors
  the parent lacks (BERT's pooler after an MLM parent) keep the child's own initialisation;
- the head too only when parent and child are the same HF class (CLM->CLM, MLM->MLM; a classifier only with the
  same label map); otherwise (MLM->classification, CLM->classification) the head stays freshly initialised.
The log lists what was loaded and what was not. An architecture mismatch (model type, sizes, layer count, a
tensor's shape) or a tokenizer mismatch (another vocabulary) is refused with an LmlabError.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError
from lmlab.rundir.lineage import Parent, resolve

log = logging.getLogger(__name__)

# Config fields that define the architecture: a parent and a child must agree on each one both have.
ARCH_FIELDS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "type_vocab_size",
    "head_dim",
    "n_embd",
    "n_layer",
    "n_head",
    "n_positions",
    "n_inner",
    "dim",
    "n_layers",
    "n_heads",
)


_ACTIVE: contextvars.ContextVar[Parent | None] = contextvars.ContextVar("lmlab_init_from", default=None)


@contextlib.contextmanager
def initializing_from(init_from: str | Path | None, tokenizer: Any) -> Iterator[Parent | None]:
    """While open, `apply` copies the parent's weights into every backbone `load_backbone` builds."""
    if not init_from:
        yield None
        return
    parent = resolve(init_from)
    check_tokenizer(parent, tokenizer, init_from)
    token = _ACTIVE.set(parent)
    try:
        yield parent
    finally:
        _ACTIVE.reset(token)
    if not parent.applied:
        raise LmlabError(
            f"model.init_from={init_from}: this task built no backbone through "
            f"lmlab.models.load_backbone, so the parent's weights could not be loaded."
        )


def check_tokenizer(parent: Parent, tokenizer: Any, init_from: Any) -> None:
    """The child must read text exactly as the parent did: the same vocabulary (ids) and normalization."""
    import transformers

    theirs = transformers.AutoTokenizer.from_pretrained(parent.export)
    ours_vocab, their_vocab = tokenizer.get_vocab(), theirs.get_vocab()
    problems = []
    if ours_vocab != their_vocab:
        differ = sum(1 for k, v in ours_vocab.items() if their_vocab.get(k) != v)
        problems.append(
            f"vocabularies differ ({len(ours_vocab)} vs {len(their_vocab)} tokens, {differ} tokens "
            f"with another id or missing)"
        )
    elif _normalizer(tokenizer) != _normalizer(theirs):
        problems.append("text normalization differs (e.g. lower-casing)")
    if problems:
        raise LmlabError(
            f"model.init_from={init_from} was trained with another tokenizer than this run's "
            f"model.tokenizer: {'; '.join(problems)}. Use the parent's tokenizer "
            f"(model.tokenizer={parent.export}, or the same model.tokenizer setting as the parent)."
        )


def _normalizer(tokenizer: Any) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()).get("normalizer") if backend is not None else None


def checkpoint_tensor_names(directory: Path) -> list[str] | None:
    """Tensor names stored in a save_pretrained dir (safetensors headers only; None if there are no weights)."""
    from safetensors import safe_open

    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        return None
    names: list[str] = []
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            names.extend(handle.keys())
    return names


def load_tensors(directory: Path) -> dict[str, Any]:
    """Every tensor of a save_pretrained dir (safetensors, else pytorch_model*.bin)."""
    import torch
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    files = sorted(directory.glob("*.safetensors"))
    for file in files:
        tensors.update(load_file(str(file)))
    if not files:
        for file in sorted(directory.glob("pytorch_model*.bin")):
            tensors.update(torch.load(file, map_location="cpu", weights_only=True))
    if not tensors:
        raise LmlabError(f"model.init_from: {directory} has no weights (*.safetensors or pytorch_model*.bin).")
    return tensors


def relative_names(names: Iterable[str], prefix: str) -> tuple[list[str], list[str]]:
    """Split tensor names into backbone names (without the `<prefix>.` of a head model) and head names.

    A bare base model's names (no `<prefix>.` anywhere, e.g. an `AutoModel` export) are all backbone names.
    """
    names = list(names)
    base = [n[len(prefix) + 1 :] for n in names if n.startswith(prefix + ".")]
    if not base:
        return names, []
    return base, [n for n in names if not n.startswith(prefix + ".")]


def apply(model: Any) -> Any:
    """Called by `load_backbone` on every model it builds: the active parent's tensors copied in (or nothing)."""
    parent = _ACTIVE.get()
    if parent is None:
        return model
    copy_weights(model, parent)
    parent.applied += 1
    return model


def copy_weights(model: Any, parent: Parent) -> dict[str, list[str]]:
    """Copy the parent's backbone (and, for the same class, head) tensors into `model`; returns what was loaded."""
    import torch

    config = json.loads((parent.export / "config.json").read_text())
    check_architecture(config, model.config.to_dict(), parent)
    stored = load_tensors(parent.export)
    prefix = model.base_model_prefix
    bare_child = model.base_model is model
    if any(n.startswith(prefix + ".") for n in stored):  # a head model's export: bert.*, model.*, ...
        base_of = {n[len(prefix) + 1 :]: n for n in stored if n.startswith(prefix + ".")}
    else:  # a bare base model's export (AutoModel, e.g. a pooled-head classifier's)
        base_of = {n: n for n in stored}
    same_head = (
        not bare_child
        and type(model).__name__ in (config.get("architectures") or [])
        and config.get("id2label") == {str(k): v for k, v in model.config.id2label.items()}
    )
    loaded, kept, seen = [], [], set()
    mismatched = []
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, tensor in state.items():
            if id(tensor) in seen:  # tied to a tensor already handled (e.g. the MLM decoder = word embeddings)
                continue
            seen.add(id(tensor))
            is_base = bare_child or name.startswith(prefix + ".")
            key = name[len(prefix) + 1 :] if is_base and not bare_child else name
            source = base_of.get(key) if is_base else (name if same_head and name in stored else None)
            if source is None:
                kept.append(name)
                continue
            if tuple(stored[source].shape) != tuple(tensor.shape):
                mismatched.append(f"{name} {tuple(tensor.shape)} vs {tuple(stored[source].shape)}")
                continue
            tensor.copy_(stored[source].to(tensor.dtype))
            loaded.append(name)
    if mismatched or not any(bare_child or n.startswith(prefix + ".") for n in loaded):
        raise LmlabError(
            f"model.init_from={parent.run_dir or parent.export}: the parent's weights do not fit this "
            f"model ({'; '.join(mismatched[:5]) or 'no backbone tensor in common'}). Use the same "
            f"model (architecture and sizes) as the parent run."
        )
    where = parent.run_dir or parent.export
    log.info(
        "model.init_from=%s: loaded %d tensors (%s) from %s; %d kept as initialised here%s: %s",
        where,
        len(loaded),
        "backbone and head" if same_head else "backbone only",
        parent.export,
        len(kept),
        "" if same_head else " (head freshly initialised)",
        ", ".join(kept) or "none",
    )
    return {"loaded": loaded, "kept": kept}


def check_architecture(parent_config: dict[str, Any], child_config: dict[str, Any], parent: Parent) -> None:
    differ = [
        f"{k}: {parent_config[k]} (parent) vs {child_config[k]} (this run)"
        for k in ARCH_FIELDS
        if k in parent_config and k in child_config and parent_config[k] != child_config[k]
    ]
    if differ:
        raise LmlabError(
            f"model.init_from={parent.run_dir or parent.export} is another architecture than this "
            f"run's model: {'; '.join(differ)}. Use the parent's model (e.g. the same model=... and "
            f"model.from_scratch settings), or another parent."
        )
