"""Parameter groups and schedules: the parts of the optimizer setup researchers compare."""

from __future__ import annotations

import pytest
import torch
import transformers

from lmlab.optim import build_optimizer, build_scheduler, find_layers, layer_id, param_groups, warmup_steps


@pytest.fixture(scope="module")
def bert() -> transformers.BertForSequenceClassification:
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32, num_labels=3
    )
    return transformers.BertForSequenceClassification(config)


def head_of(model: torch.nn.Module) -> torch.nn.Module:
    return torch.nn.ModuleList(m for m in model.children() if m is not model.base_model)


def test_no_weight_decay_on_biases_and_layernorm(bert) -> None:
    groups = param_groups(bert.base_model, head_of(bert), lr=1e-3, weight_decay=0.1)
    by_param = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    for name, param in bert.named_parameters():
        expected = 0.0 if name.endswith("bias") or "LayerNorm" in name else 0.1
        assert by_param[id(param)] == expected, name
    assert sum(len(g["params"]) for g in groups) == len(list(bert.parameters()))


def test_layerwise_lr_decay_and_head_lr(bert) -> None:
    prefix, count = find_layers(bert.base_model)
    assert (prefix, count) == ("encoder.layer", 3)
    assert layer_id("encoder.layer.2.output.dense.weight", prefix, count) == 3
    assert layer_id("embeddings.word_embeddings.weight", prefix, count) == 0
    groups = param_groups(bert.base_model, head_of(bert), lr=1.0, weight_decay=0.0, layerwise_lr_decay=0.5, head_lr=7.0)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(bert.named_parameters())
    assert lr_of[id(named["classifier.weight"])] == 7.0
    assert lr_of[id(named["bert.encoder.layer.2.output.dense.weight"])] == 0.5  # top layer: one decay step
    assert lr_of[id(named["bert.encoder.layer.0.output.dense.weight"])] == 0.125
    assert lr_of[id(named["bert.embeddings.word_embeddings.weight"])] == 0.0625


def test_build_optimizer_uses_the_target_and_its_arguments(bert) -> None:
    cfg = {
        "_target_": "torch.optim.SGD",
        "lr": 0.05,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 0.01,
        "layerwise_lr_decay": None,
        "head_lr": None,
    }
    optimizer = build_optimizer(bert.base_model, head_of(bert), cfg)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["nesterov"] is True and optimizer.defaults["momentum"] == 0.9


@pytest.mark.parametrize(("warmup", "total", "expected"), [(0.1, 100, 10), (0.06, 50, 3), (20, 100, 20), (0, 9, 0)])
def test_warmup_fraction_or_steps(warmup, total, expected) -> None:
    assert warmup_steps(warmup, total) == expected


@pytest.mark.parametrize("name", ["linear", "cosine", "constant_warmup"])
def test_schedules_warm_up_then_follow_their_shape(name: str) -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = build_scheduler(optimizer, {"name": name, "warmup": 0.2}, total_steps=10)
    assert scheduler["interval"] == "step"
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler["scheduler"].step()
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(0.5) and lrs[2] == pytest.approx(1.0)
    if name == "constant_warmup":
        assert lrs[-1] == pytest.approx(1.0)
    else:
        assert lrs[-1] < 0.2 and all(b <= a for a, b in zip(lrs[2:], lrs[3:]))


def test_plateau_and_none() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert build_scheduler(optimizer, {"name": "none"}, total_steps=10) is None
    plateau = build_scheduler(optimizer, {"name": "plateau", "monitor": "val/loss", "patience": 0}, 10)
    assert plateau["interval"] == "epoch" and plateau["monitor"] == "val/loss"
