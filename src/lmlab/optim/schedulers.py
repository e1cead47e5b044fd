"""Learning-rate schedules: warmup and the scheduler config group."""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial
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
    hf_names = {"linear": "linear", "cosine": "cosine", "constant_warmup": "constant_with_warmup"}
    if name not in (*hf_names, "wsd"):
        raise LmlabError(f"scheduler.name={name!r} is unknown; use one of {['none', 'plateau', *hf_names, 'wsd']}.")
    warmup = warmup_steps(cfg.get("warmup", 0), total_steps)
    if cfg.get("warmup", 0) >= 1 and warmup >= total_steps:
        # The lr would still be climbing when the run ends: the configured peak lr is never used.
        raise LmlabError(
            f"scheduler.warmup={cfg.get('warmup')} is {warmup} warmup steps, but the whole run has "
            f"{total_steps} optimizer steps: the lr never reaches optimizer.lr. Use a fraction "
            f"(e.g. scheduler.warmup=0.1) or fewer than {total_steps} steps, or train longer."
        )
    min_lr_ratio = float(cfg.get("min_lr_ratio", 0.0) or 0.0)
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise LmlabError(f"scheduler.min_lr_ratio={min_lr_ratio} must be in [0, 1] (a fraction of optimizer.lr).")
    if name == "wsd":
        scheduler = wsd_scheduler(optimizer, cfg, warmup, total_steps, min_lr_ratio)
    else:
        factor = partial(hf_factor, name, warmup=warmup, total=total_steps, min_lr_ratio=min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}


def hf_factor(name: str, step: int, *, warmup: int, total: int, min_lr_ratio: float = 0.0) -> float:
    """transformers' linear, constant_with_warmup and cosine (with min_lr_rate) lr multipliers, expression for
    expression (tests/test_optim_schedules.py compares them value for value). Written out here because importing
    transformers.optimization imports its Trainer utilities, accelerate and peft: ~0.5 s of every start-up."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    if name == "constant_warmup":
        return 1.0
    if name == "linear":
        return max(0.0, float(total - step) / float(max(1, total - warmup)))
    progress = float(step - warmup) / float(max(1, total - warmup))
    factor = 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress))
    return max(0, factor * (1 - min_lr_ratio) + min_lr_ratio)


WSD_SHAPES = ("linear", "cosine", "1-sqrt")


def wsd_factor(step: int, *, warmup: int, decay_start: int, decay_steps: int, shape: str, min_lr_ratio: float) -> float:
    """The lr multiplier of optimizer step `step` (0-based): linear warmup from 0, 1 while stable, then the decay
    shape from 1 down to min_lr_ratio over decay_steps (progress (step - decay_start) / decay_steps, as
    transformers' linear and cosine schedules count it: the last step's lr is one decay step above the floor)."""
    if step < warmup:
        return step / warmup
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / decay_steps)
    if shape == "linear":
        factor = 1.0 - progress
    elif shape == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:  # 1-sqrt (Hägele et al. 2024)
        factor = 1.0 - math.sqrt(progress)
    return min_lr_ratio + (1.0 - min_lr_ratio) * factor


def wsd_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], warmup: int, total_steps: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup -> stable -> decay over the last `decay` fraction of the run's optimizer steps, or over its last
    `decay_steps` steps when that is set (0: no decay in this run, the stable run of experiment=wsd_branches; a
    decay branch sets it to its own decay, so its decay starts exactly at the step it branched from)."""
    shape = cfg.get("decay_shape", "1-sqrt")
    if shape not in WSD_SHAPES:
        raise LmlabError(f"scheduler.decay_shape={shape!r} is unknown; use one of {list(WSD_SHAPES)}.")
    decay_steps = wsd_decay_steps(cfg, warmup, total_steps)
    factor = partial(
        wsd_factor,
        warmup=warmup,
        decay_start=total_steps - decay_steps,
        decay_steps=max(1, decay_steps),  # 0: decay_start is the run's end, the decay is never reached
        shape=shape,
        min_lr_ratio=min_lr_ratio,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def wsd_decay_steps(cfg: Mapping[str, Any], warmup: int, total_steps: int) -> int:
    """How many of the run's last optimizer steps decay: `scheduler.decay_steps` as given, else
    ceil(decay x total), at least 1 and at most the steps after the warmup."""
    steps = cfg.get("decay_steps")
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise LmlabError(
                f"scheduler.decay_steps={steps!r} must be a whole number of optimizer steps >= 0 (0: no decay in "
                f"this run), or null to use scheduler.decay (a fraction of the run)."
            )
        if steps > total_steps - warmup:
            raise LmlabError(
                f"scheduler.decay_steps={steps} is longer than the {total_steps - warmup} optimizer steps this run "
                f"has after its {warmup} warmup steps ({total_steps} in all): the decay would start before the "
                f"warmup ends. Give at most {total_steps - warmup}, or train longer."
            )
        return steps
    decay = cfg.get("decay", 0.2)
    if decay is None or not 0.0 < float(decay) <= 1.0:
        raise LmlabError(
            f"scheduler.decay={decay} must be a fraction of the run in (0, 1]: the last decay x optimizer steps "
            f"decay the lr (e.g. scheduler.decay=0.2; 1 = decay right after the warmup)."
        )
    return max(1, min(math.ceil(float(decay) * total_steps), total_steps - warmup))
