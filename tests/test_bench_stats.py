"""The statistics `make bench` judges its targets on (benchmarks/run.py): per-round ratios, their geometric mean
and 95 % CI, and which comparisons carry a target at which max_length."""

from __future__ import annotations

import math

import pytest

from tests.conftest import load_benchmark

bench = load_benchmark("run")


def _runs(pairs: list[tuple[float, float]], max_length: int = 128) -> list[dict]:
    runs = []
    for r, (num, den) in enumerate(pairs):
        for variant, sps in (("lmlab_fixed", num), ("raw_fixed", den)):
            runs.append(
                {
                    "variant": variant,
                    "round": r,
                    "samples_per_sec": sps,
                    "tokens_per_sec": sps * 100,
                    "pad_fraction": 0.0,
                    "steps": 20,
                    "max_length": max_length,
                }
            )
    return runs


def test_geomean_ci_matches_a_t_interval_on_log_ratios() -> None:
    gm, low, high = bench.geomean_ci([0.9, 1.0, 1.1, 1.05])
    logs = [math.log(x) for x in (0.9, 1.0, 1.1, 1.05)]
    mean = sum(logs) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 3)
    assert gm == pytest.approx(math.exp(mean))
    assert low == pytest.approx(math.exp(mean - 3.182446 * sd / 2), rel=1e-5)  # t(0.975, 3 d.o.f.)
    assert high == pytest.approx(math.exp(mean + 3.182446 * sd / 2), rel=1e-5)
    gm1, low1, high1 = bench.geomean_ci([1.2])
    assert gm1 == pytest.approx(1.2) and math.isnan(low1) and math.isnan(high1)


def test_per_round_ratios_pair_runs_of_the_same_round_and_skip_failures() -> None:
    runs = _runs([(2.0, 1.0), (3.0, 4.0), (1.0, 1.0)])
    runs[-1]["error"] = "exit 1"  # round 2's raw run failed: no ratio for round 2
    assert bench.per_round_ratios(runs, "lmlab_fixed", "raw_fixed") == [2.0, 0.75]


def test_verdict_is_judged_on_the_geometric_mean_and_reports_the_interval() -> None:
    table = bench.ratio_table(
        runs := _runs([(0.99, 1.0), (1.01, 1.0), (1.0, 1.0)]), bench.summarize(runs, ["lmlab_fixed", "raw_fixed"])
    )
    assert ">= 0.97: met (95% CI above it)" in table
    runs = _runs([(0.8, 1.0), (1.2, 1.0)])
    assert ">= 0.97: met (95% CI reaches below it)" in bench.ratio_table(
        runs, bench.summarize(runs, ["lmlab_fixed", "raw_fixed"])
    )
    runs = _runs([(0.9, 1.0), (0.95, 1.0)])
    assert ">= 0.97: NOT met" in bench.ratio_table(runs, bench.summarize(runs, ["lmlab_fixed", "raw_fixed"]))


@pytest.mark.parametrize(("max_length", "judged"), [(512, True), (256, False)])
def test_grouping_target_only_applies_at_512(max_length: int, judged: bool) -> None:
    runs = [
        {**r, "variant": {"lmlab_fixed": "lmlab_grouped", "raw_fixed": "hf_default"}[r["variant"]]}
        for r in _runs([(1.4, 1.0), (1.35, 1.0)], max_length)
    ]
    row = [
        line
        for line in bench.ratio_table(runs, bench.summarize(runs, ["lmlab_grouped", "hf_default"])).splitlines()
        if line.startswith("| lmlab_grouped / hf_default")
    ][0]
    assert (">= 1.3: met" in row) is judged
    assert row.endswith("| - |") is not judged
