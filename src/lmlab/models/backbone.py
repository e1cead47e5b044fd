"""Loading transformer backbones: hub ids, local directories, GGUF files, or random-init configs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmlab.config.hub import check_loadable
from lmlab.console import phase, quiet_gguf_reader
from lmlab.data.tokenizer import offline_hint
from lmlab.errors import LmlabError


def require_gguf() -> None:
    """transformers reads GGUF files with the `gguf` package (and de-quantizes with accelerate present)."""
    import importlib.util

    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise LmlabError(
            f"Loading a GGUF model (model.gguf_file) needs {' and '.join(missing)}: "
            f"`pip install {' '.join(missing)}` (or run `make install`)."
        )


def load_backbone(name_or_path: str | None, *, auto_class: str, **kwargs: Any) -> Any:
    """`_load_backbone`, then `model.init_from`'s weights when a task builds inside `init_from.initializing_from`
    (lmlab.models.init_from): every task gets the pretrain->finetune chain through this one place."""
    from lmlab.models import init_from

    scratch = kwargs.get("from_scratch")
    source = name_or_path if name_or_path is not None else (scratch or {}).get("model_type", "?")
    with phase(f"{'building (random init)' if scratch is not None else 'loading'} model {source} ({auto_class})"):
        return init_from.apply(_load_backbone(name_or_path, auto_class=auto_class, **kwargs))


def _load_backbone(
    name_or_path: str | None,
    *,
    auto_class: str,
    from_scratch: Mapping[str, Any] | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    attn_implementation: str | None = None,
    gguf_file: str | None = None,
    **model_kwargs: Any,
) -> Any:
    """`from_pretrained`, or a random init from `name_or_path`'s config updated by `from_scratch`.

    `auto_class` is a transformers Auto* class name (AutoModel, AutoModelForCausalLM, ...). With no
    `name_or_path`, `from_scratch` names an architecture by its HF `model_type` (`{model_type: llama, ...}`), so a
    model needs no checkpoint at all. `gguf_file` loads a GGUF file from the `name_or_path` directory (weights
    de-quantized to fp32 by transformers).
    """
    import transformers

    if name_or_path is not None:
        check_loadable(name_or_path)  # a missing dir or no network: said in seconds, not after a minute of retries
    cls = getattr(transformers, auto_class)
    overrides = dict(config_overrides or {})
    if attn_implementation:
        model_kwargs["attn_implementation"] = attn_implementation
    try:
        if from_scratch is not None:
            changes = dict(from_scratch)
            if name_or_path is None:
                if "model_type" not in changes:
                    raise LmlabError(
                        "model.name_or_path=null needs model.from_scratch.model_type (e.g. llama, gpt2) "
                        "to know which architecture to build."
                    )
                config = transformers.AutoConfig.for_model(changes.pop("model_type"), **changes, **overrides)
            else:
                if gguf_file:
                    require_gguf()
                    overrides["gguf_file"] = gguf_file  # the config is read from the GGUF file's metadata
                config = transformers.AutoConfig.from_pretrained(name_or_path, **changes, **overrides)
            for key, value in model_kwargs.items():
                if key == "attn_implementation":
                    config._attn_implementation = value
                else:
                    setattr(config, key, value)
            return cls.from_config(config)
        if name_or_path is None:
            raise LmlabError("model.name_or_path=null: give a checkpoint (hub id or local dir) or model.from_scratch.")
        if not gguf_file:
            return cls.from_pretrained(name_or_path, **overrides, **model_kwargs)
        require_gguf()
        quiet_gguf_reader()
        model = cls.from_pretrained(name_or_path, **overrides, gguf_file=gguf_file, **model_kwargs)
        # The weights are de-quantized to plain fp32 tensors on load, but transformers still marks the model as
        # GGUF-quantized and refuses save_pretrained ("not serializable"): drop that mark so exports work.
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        return model
    except OSError as err:
        if name_or_path is not None and Path(name_or_path).exists():
            raise LmlabError(f"Could not load a model from {name_or_path}: {err}") from err
        raise offline_hint(name_or_path, err) from err


def compile_unavailable(backend: str) -> str | None:
    """Why torch.compile with `backend` cannot run here (None: it can). inductor generates C++ for CPU kernels (and
    Triton for CUDA ones), so it needs a C++ compiler (or Triton) that a plain `pip install torch` does not bring."""
    import os
    import shutil

    import torch
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return f"torch {torch.__version__} has no torch.compile support on this Python/platform"
    if backend != "inductor":
        return None  # aot_eager, eager, cudagraphs...: no code generation
    if torch.cuda.is_available():
        from torch.utils._triton import has_triton

        if not has_triton():
            return "inductor needs Triton for CUDA kernels and it is not installed (pip install triton)"
    compilers = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    if not any(c and shutil.which(c) for c in compilers):
        return (
            "inductor needs a C++ compiler for CPU kernels (g++ or clang++ on PATH, or CXX=<compiler>) and none "
            "was found"
        )
    return None


def compile_in_place(net: Any, compile: bool | str, dynamic: bool | None, mode: str | None = None) -> bool:
    """`model.compile`: false | true (= inductor) | a torch.compile backend name (aot_eager: no code generation, for
    debugging graph breaks and recompiles). In place (nn.Module.compile), so parameter names and checkpoints are the
    same as without compile. Where the backend cannot run, says why and trains eager (returns False).

    `model.compile_mode`: inductor's mode (null = default; max-autotune-no-cudagraphs also tunes the GEMMs: on the
    2-core CPU it ran the LM step faster than the default mode, docs/speed.md)."""
    import logging

    if compile is False or compile is None:
        return False
    backend = "inductor" if compile is True else str(compile)
    if mode is not None:
        import torch._inductor

        modes = list(torch._inductor.list_mode_options())
        if backend != "inductor" or mode not in modes:
            raise LmlabError(
                f"model.compile_mode={mode!r} with model.compile={compile}: a mode is inductor's (model.compile=true) "
                f"and one of {modes}; use model.compile_mode=null for the default."
            )
    why = compile_unavailable(backend)
    if why is not None:
        logging.getLogger("lmlab.compile").warning(
            "model.compile=%s: %s; training without compile (eager). Set model.compile=false to silence this.",
            compile,
            why,
        )
        return False
    net.compile(dynamic=dynamic, backend=backend, mode=mode)
    return True
