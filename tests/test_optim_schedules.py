"""scheduler=wsd (warmup -> stable -> decay) and cosine's min_lr_ratio, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.optim import build_scheduler


def lr_curve(cfg: dict, total: int, lr: float = 2.0) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = build_scheduler(optimizer, cfg, total_steps=total)
    assert scheduler["interval"] == "step" and scheduler["frequency"] == 1
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler["scheduler"].step()
    return lrs


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.1])
def test_wsd_curve_equals_a_hand_computation(shape: str, min_lr_ratio: float) -> None:
    # 20 steps: warmup 0.1 -> 2 steps; decay 0.25 -> the last 5 steps (15..19); stable in between.
    cfg = {"name": "wsd", "warmup": 0.1, "decay": 0.25, "decay_shape": shape, "min_lr_ratio": min_lr_ratio}
    decayed = {
        "linear": lambda p: 1 - p,
        "cosine": lambda p: (1 + math.cos(math.pi * p)) / 2,
        "1-sqrt": lambda p: 1 - math.sqrt(p),
    }[shape]
    expected = [2.0 * s / 2 for s in range(2)] + [2.0] * 13
    expected += [2.0 * (min_lr_ratio + (1 - min_lr_ratio) * decayed((s - 15) / 5)) for s in range(15, 20)]
    assert lr_curve(cfg, 20) == pytest.approx(expected, abs=1e-12)


def test_wsd_decay_one_decays_right_after_the_warmup_and_survives_a_state_dict_round_trip() -> None:
    lrs = lr_curve({"name": "wsd", "warmup": 2, "decay": 1.0, "decay_shape": "linear"}, 10, lr=1.0)
    assert lrs == pytest.approx([0.0, 0.5] + [1 - k / 8 for k in range(8)])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = {"name": "wsd", "warmup": 0.1, "decay": 0.5, "decay_shape": "cosine", "min_lr_ratio": 0.1}
    first = build_scheduler(optimizer, cfg, 20)["scheduler"]
    for _ in range(13):
        optimizer.step()
        first.step()
    again = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    resumed = build_scheduler(again, cfg, 20)["scheduler"]
    resumed.load_state_dict(first.state_dict())
    again.load_state_dict(optimizer.state_dict())
    for _ in range(5):
        optimizer.step(), again.step(), first.step(), resumed.step()
        assert again.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("decay", [0, 0.0, -0.1, 1.5, None])
def test_wsd_decay_outside_zero_one_is_refused(decay) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(LmlabError, match=r"scheduler.decay=.* must be a fraction of the run in \(0, 1\]"):
        build_scheduler(optimizer, {"name": "wsd", "warmup": 0.1, "decay": decay}, 10)


def test_bad_shape_and_min_lr_ratio_are_refused() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(LmlabError, match="decay_shape='sqrt' is unknown"):
        build_scheduler(optimizer, {"name": "wsd", "decay": 0.2, "decay_shape": "sqrt"}, 10)
    with pytest.raises(LmlabError, match=r"min_lr_ratio=1.5 must be in \[0, 1\]"):
        build_scheduler(optimizer, {"name": "cosine", "warmup": 0.1, "min_lr_ratio": 1.5}, 10)


@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.2])
def test_cosine_min_lr_ratio_equals_a_hand_computation(min_lr_ratio: float) -> None:
    # transformers' cosine: warmup step/W, then progress (s - W) / (T - W); the floor is min_lr_ratio.
    total, warmup = 12, 2
    expected = [s / warmup for s in range(warmup)]
    for s in range(warmup, total):
        cosine = (1 + math.cos(math.pi * (s - warmup) / (total - warmup))) / 2
        expected.append(min_lr_ratio + (1 - min_lr_ratio) * cosine)
    lrs = lr_curve({"name": "cosine", "warmup": warmup, "min_lr_ratio": min_lr_ratio}, total, lr=1.0)
    assert lrs == pytest.approx(expected, abs=1e-12)
