"""Parameter-efficient fine-tuning with the `peft` library (LoRA, IA3): wrapping, checkpoints, export.

The config group `peft` (conf/peft/*.yaml, default `none`) reaches a task module as its `peft` hyperparameter
(train.py adds `base_seed`, the run's seed). With a method on:

- the task's HF model is wrapped by `peft.get_peft_model`: adapters on the target modules (per-architecture
  defaults below), the classification head trained in full (peft's `modules_to_save`: `classifier` / `score`),
  everything else frozen, the causal LM's tied `lm_head` included;
- the frozen base is built under its own seeded RNG (`seed_base`), so rebuilding the module, in a resumed run or
  in eval.py, reproduces it bit for bit, pretrained or random-init alike. That is why a checkpoint holds only the
  trainable tensors (plus buffers) and the optimizer state: the rest is re-made from the config;
- `export_pretrained` writes a peft adapter directory (`adapter_config.json` + `adapter_model.safetensors`) that
  plain `PeftModel.from_pretrained(base, dir)` loads on top of the base named in `base_model.json`
  (`peft.merge=true`: merged, plain transformers weights instead).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lmlab.errors import LmlabError

log = logging.getLogger(__name__)

METHODS = ("none", "lora", "ia3")
# LoRA targets when peft.target_modules=null, by HF model_type: the attention projections (the LoRA paper's
# choice; `peft.target_modules=all-linear` adds the MLPs). Others fall back to peft's own per-model defaults.
LORA_TARGETS = {
    "bert": ["query", "key", "value"],
    "roberta": ["query", "key", "value"],
    "distilbert": ["q_lin", "k_lin", "v_lin"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn"],
}


def enabled(cfg: Mapping[str, Any] | None) -> bool:
    return bool(cfg) and str(cfg.get("method", "none")) != "none"


def check_combination(
    peft_cfg: Mapping[str, Any] | None, model_cfg: Mapping[str, Any], optimizer_cfg: Mapping[str, Any] | None
) -> None:
    """Refuse settings that mean nothing (or something else) with an adapter, before any model is loaded."""
    if not peft_cfg:
        return
    method = str(peft_cfg.get("method", "none"))
    if method not in METHODS:
        raise LmlabError(f"peft.method={method!r} is not one of {list(METHODS)} (peft=none | lora | ia3).")
    if method == "none":
        return
    if method == "lora":
        rank, alpha, dropout = peft_cfg.get("r"), peft_cfg.get("alpha"), peft_cfg.get("dropout", 0.0)
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise LmlabError(f"peft.r={rank!r} must be a positive integer (the LoRA rank, e.g. peft.r=8).")
        if not isinstance(alpha, (int, float)) or alpha <= 0:
            raise LmlabError(f"peft.alpha={alpha!r} must be a positive number (LoRA scaling = alpha / r).")
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise LmlabError(f"peft.dropout={dropout!r} must be in [0, 1).")
    lld = (optimizer_cfg or {}).get("layerwise_lr_decay")
    if lld is not None:
        raise LmlabError(
            f"optimizer.layerwise_lr_decay={lld} with peft={method}: layer-wise lr decay scales the lr of the "
            f"pretrained layers, which {method} freezes (only its small adapters and the head train), so it would "
            f"not mean what it says. Use optimizer.layerwise_lr_decay=null with peft={method}, or peft=none."
        )
    frozen = {k: model_cfg.get(k) for k in ("freeze_layers", "freeze_embeddings") if model_cfg.get(k)}
    if frozen:
        settings = ", ".join(f"model.{k}={v}" for k, v in frozen.items())
        raise LmlabError(
            f"{settings} with peft={method}: {method} already freezes every pretrained weight (adapters and the "
            f"head train), so freezing would do nothing; to keep adapters out of some layers, set "
            f"peft.target_modules (or peft.layers_to_transform). Remove {settings}, or use peft=none."
        )


def seed_base(cfg: Mapping[str, Any] | None) -> torch.Tensor | None:
    """Seed the global RNG with `base_seed` for building the base (and the adapters' initial values), so that a
    rebuild reproduces every frozen tensor, even randomly initialized ones (a from_scratch base, a new head).
    Returns the RNG state to give back to `restore_rng` afterwards: the run's own random stream is untouched."""
    if not enabled(cfg) or cfg.get("base_seed") is None:
        return None
    state = torch.get_rng_state()
    torch.manual_seed(int(cfg["base_seed"]))
    return state


def restore_rng(state: torch.Tensor | None) -> None:
    if state is not None:
        torch.set_rng_state(state)


def wrap(net: nn.Module, cfg: Mapping[str, Any], task_type: str | None) -> nn.Module:
    """`get_peft_model(net, <LoraConfig | IA3Config>)`; task_type SEQ_CLS / CAUSAL_LM / None (a bare encoder)."""
    import peft

    method = cfg["method"]
    model_type = getattr(getattr(net, "config", None), "model_type", None)
    targets = cfg.get("target_modules")
    targets = list(targets) if isinstance(targets, (list, tuple)) else targets
    save = list(cfg["modules_to_save"]) if cfg.get("modules_to_save") else None
    common: dict[str, Any] = {"task_type": task_type, "modules_to_save": save}
    if cfg.get("layers_to_transform") is not None:
        common["layers_to_transform"] = list(cfg["layers_to_transform"])
    if method == "lora":
        config: Any = peft.LoraConfig(
            r=int(cfg["r"]),
            lora_alpha=float(cfg["alpha"]),
            lora_dropout=float(cfg.get("dropout", 0.0)),
            target_modules=targets if targets is not None else LORA_TARGETS.get(model_type),
            bias=str(cfg.get("bias", "none")),
            **common,
        )
    else:
        ff = cfg.get("feedforward_modules")
        config = peft.IA3Config(target_modules=targets, feedforward_modules=list(ff) if ff else None, **common)
    try:
        wrapped = peft.get_peft_model(net, config)
    except ValueError as err:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in net.named_modules() if isinstance(m, nn.Linear)})
        raise LmlabError(
            f"peft={method} on this '{model_type}' model: {err}. Set peft.target_modules to some of "
            f"its linear layers: {linear} (or all-linear)."
        ) from err
    counts = param_counts(wrapped)
    log.info(
        "peft=%s on %s (targets %s): %d trainable of %d parameters (%.2f%%)",
        method,
        model_type,
        sorted(wrapped.peft_config["default"].target_modules or []),
        counts["params/trainable"],
        counts["params/total"],
        100 * counts["params/trainable"] / max(counts["params/total"], 1),
    )
    return wrapped


