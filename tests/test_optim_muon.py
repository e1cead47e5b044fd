"""optimizer=muon: Muon on the hidden matrices, AdamW on the rest, as one optimizer (grouping, a step, resume)."""

from __future__ import annotations

import copy
import io
import logging

import pytest
import torch
import transformers
from omegaconf import OmegaConf

from lmlab.errors import LmlabError
from lmlab.optim import build_optimizer, build_scheduler
from lmlab.optim.muon import MuonWithAdamW
from tests.conftest import ROOT

MUON = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "optimizer" / "muon.yaml"))


def llama(tied: bool = True) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=32,
        tie_word_embeddings=tied,
    )
    return transformers.LlamaForCausalLM(config)


def parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    head = torch.nn.ModuleList(m for m in model.children() if m is not model.base_model)
    return model.base_model, head


def muon_cfg(**overrides) -> dict:
    return {**MUON, **overrides}


def where(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, dict]:
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    return {name: group_of[id(p)] for name, p in model.named_parameters() if id(p) in group_of}


@pytest.mark.parametrize("tied", [True, False])
def test_muon_gets_the_hidden_matrices_and_adamw_the_rest(tied: bool, caplog) -> None:
    model = llama(tied)
    with caplog.at_level(logging.INFO, logger="lmlab.optim"):
        optimizer = build_optimizer(*parts(model), muon_cfg())
    assert isinstance(optimizer, MuonWithAdamW)
    groups = where(optimizer, model)
    muon = {n for n, g in groups.items() if g["use_muon"]}
    expected = {
        n
        for n, p in model.named_parameters()
        if p.ndim == 2 and "embed_tokens" not in n and "lm_head" not in n and "norm" not in n
    }
    assert muon == expected and len(muon) == 2 * 7  # q, k, v, o, gate, up, down per layer
    adamw = set(groups) - muon
    assert "model.embed_tokens.weight" in adamw and "model.norm.weight" in adamw
    assert ("lm_head.weight" in adamw) == (not tied)  # tied: the same tensor as the embedding, listed once
    # No tensor twice, every trainable tensor once.
    listed = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(listed) == len(set(listed)) == len({id(p) for p in model.parameters()})
    assert "Muon: 14 tensors (layers.*.self_attn.q_proj.weight" in caplog.text and "AdamW:" in caplog.text


def test_no_decay_groups_and_the_adamw_side_settings() -> None:
    model = llama(tied=False)
    cfg = muon_cfg(lr=0.02, weight_decay=0.1, adamw_lr=1e-3, adamw_weight_decay=0.05, head_lr=5e-4)
    groups = where(build_optimizer(*parts(model), cfg), model)
    assert groups["model.layers.0.mlp.up_proj.weight"]["lr"] == 0.02
    assert groups["model.layers.0.mlp.up_proj.weight"]["weight_decay"] == 0.1
    assert groups["model.layers.0.mlp.up_proj.weight"]["adjust_lr_fn"] == "match_rms_adamw"
    assert groups["model.embed_tokens.weight"]["lr"] == 1e-3
    assert groups["model.embed_tokens.weight"]["weight_decay"] == 0.05
    assert groups["model.embed_tokens.weight"]["betas"] == (0.9, 0.95)
    assert groups["model.layers.1.input_layernorm.weight"]["weight_decay"] == 0.0  # norms never decay
    assert groups["model.norm.weight"]["weight_decay"] == 0.0
    assert groups["lm_head.weight"]["lr"] == 5e-4 and not groups["lm_head.weight"]["use_muon"]
    # Defaults: the AdamW side takes the Muon side's lr and decay (ratio 1 with match_rms_adamw).
    same = where(build_optimizer(*parts(model), muon_cfg()), model)
    assert same["model.embed_tokens.weight"]["lr"] == same["model.layers.0.mlp.up_proj.weight"]["lr"] == MUON["lr"]


def test_layerwise_lr_decay_scales_both_sides() -> None:
    model = llama()
    groups = where(build_optimizer(*parts(model), muon_cfg(lr=1.0, adamw_lr=0.5, layerwise_lr_decay=0.5)), model)
    assert groups["model.layers.1.mlp.up_proj.weight"]["lr"] == 0.5  # top layer: one decay step
    assert groups["model.layers.0.mlp.up_proj.weight"]["lr"] == 0.25
    assert groups["model.layers.0.input_layernorm.weight"]["lr"] == 0.125  # AdamW side: 0.5 * 0.25
    assert groups["model.embed_tokens.weight"]["lr"] == 0.5 * 0.125


def test_only_trainable_tensors_and_a_refusal_without_hidden_matrices() -> None:
    model = llama()
    for name, param in model.named_parameters():
        param.requires_grad = "layers.1." in name or "embed" in name
    groups = where(build_optimizer(*parts(model), muon_cfg()), model)
    assert all("layers.1." in n or "embed" in n for n in groups) and len(groups) == 9 + 1
    for name, param in model.named_parameters():
        param.requires_grad = "embed" in name or "norm" in name
    with pytest.raises(LmlabError, match="no trainable 2-D hidden weight matrix"):
        build_optimizer(*parts(model), muon_cfg())


def loss_of(model: torch.nn.Module, seed: int) -> torch.Tensor:
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(seed))
    return model(input_ids=ids, labels=ids).loss


def test_one_step_changes_every_trainable_tensor_and_nothing_frozen() -> None:
    model = llama()
    model.model.layers[0].mlp.up_proj.weight.requires_grad = False
    before = copy.deepcopy(model.state_dict())
    optimizer = build_optimizer(*parts(model), muon_cfg())
    loss_of(model, 0).backward()
    optimizer.step()
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == param.requires_grad, name
    # The Muon side did a Muon update: the momentum buffer is Muon's state, AdamW's tensors have exp_avg_sq.
    up = model.model.layers[1].mlp.up_proj.weight
    assert set(optimizer.state[up]) == {"momentum_buffer"}
    assert {"exp_avg", "exp_avg_sq", "step"} <= set(optimizer.state[model.model.embed_tokens.weight])


def test_the_scheduler_and_clipping_see_every_group() -> None:
    model = llama()
    optimizer = build_optimizer(*parts(model), muon_cfg(lr=1.0, adamw_lr=0.1))
    schedule = build_scheduler(optimizer, {"name": "linear", "warmup": 0.5}, total_steps=4)["scheduler"]
    loss_of(model, 0).backward()
    optimizer.step()
    schedule.step()
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([0.05, 0.5])


def train_steps(model, optimizer, seeds) -> None:
    for seed in seeds:
        optimizer.zero_grad()
        loss_of(model, seed).backward()
        optimizer.step()


def test_state_dict_round_trip_resumes_bitwise() -> None:
    straight = llama()
    optimizer = build_optimizer(*parts(straight), muon_cfg())
    train_steps(straight, optimizer, [0, 1])
    saved_model, buffer = copy.deepcopy(straight.state_dict()), io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    train_steps(straight, optimizer, [2, 3])

    resumed = llama()
    resumed.load_state_dict(saved_model)
    optimizer = build_optimizer(*parts(resumed), muon_cfg())
    buffer.seek(0)
    optimizer.load_state_dict(torch.load(buffer))
    train_steps(resumed, optimizer, [2, 3])
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_fsdp_flat_shards_are_refused() -> None:
    class FlatParameter(torch.nn.Parameter):  # what FSDP hands the optimizer (by name: torch's class is internal)
        pass

    groups = [{"params": [FlatParameter(torch.zeros(4, 4))], "use_muon": True}]
    with pytest.raises(LmlabError, match="FSDP flattens them"):
        MuonWithAdamW(groups)
