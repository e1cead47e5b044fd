"""Learning-rate schedules: warmup and the scheduler config group."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from lmlab.errors import LmlabError


def warmup_steps(warmup: float | int, total_steps: int) -> int:
    """A warmup below 1 is a fraction of the total optimizer steps; 1 or more is a step count."""
    return math.ceil(warmup * total_steps) if warmup < 1 else int(warmup)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], total_steps: int
) -> dict[str, Any] | None:
    """The Lightning lr_scheduler dict: stepped every optimizer step (plateau: every validation)."""
    name = cfg.get("name", "none")
    if name == "none":
        return None
    if name == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=cfg.get("mode", "min"), factor=cfg.get("factor", 0.5), patience=cfg.get("patience", 1)
        )
        return {"scheduler": scheduler, "interval": "epoch", "monitor": cfg.get("monitor", "val/loss")}
    from transformers import get_scheduler

    hf_names = {"linear": "linear", "cosine": "cosine", "constant_warmup": "constant_with_warmup"}
    if name not in hf_names:
        raise LmlabError(f"scheduler.name={name!r} is unknown; use one of {['none', 'plateau', *hf_names]}.")
    warmup = warmup_steps(cfg.get("warmup", 0), total_steps)
    if cfg.get("warmup", 0) >= 1 and warmup >= total_steps:
        # The lr would still be climbing when the run ends: the configured peak lr is never used.
        raise LmlabError(
            f"scheduler.warmup={cfg.get('warmup')} is {warmup} warmup steps, but the whole run has "
            f"{total_steps} optimizer steps: the lr never reaches optimizer.lr. Use a fraction "
            f"(e.g. scheduler.warmup=0.1) or fewer than {total_steps} steps, or train longer."
        )
    scheduler = get_scheduler(hf_names[name], optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}