def unwrap(net: nn.Module) -> nn.Module:
    """The HF model inside a PeftModel (adapter layers injected), or `net` itself."""
    return net.get_base_model() if hasattr(net, "get_base_model") else net


def param_counts(module: nn.Module) -> dict[str, int]:
    """Trainable and total parameters; a tied tensor (lm_head = input embedding) counts once. Under peft the
    total includes the adapters and the trainable copy of the head (peft keeps the original beside it)."""
    params = list(module.parameters())  # deduplicated by identity
    return {
        "params/trainable": sum(p.numel() for p in params if p.requires_grad),
        "params/total": sum(p.numel() for p in params),
    }


class AdapterCheckpoints:
    """LightningModule mixin: with peft on, checkpoints keep only the trainable tensors and the buffers (the frozen
    base is rebuilt from the config, see `seed_base`), and loading one checks that every trainable tensor is in it."""

    def _peft_cfg(self) -> Mapping[str, Any] | None:
        return self.hparams.get("peft")  # type: ignore[attr-defined]

    def _partial(self) -> bool:
        """Adapter-only checkpoints, unless the base cannot be rebuilt from the config alone (`keep_base`: e.g. its
        weights were copied in from another run, model.init_from, which is not a module hyperparameter)."""
        cfg = self._peft_cfg()
        return enabled(cfg) and not cfg.get("keep_base")

    def _trainable_keys(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}  # type: ignore[attr-defined]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not self._partial():
            return
        keep = self._trainable_keys() | {name for name, _ in self.named_buffers()}  # type: ignore[attr-defined]
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["lmlab_peft"] = {"partial_state_dict": True, "method": str(self._peft_cfg()["method"])}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        partial = bool((checkpoint.get("lmlab_peft") or {}).get("partial_state_dict"))
        if partial != self._partial():
            raise LmlabError(
                "This checkpoint was written with a different peft setting (adapter-only vs full "
                "weights): resume or evaluate it with the peft=... it was trained with."
            )
        if partial:
            missing = sorted(self._trainable_keys() - set(checkpoint["state_dict"]))
            if missing:
                raise LmlabError(
                    f"The adapter checkpoint lacks {len(missing)} trainable tensors of this model "
                    f"(e.g. {missing[:3]}): it was written with other peft settings."
                )

    def configure_strict_loading(self) -> None:
        """Partial checkpoints load non-strictly (the frozen base is missing on purpose; checked above)."""
        self.strict_loading = not self._partial()


