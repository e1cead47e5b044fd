"""Optimizers, their parameter groups and learning-rate schedules."""

from lmlab.optim.muon import MuonWithAdamW
from lmlab.optim.optimizers import (
    GROUP_KEYS,
    build_optimizer,
    find_layers,
    layer_id,
    lightning_optimizers,
    param_groups,
)
from lmlab.optim.schedulers import build_scheduler, warmup_steps

__all__ = [
    "GROUP_KEYS",
    "MuonWithAdamW",
    "build_optimizer",
    "build_scheduler",
    "find_layers",
    "layer_id",
    "lightning_optimizers",
    "param_groups",
    "warmup_steps",
]
