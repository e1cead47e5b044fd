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


@pytest.mark.parametrize(
    ("name", "min_lr_ratio"), [("linear", 0.0), ("constant_warmup", 0.0), ("cosine", 0.0), ("cosine", 0.2)]
)
def test_schedules_equal_transformers_value_for_value(name: str, min_lr_ratio: float) -> None:
    # lmlab writes these schedules out (issue 25: importing transformers.optimization pulls in accelerate and peft
    # at every start-up); they must stay transformers' own, bit for bit.
    from transformers import get_scheduler
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    total, warmup = 23, 4
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    if name == "cosine":
        theirs = get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total, min_lr_rate=min_lr_ratio)
    else:
        hf_name = {"linear": "linear", "constant_warmup": "constant_with_warmup"}[name]
        theirs = get_scheduler(hf_name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    expected = [theirs.lr_lambdas[0](step) for step in range(total + 2)]
    ours = lr_curve({"name": name, "warmup": warmup, "min_lr_ratio": min_lr_ratio}, total, lr=1.0)
    assert ours == expected[:total]  # exact: the same expressions


def test_building_a_schedule_imports_no_transformers_trainer_code() -> None:
    import subprocess
    import sys

    code = (
        "import sys, torch; from lmlab.optim import build_scheduler; "
        "o = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0); "
        "[build_scheduler(o, {'name': n, 'warmup': 2}, 10) for n in ('linear', 'cosine', 'constant_warmup')]; "
        "print(sorted(m for m in ('transformers.optimization', 'peft', 'accelerate') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