def export(net: nn.Module, directory: Path, cfg: Mapping[str, Any], base: Mapping[str, Any]) -> None:
    """Write `net` (a PeftModel) as an adapter dir + `base_model.json` (how to load the base), or, with
    `peft.merge=true`, as plain merged transformers weights. A random-init base has no name to load it by, so it is
    saved beside the adapter (`<dir>/base`) and the adapter config names that dir."""
    directory.mkdir(parents=True, exist_ok=True)
    if cfg.get("merge"):
        merged = copy.deepcopy(net).merge_and_unload()  # a copy: the module stays usable after export
        merged.save_pretrained(directory)
        log.info(
            "peft.merge=true: exported merged weights to %s (loads with %s.from_pretrained)",
            directory,
            base["auto_class"],
        )
        return
    info = dict(base)
    if info.get("from_scratch"):
        base_dir = directory / "base"
        copy.deepcopy(net).unload().save_pretrained(base_dir)  # the base without adapter layers
        info.update(name_or_path=str(base_dir.resolve()), gguf_file=None)
        net.peft_config["default"].base_model_name_or_path = str(base_dir.resolve())
    net.save_pretrained(directory)
    (directory / "base_model.json").write_text(json.dumps(info, indent=2) + "\n")
    log.info(
        "exported the %s adapter to %s: PeftModel.from_pretrained(%s.from_pretrained(%r%s), %r)",
        cfg["method"],
        directory,
        info["auto_class"],
        info["name_or_path"],
        f", gguf_file={info['gguf_file']!r}" if info.get("gguf_file") else "",
        str(directory),
    )


def peft_settings(cfg: DictConfig, task: Any, model_cfg: dict[str, Any], optimizer: dict[str, Any]) -> dict[str, Any]:
    """`{"peft": ...}` for the task module when cfg.peft turns a method on (with the seed its frozen base is built
    from), else nothing: modules of runs without peft keep their hyperparameters as they were."""
    import inspect

    from lmlab.models import peft as adapters

    peft_cfg = OmegaConf.to_container(cfg.peft, resolve=True) if cfg.get("peft") else None
    adapters.check_combination(peft_cfg, model_cfg, optimizer)
    if not adapters.enabled(peft_cfg):
        return {}
    if "peft" not in inspect.signature(task.module_class()).parameters:
        raise LmlabError(
            f"peft={peft_cfg['method']} is not supported by task={task.name} (its module takes no "
            f"adapters); use it with task=classification or task=causal_lm, or peft=none."
        )
    # A base whose weights come from elsewhere (model.init_from, not a module hyperparameter) cannot be rebuilt from
    # the config: its checkpoints keep the frozen base too.
    return {"peft": {**peft_cfg, "base_seed": int(cfg.seed), "keep_base": bool(model_cfg.get("init_from"))}}
