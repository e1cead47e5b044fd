"""Parameter groups (no decay on biases/norms, layer-wise lr decay, head lr) and step-wise schedulers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import get_class
from torch import nn

from lmlab.config.arglists import OPTIMIZER_GROUP_KEYS as GROUP_KEYS  # not optimizer arguments
from lmlab.errors import LmlabError
from lmlab.optim.schedulers import build_scheduler


def find_layers(base_model: nn.Module) -> tuple[str, int]:
    """Name and size of the transformer block list (encoder.layer, transformer.layer, h, ...)."""
    config = getattr(base_model, "config", None)
    wanted = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    for name, module in base_model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == wanted:
            return name, len(module)
    raise LmlabError(
        f"Could not find the {wanted} transformer layers of {type(base_model).__name__}; "
        f"layer-wise lr decay and freeze_layers need them."
    )


def layer_id(param_name: str, layers_prefix: str, num_layers: int) -> int:
    """0 = embeddings, 1..L = transformer blocks, L = other backbone parts above the blocks."""
    match = re.match(rf"{re.escape(layers_prefix)}\.(\d+)\.", param_name)
    if match:
        return int(match.group(1)) + 1
    return 0 if "embed" in param_name or param_name.startswith(("wte", "wpe")) else num_layers


def param_groups(
    backbone: nn.Module,
    head: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    layerwise_lr_decay: float | None = None,
    head_lr: float | None = None,
) -> list[dict[str, Any]]:
    """Groups keyed by (lr, decay): 1-D tensors (biases, LayerNorm) get no weight decay."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()

    def add(param: nn.Parameter, group_lr: float) -> None:
        # Tied weights (an LM head sharing the input embedding) are one tensor: optimize it once, as a backbone
        # parameter (torch would otherwise update a parameter listed twice twice per step).
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            decay = 0.0 if param.ndim < 2 else weight_decay
            groups.setdefault((group_lr, decay), []).append(param)

    if layerwise_lr_decay is not None:
        prefix, num_layers = find_layers(backbone)
    for name, param in backbone.named_parameters():
        scale = 1.0
        if layerwise_lr_decay is not None:
            scale = layerwise_lr_decay ** (num_layers + 1 - layer_id(name, prefix, num_layers))
        add(param, lr * scale)
    for param in head.parameters():
        add(param, head_lr if head_lr is not None else lr)
    return [{"params": params, "lr": group_lr, "weight_decay": decay} for (group_lr, decay), params in groups.items()]


def build_optimizer(backbone: nn.Module, head: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Instantiate `cfg['_target_']` with the parameter groups; other keys are the optimizer's arguments."""
    args = {k: v for k, v in cfg.items() if k not in GROUP_KEYS and k != "_target_"}
    groups = param_groups(
        backbone,
        head,
        lr=args["lr"],
        weight_decay=args.get("weight_decay", 0.0),
        layerwise_lr_decay=cfg.get("layerwise_lr_decay"),
        head_lr=cfg.get("head_lr"),
    )
    if "betas" in args:
        args["betas"] = tuple(args["betas"])
    return get_class(cfg["_target_"])(groups, **args)


def lightning_optimizers(
    backbone: nn.Module, head: nn.Module, optimizer: Mapping[str, Any], scheduler: Mapping[str, Any], total_steps: int
) -> Any:
    """What a LightningModule's `configure_optimizers` returns: the optimizer, with its step-wise scheduler."""
    built = build_optimizer(backbone, head, optimizer)
    schedule = build_scheduler(built, scheduler, total_steps)
    return built if schedule is None else {"optimizer": built, "lr_scheduler": schedule}
