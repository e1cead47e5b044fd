"""`lmlab-report` on a compare sweep (compare.json): stage 2 only, each arm's choice and edge-of-grid warning,
tokens-to-target speedups with t-intervals and bounds, test/bpb by default; on synthetic sweeps, checked against
computations written out here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lmlab.report.cli import main
from lmlab.report.compare import tokens_to_target
from tests.test_report_v2 import row_of, write_job

META = {"meta/task": "causal_lm", "meta/monitor": "val/loss", "meta/mode": "min", "meta/score": "final"}
SEEDS = [101, 102, 103]
T975_DF2 = 4.302652729911275  # Student t 0.975 quantile, 2 degrees of freedom (tables)


def curve(job: Path, points: list[tuple[int, float]]) -> None:
    lines = ["step,tokens,flops,val/loss"] + [f"{i + 1},{t},{t * 10},{v!r}" for i, (t, v) in enumerate(points)]
    (job / "curves.csv").write_text("\n".join(lines) + "\n")


def linear(rate: float, start: float = 6.0, budget: int = 1000, every: int = 100) -> list[tuple[int, float]]:
    """val/loss falling by `rate` per token from `start`, evaluated every `every` tokens up to `budget`."""
    return [(t, start - rate * t) for t in range(every, budget + 1, every)]


def make_sweep(root: Path, rates: dict[str, list[float]], choice_index: dict[str, int]) -> Path:
    arms = {
        "adamw": (["optimizer=adamw"], ["0.001", "0.002", "0.004"]),
        "muon": (["optimizer=muon"], ["0.001", "0.002", "0.004"]),
    }
    record = {
        "optimized_metric": "best/val_loss",
        "mode": "min",
        "baseline": "adamw",
        "tune_seeds": [1],
        "confirm_seeds": SEEDS,
        "trials_per_arm": 3,
        "arms": {},
        "confirm": [],
        "stage": "done",
    }
    for arm, (overrides, lrs) in arms.items():
        trials = []
        for i, lr in enumerate(lrs):
            value = 5.0 - 0.1 * (i == choice_index[arm])
            job = root / "tune" / arm / f"optimizer.lr={lr},seed=1"
            write_job(job, [*overrides, f"optimizer.lr={lr}", "seed=1"], {"val/loss": value, "test/bpb": 9.0, **META})
            trials.append({"overrides": [f"optimizer.lr={lr}"], "values": [value], "mean": value, "failed": False,
                           "dirs": [str(job.relative_to(root))]})  # fmt: skip
        chosen = trials[choice_index[arm]]["overrides"]
        record["arms"][arm] = {"overrides": overrides, "space": {"optimizer.lr": lrs}, "trials": trials,
                               "choice": {"index": choice_index[arm], "overrides": chosen, "mean": 4.9}}  # fmt: skip
    for s, seed in enumerate(SEEDS):
        for arm in arms:
            points = linear(rates[arm][s])
            name = f"confirm/arm={arm},seed={seed}"
            overrides = [*arms[arm][0], *record["arms"][arm]["choice"]["overrides"]]
            final = points[-1][1]
            write_job(root / name, [*overrides, f"seed={seed}"],
                      {"val/loss": final, "test/loss": final, "test/bpb": final / math.log(2), **META})  # fmt: skip
            curve(root / name, points)
            record["confirm"].append({"arm": arm, "seed": seed, "overrides": overrides, "dir": name})
    (root / "compare.json").write_text(json.dumps(record))
    return root


def test_tokens_to_target_interpolates_linearly() -> None:
    rows = [(100, 5.0), (200, 4.0), (300, 3.0)]
    assert tokens_to_target(rows, 4.5) == pytest.approx(150.0)
    assert tokens_to_target(rows, 4.0) == 200.0  # reached exactly at an evaluation
    assert tokens_to_target(rows, 6.0) == 100.0  # already below at the first evaluation
    assert tokens_to_target(rows, 2.0) is None


def test_compare_report_uses_stage_2_and_computes_speedups(tmp_path: Path) -> None:
    # adamw (baseline) falls by 0.002, 0.0025, 0.003 per token; muon twice as fast on seed 101, 1.5x and 3x on the
    # others. Final baseline losses: 4.0, 3.5, 3.0 -> target 4.0 (the worst); adamw reaches it at 2.0 / rate.
    rates = {"adamw": [0.002, 0.0025, 0.003], "muon": [0.004, 0.00375, 0.009]}
    sweep = make_sweep(tmp_path / "cmp", rates, {"adamw": 1, "muon": 2})
    assert main([str(sweep), "--no-plots"]) == 0
    rep = json.loads((sweep / "report.json").read_text())
    # stage 2 only: 6 confirm jobs, not the 6 tuning jobs; paired by seed against the baseline arm's choice
    assert rep["n_jobs"] == 6 and rep["metric"] == "test/bpb"
    muon = row_of(rep, "optimizer=muon optimizer.lr=0.004")
    assert muon["n"] == 3 and muon["test"] == "paired_t"
    c = rep["compare"]
    assert c["target"] == pytest.approx(4.0)
    # independent: T = (6 - 4) / rate (the curves are linear, so interpolation is exact); ratio = rate_muon/rate_adamw
    for arm in ("adamw", "muon"):
        got = c["arms"][arm]["tokens_to_target"]
        for s, seed in enumerate(SEEDS):
            assert got[str(seed)] == pytest.approx(2.0 / rates[arm][s])
    logs = [math.log(rates["muon"][s] / rates["adamw"][s]) for s in range(3)]  # log 2, log 1.5, log 3
    mean = sum(logs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 2)
    speed = c["arms"]["muon"]["speedup"]
    assert speed["kind"] == "estimate" and speed["speedup"] == pytest.approx(math.exp(mean))  # (2*1.5*3)^(1/3)
    assert speed["speedup"] == pytest.approx(9 ** (1 / 3))
    assert speed["ci95_low"] == pytest.approx(math.exp(mean - T975_DF2 * sd / math.sqrt(3)))
    assert speed["ci95_high"] == pytest.approx(math.exp(mean + T975_DF2 * sd / math.sqrt(3)))
    # choices and edge-of-grid: muon's lr is the highest of its grid, adamw's in the middle
    assert c["arms"]["muon"]["choice"] == ["optimizer.lr=0.004"] and c["arms"]["adamw"]["edge_warning"] is None
    assert "arm muon: the choice sits at the edge of its grid (optimizer.lr=0.004 is the highest" in " ".join(
        rep["warnings"]
    )
    md = (sweep / "report.md").read_text()
    assert "the comparison above uses stage 2 only" in md and "extend the grid" in md


def test_an_arm_that_never_reaches_the_target_is_a_bound(tmp_path: Path) -> None:
    # muon's seed 102 ends above the target 4.0 (6 - 0.0015 x 1000 = 4.5): "> budget", speedup a bound, no CI
    rates = {"adamw": [0.002, 0.0025, 0.003], "muon": [0.004, 0.0015, 0.009]}
    sweep = make_sweep(tmp_path / "cmp", rates, {"adamw": 1, "muon": 1})
    assert main([str(sweep), "--no-plots"]) == 0
    c = json.loads((sweep / "report.json").read_text())["compare"]
    assert c["arms"]["muon"]["tokens_to_target"]["102"] is None
    speed = c["arms"]["muon"]["speedup"]
    assert speed["kind"] == "upper_bound" and "ci95_low" not in speed
    # the budget (1000 tokens) stands in for T on seed 102: an upper bound on the true geometric mean
    expected = (2.0 * ((2.0 / 0.0025) / 1000) * 3.0) ** (1 / 3)
    assert speed["speedup"] == pytest.approx(expected)
    assert "≤" in (sweep / "report.md").read_text() and "> budget" in (sweep / "report.md").read_text()


def test_target_option_and_unfinished_stage_1(tmp_path: Path) -> None:
    rates = {"adamw": [0.002, 0.0025, 0.003], "muon": [0.004, 0.00375, 0.009]}
    sweep = make_sweep(tmp_path / "cmp", rates, {"adamw": 1, "muon": 1})
    assert main([str(sweep), "--no-plots", "--target", "5.0"]) == 0
    c = json.loads((sweep / "report.json").read_text())["compare"]
    assert c["target"] == 5.0 and c["arms"]["adamw"]["tokens_to_target"]["101"] == pytest.approx(500.0)
    record = json.loads((sweep / "compare.json").read_text())
    del record["confirm"]
    record["error"] = "every tuning trial of arm(s) ['muon'] failed"
    (sweep / "compare.json").write_text(json.dumps(record))
    assert main([str(sweep), "--no-plots"]) == 2
