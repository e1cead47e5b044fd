"""optimizer=lion and optimizer=soap (and the other YAML optimizers): the shipped YAML builds, one step changes every
trainable tensor and nothing frozen, the groups' lr (what schedulers set) and weight decay are honoured, and the
optimizer state round-trips bitwise."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from omegaconf import OmegaConf

from lmlab.optim import build_optimizer
from tests.conftest import ROOT
from tests.test_optim_muon import llama, parts, train_steps, where

NAMES = ["lion", "soap", "schedulefree", "muon", "adamw"]


def cfg_of(name: str, **overrides) -> dict:
    return {**OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "optimizer" / f"{name}.yaml")), **overrides}


def built(name: str, model: torch.nn.Module, **overrides) -> torch.optim.Optimizer:
    optimizer = build_optimizer(*parts(model), cfg_of(name, **overrides))
    if hasattr(optimizer, "train"):  # Schedule-Free: steps in train mode
        optimizer.train()
    return optimizer


@pytest.mark.parametrize("name", NAMES)
def test_one_step_changes_the_trainable_tensors_only(name: str) -> None:
    model = llama(tied=False)
    model.model.layers[0].mlp.up_proj.weight.requires_grad = False
    before = copy.deepcopy(model.state_dict())
    optimizer = built(name, model, weight_decay=0.1)
    groups = where(optimizer, model)
    assert groups["model.norm.weight"]["weight_decay"] == 0.0
    assert groups["model.layers.1.mlp.up_proj.weight"]["weight_decay"] == 0.1
    assert "model.layers.0.mlp.up_proj.weight" not in groups
    # SOAP's first step only sets up its preconditioner (as in the paper's code): the update starts at step 2.
    train_steps(model, optimizer, [0, 1] if name == "soap" else [0])
    for param_name, param in model.named_parameters():
        assert (not torch.equal(param, before[param_name])) == param.requires_grad, param_name


@pytest.mark.parametrize("name", NAMES)
def test_a_group_at_lr_zero_does_not_move(name: str) -> None:
    """What a scheduler writes into param_groups is what the optimizer uses."""
    model = llama(tied=False)
    optimizer = built(name, model, weight_decay=0.1)
    frozen = where(optimizer, model)["model.norm.weight"]  # the no-decay group: norms (and biases)
    frozen["lr"] = 0.0
    before = copy.deepcopy(model.state_dict())
    train_steps(model, optimizer, [0, 1, 2])
    for param_name, param in model.named_parameters():
        in_frozen = any(param is p for p in frozen["params"])
        assert torch.equal(param, before[param_name]) == in_frozen, param_name


@pytest.mark.parametrize("name", ["lion", "soap", "schedulefree"])
def test_state_dict_round_trip_resumes_bitwise(name: str) -> None:
    straight = llama()
    optimizer = built(name, straight)
    train_steps(straight, optimizer, [0, 1, 2])  # SOAP refreshes its eigenbasis every 2 steps: cross one refresh
    saved_model, buffer = copy.deepcopy(straight.state_dict()), io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    train_steps(straight, optimizer, [3, 4])

    resumed = llama()
    resumed.load_state_dict(saved_model)
    optimizer = build_optimizer(*parts(resumed), cfg_of(name))
    buffer.seek(0)
    optimizer.load_state_dict(torch.load(buffer, weights_only=False))
    train_steps(resumed, optimizer, [3, 4])
    for (param_name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), param_name
