"""Parameter groups (no decay on biases/norms, layer-wise lr decay, head lr) and step-wise schedulers."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import get_class
from torch import nn

from lmlab.config.arglists import OPTIMIZER_GROUP_KEYS as GROUP_KEYS  # not optimizer arguments
from lmlab.errors import LmlabError
from lmlab.optim.muon import MuonWithAdamW, embedding_params, is_hidden_matrix, summarize
from lmlab.optim.schedulers import build_scheduler

log = logging.getLogger("lmlab.optim")


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
    muon: bool = False,
    adamw_lr: float | None = None,
    adamw_weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Groups keyed by (lr, decay): 1-D tensors (biases, LayerNorm) get no weight decay.

    muon=True splits them once more (key `use_muon`): the backbone's trainable 2-D non-embedding weights go to Muon
    with `lr`/`weight_decay`; embeddings, the head, norms and biases to AdamW with `adamw_lr`/`adamw_weight_decay`
    (None: the Muon side's value). Layer-wise lr decay scales both sides; `head_lr` replaces the head's AdamW lr."""
    groups: dict[tuple[float, float, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    names: dict[bool, list[str]] = {True: [], False: []}
    embeddings = embedding_params(backbone)
    side_lr = {True: lr, False: lr if adamw_lr is None else adamw_lr}
    side_decay = {True: weight_decay, False: weight_decay if adamw_weight_decay is None else adamw_weight_decay}

    def add(name: str, param: nn.Parameter, scale: float, group_lr: float | None, in_backbone: bool) -> None:
        # Tied weights (an LM head sharing the input embedding) are one tensor: optimize it once, as a backbone
        # parameter (torch would otherwise update a parameter listed twice twice per step).
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            use_muon = muon and in_backbone and is_hidden_matrix(param, embeddings)
            decay = 0.0 if param.ndim < 2 else side_decay[use_muon]
            group_lr = side_lr[use_muon] * scale if group_lr is None else group_lr
            groups.setdefault((group_lr, decay, use_muon), []).append(param)
            names[use_muon].append(name)

    if layerwise_lr_decay is not None:
        prefix, num_layers = find_layers(backbone)
    for name, param in backbone.named_parameters():
        scale = 1.0
        if layerwise_lr_decay is not None:
            scale = layerwise_lr_decay ** (num_layers + 1 - layer_id(name, prefix, num_layers))
        add(name, param, scale, None, True)
    for name, param in head.named_parameters():
        add(f"head.{name}", param, 1.0, head_lr, False)
    if muon:
        log.info(
            "Muon: %d tensors (%s); AdamW: %d tensors (%s)",
            len(names[True]),
            summarize(names[True]),
            len(names[False]),
            summarize(names[False]),
        )
        return [
            {"params": params, "lr": group_lr, "weight_decay": decay, "use_muon": use_muon}
            for (group_lr, decay, use_muon), params in groups.items()
        ]
    return [
        {"params": params, "lr": group_lr, "weight_decay": decay} for (group_lr, decay, _), params in groups.items()
    ]


def build_optimizer(backbone: nn.Module, head: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Instantiate `cfg['_target_']` with the parameter groups; other keys are the optimizer's arguments."""
    args = {k: v for k, v in cfg.items() if k not in GROUP_KEYS and k != "_target_"}
    cls = get_class(cfg["_target_"])
    muon = issubclass(cls, MuonWithAdamW)
    groups = param_groups(
        backbone,
        head,
        lr=args["lr"],
        weight_decay=args.get("weight_decay", 0.0),
        layerwise_lr_decay=cfg.get("layerwise_lr_decay"),
        head_lr=cfg.get("head_lr"),
        muon=muon,
        adamw_lr=args.get("adamw_lr") if muon else None,
        adamw_weight_decay=args.get("adamw_weight_decay") if muon else None,
    )
    log.info(
        "optimizer %s: lr %s, weight_decay %s (%d parameter groups, lr %s)",
        cfg["_target_"],
        args["lr"],
        args.get("weight_decay"),
        len(groups),
        ", ".join(f"{lr:g}" for lr in sorted({g["lr"] for g in groups})),
    )
    for key in ("betas", "adamw_betas", "ns_coefficients"):
        if args.get(key) is not None:
            args[key] = tuple(args[key])
    return cls(groups, **args)


# Schedules a Schedule-Free optimizer may run under: its averaging replaces the decay, warmup is fine.
SCHEDULE_FREE_SCHEDULES = ("none", "constant_warmup")


def check_schedule_free(optimizer: Mapping[str, Any], scheduler: Mapping[str, Any]) -> None:
    """Refuse a decaying lr schedule with a Schedule-Free optimizer (one with train()/eval() modes)."""
    cls = get_class(optimizer["_target_"])
    name = scheduler.get("name", "none")
    if callable(getattr(cls, "eval", None)) and callable(getattr(cls, "train", None)):
        if name not in SCHEDULE_FREE_SCHEDULES:
            raise LmlabError(
                f"{cls.__module__}.{cls.__name__} (optimizer=schedulefree) is Schedule-Free: its iterate averaging "
                f"replaces the lr decay, and scheduler={name} would change the lr as well (the averaging weights "
                f"follow the lr). Use scheduler=constant_warmup (warmup, then a constant lr) or scheduler=none."
            )


def lightning_optimizers(
    backbone: nn.Module, head: nn.Module, optimizer: Mapping[str, Any], scheduler: Mapping[str, Any], total_steps: int
) -> Any:
    """What a LightningModule's `configure_optimizers` returns: the optimizer, with its step-wise scheduler."""
    check_schedule_free(optimizer, scheduler)
    built = build_optimizer(backbone, head, optimizer)
    schedule = build_scheduler(built, scheduler, total_steps)
    return built if schedule is None else {"optimizer": built, "lr_scheduler": schedule}
