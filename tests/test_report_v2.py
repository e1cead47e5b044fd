"""lmlab-report v2 (issue 12): each bug of the old report on a synthetic sweep, and every new statistic against
an independent computation (scipy, statsmodels, exact enumeration with fractions, brute force over subsets)."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import socket
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from lmlab.report import main
from lmlab.report import stats as S

META = {"meta/task": "classification", "meta/monitor": "val/f1_macro", "meta/mode": "max"}


def write_job(
    job: Path,
    overrides: list[str],
    metrics: dict | None,
    status: str | dict | None = "completed",
    manifest: dict | None = None,
) -> None:
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if status is not None:
        data = status if isinstance(status, dict) else {"status": status, "attempts": 1}
        (job / "status.json").write_text(json.dumps(data))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if manifest is not None:
        (job / "manifest.json").write_text(json.dumps(manifest))


def sweep_of(root: Path, groups: dict[str, dict[str, list]], meta: dict | None = META, **extra: str) -> Path:
    """groups: overrides string -> {"val": [...], "test": [...], "status": [...]} per seed (None: no metrics)."""
    i = 0
    for ov, g in groups.items():
        for seed, (v, t) in enumerate(zip(g["val"], g["test"], strict=True)):
            status = g.get("status", ["completed"] * len(g["val"]))[seed]
            metrics = None if v is None else {"val/f1_macro": v, "test/f1_macro": t, **(meta or {})}
            write_job(root / str(i), [*ov.split(), f"seed={seed}"], metrics, status)
            i += 1
    return root


def report(sweep: Path, *args: str) -> dict:
    assert main([str(sweep), "--no-plots", *args]) == 0
    return json.loads((sweep / "report.json").read_text())


def row_of(rep: dict, group: str) -> dict:
    return next(r for r in rep["groups"] if r["group"] == group)


# --- exact references -------------------------------------------------------------------------------------


def exact_paired_p(x: list[Fraction], y: list[Fraction]) -> float:
    d = [a - b for a, b in zip(x, y, strict=True)]
    obs = sum(d)
    null = [sum(s * v for s, v in zip(signs, d, strict=True)) for signs in itertools.product([1, -1], repeat=len(d))]
    ge = sum(v >= obs for v in null)
    le = sum(v <= obs for v in null)
    return min(1.0, 2 * min(ge, le) / len(null))


def exact_indep_p(x: list[Fraction], y: list[Fraction]) -> float:
    pooled = x + y
    obs = sum(x) / len(x) - sum(y) / len(y)
    null = []
    for idx in itertools.combinations(range(len(pooled)), len(x)):
        a = [pooled[i] for i in idx]
        b = [pooled[i] for i in range(len(pooled)) if i not in idx]
        null.append(sum(a) / len(a) - sum(b) / len(b))
    ge = sum(v >= obs for v in null)
    le = sum(v <= obs for v in null)
    return min(1.0, 2 * min(ge, le) / len(null))


# --- correctness: each of these was wrong on the old report ------------------------------------------------


def test_nan_selection_and_statistics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Old: max() with a NaN key kept group A (val [0.70, NaN, 0.71]) over B (0.91); NaN test values gave a blank
    # row with p_permutation = 0 and n counting the NaN seed.
    sweep = sweep_of(
        tmp_path / "s",
        {
            "optimizer.lr=1e-4": {"val": [0.70, float("nan"), 0.71], "test": [0.70, float("nan"), 0.72]},
            "optimizer.lr=3e-4": {"val": [0.91, 0.90, 0.92], "test": [0.90, 0.91, 0.93]},
        },
    )
    rep = report(sweep, "--baseline", "optimizer.lr=3e-4")
    assert rep["selection"]["group"] == "optimizer.lr=3e-4"
    a = row_of(rep, "optimizer.lr=1e-4")
    assert a["n"] == 2 and a["n_nan"] == 1
    assert a["mean"] == pytest.approx(0.71)
    # Paired on the two finite seeds 0 and 2; NaN seed 1 is dropped and named.
    x, y = np.array([0.70, 0.72]), np.array([0.90, 0.93])
    assert a["diff"] == pytest.approx(np.mean(x - y))
    assert a["p_paired_t"] == pytest.approx(stats.ttest_rel(x, y).pvalue)
    assert a["p_permutation"] == pytest.approx(0.5)  # exact: 2 of 4 sign flips are as extreme
    assert a["dropped_seeds"] == "1"
    err = capsys.readouterr().err
    assert "1 non-finite 'test/f1_macro' value(s) left out of every statistic" in err
    assert "non-finite 'val/f1_macro' value(s) left out of selection" in err


@pytest.mark.parametrize("paired", [True, False])
def test_permutation_p_with_tied_accuracies_is_exact(paired: bool) -> None:
    # Accuracies are k/212: ties are normal. The old scipy-on-floats p was wrong in 18/300 paired and 82/300
    # unpaired cases (by up to 0.25); here every case equals exact enumeration over fractions.
    rng = np.random.default_rng(5)
    wrong = 0
    for _ in range(60):
        kx = rng.integers(170, 176, 5)
        ky = rng.integers(170, 176, 5)
        fx, fy = [Fraction(int(k), 212) for k in kx], [Fraction(int(k), 212) for k in ky]
        x, y = kx / 212, ky / 212
        if paired:
            got, exact = S.permutation_p_paired(x - y)
            want = exact_paired_p(fx, fy)
        else:
            got, exact = S.permutation_p_independent(x, y)
            want = exact_indep_p(fx, fy)
        assert exact
        wrong += got != pytest.approx(want, abs=1e-12)
    assert wrong == 0
    # The issue's own case: a mean difference of exactly 0 has p = 1 (scipy on floats: 0.875).
    x = np.array([171, 172, 173]) / 212
    y = np.array([172, 171, 173]) / 212
    assert S.permutation_p_paired(x - y) == (1.0, True)


def _scipy_p_paired(d: np.ndarray, integers: bool = False) -> tuple[float, bool]:
    """The candidate replacement of S.permutation_p_paired (issue 21): scipy's sign-flip permutation_test of the sum,
    exact below the same MAX_EXACT, Monte Carlo with the same seed above; `integers` feeds it the _quantize grid."""
    exact = 2**d.size <= S.MAX_EXACT
    data = S._quantize(d)[0] if integers else d
    res = stats.permutation_test(
        (data,),
        lambda a, axis: np.sum(a, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=np.inf if exact else S.N_RESAMPLES,
        rng=S.RNG_SEED,
    )
    return float(res.pvalue), exact


def _scipy_p_independent(x: np.ndarray, y: np.ndarray, integers: bool = False) -> tuple[float, bool]:
    """The same for S.permutation_p_independent. On integers the statistic is sum(x): for fixed pooled data it is an
    increasing affine map of mean(x) - mean(y) (same p), and scipy then compares exactly (no tolerance)."""
    exact = math.comb(x.size + y.size, x.size) <= S.MAX_EXACT
    if integers:
        data, stat = tuple(S._quantize(x, y)), lambda a, b, axis: np.sum(a, axis=axis)
    else:
        data, stat = (x, y), lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis)
    res = stats.permutation_test(
        data, stat, vectorized=True, n_resamples=np.inf if exact else S.N_RESAMPLES, rng=S.RNG_SEED
    )
    return float(res.pvalue), exact


def test_scipy_permutation_test_agrees_without_ties() -> None:
    # Continuous values (no ties): scipy's exact permutation_test gives bitwise our p, on floats and on the grid.
    rng = np.random.default_rng(7)
    for n in (2, 3, 5, 8):
        for _ in range(10):
            d = rng.normal(size=n) * 10.0 ** rng.integers(-3, 3)
            assert S.permutation_p_paired(d) == _scipy_p_paired(d) == _scipy_p_paired(d, integers=True)
            x, y = rng.normal(size=n), rng.normal(loc=0.5, size=n + 1)
            assert S.permutation_p_independent(x, y) == _scipy_p_independent(x, y)
            assert S.permutation_p_independent(x, y) == _scipy_p_independent(x, y, integers=True)
        # Constant values tie with every assignment (or every same-sign one) either way too.
        for d in (np.zeros(n), np.full(n, 0.01)):
            assert S.permutation_p_paired(d) == _scipy_p_paired(d) == _scipy_p_paired(d, integers=True)
        x, y = np.full(n, 0.5), np.full(n + 1, 0.25)
        assert S.permutation_p_independent(x, y) == _scipy_p_independent(x, y)
        assert S.permutation_p_independent(x, y) == _scipy_p_independent(x, y, integers=True)


def test_scipy_permutation_test_differs_on_ties_and_monte_carlo() -> None:
    # Why permutation_p_paired/_independent stay hand-written (issue 21; the comment above them in stats.py).
    # 1. Floats: scipy's tolerance is 100 eps * |observed|; k/N sums equal up to float rounding stop tying.
    kx, ky = [170, 171, 171], [171, 170, 172]
    x, y = np.array(kx) / 212, np.array(ky) / 212
    want = exact_paired_p([Fraction(k, 212) for k in kx], [Fraction(k, 212) for k in ky])
    assert S.permutation_p_paired(x - y) == (want, True) == (1.0, True)
    assert _scipy_p_paired(x - y) == (0.75, True)
    kx, ky = [172, 174, 174], [170, 172, 172]
    x, y = np.array(kx) / 212, np.array(ky) / 212
    want = exact_indep_p([Fraction(k, 212) for k in kx], [Fraction(k, 212) for k in ky])
    assert S.permutation_p_independent(x, y) == pytest.approx((want, True), abs=1e-12)
    assert S.permutation_p_independent(x, y) == (0.3, True)
    assert _scipy_p_independent(x, y) == (0.1, True)
    # 2. The integer grid: rounding each value is not additive (round(2v) != 2 round(v)), so exact ties break.
    kd = [1, -1, -1, 0, 2]
    d = np.array(kd) / 155
    q = S._quantize(d)[0]
    assert q[4] != 2 * q[0]
    want = exact_paired_p([Fraction(k, 155) for k in kd], [Fraction(0)] * len(kd))
    assert S.permutation_p_paired(d) == (want, True) == (1.0, True)
    assert _scipy_p_paired(d, integers=True) == (0.875, True)
    kx, ky = [3, 3, 5], [4, 1, 5]
    x, y = np.array(kx) / 155, np.array(ky) / 155
    want = exact_indep_p([Fraction(k, 155) for k in kx], [Fraction(k, 155) for k in ky])
    assert S.permutation_p_independent(x, y) == pytest.approx((want, True), abs=1e-12)
    assert S.permutation_p_independent(x, y) == (1.0, True)
    assert _scipy_p_independent(x, y, integers=True) == pytest.approx((0.9, True), abs=1e-12)
    # 3. Monte Carlo: the same seed draws other assignments, so the reported p changes (both estimate one p).
    d = np.random.default_rng(0).normal(size=17)
    ours, theirs = S.permutation_p_paired(d), _scipy_p_paired(d)
    assert ours[1] is theirs[1] is False
    assert ours[0] != theirs[0] and abs(ours[0] - theirs[0]) < 0.03
    x, y = np.random.default_rng(0).normal(size=(2, 10))
    ours, theirs = S.permutation_p_independent(x, y), _scipy_p_independent(x, y)
    assert ours[1] is theirs[1] is False
    assert ours[0] != theirs[0] and abs(ours[0] - theirs[0]) < 0.03
    # 4. One value on a side (compare() tests it when one group has a single seed): scipy refuses.
    assert S.permutation_p_independent(np.array([0.5]), np.array([0.4, 0.6])) == (1.0, True)
    with pytest.raises(ValueError, match="two or more observations"):
        _scipy_p_independent(np.array([0.5]), np.array([0.4, 0.6]))


def test_constant_differences(tmp_path: Path) -> None:
    # baseline + 0.01 has a spread of ~1e-16 from float rounding: old p_t = 1e-58 (30 seeds: 0.0), while an
    # exactly constant difference gave NaN. Now both: t undefined, exact sign-flip p = 2/2^n.
    base = np.random.default_rng(0).uniform(0.01, 2, 30)  # across binades: + 0.01 rounds unevenly
    for n in (3, 30):
        b = base[:n]
        c = S.compare(b + 0.01, list(range(n)), b, list(range(n)))
        if n == 30:
            assert np.ptp((b + 0.01) - b) > 0  # really not constant in floats
        assert math.isnan(c.p_t) and c.test == "paired_t (constant)"
        assert c.p_permutation == 2 / 2**n and c.p_exact
        assert c.diff == pytest.approx(0.01)
        assert "t-test is undefined" in c.note
        same = S.compare(b, list(range(n)), b, list(range(n)))
        assert math.isnan(same.p_t) and same.p_permutation == 1.0
    # End to end: a near-identical group next to two others; Holm's family still counts it.
    groups = {
        "optimizer.lr=1e-4": {"val": [0.8, 0.81, 0.82], "test": list(base[:3])},
        "optimizer.lr=2e-4": {"val": [0.7, 0.71, 0.72], "test": list(base[:3] + 0.01)},
        "optimizer.lr=3e-4": {"val": [0.6, 0.61, 0.62], "test": list(base[:3] + [0.02, 0.05, 0.03])},
        "optimizer.lr=4e-4": {"val": [0.5, 0.51, 0.52], "test": list(base[:3] - [0.04, 0.01, 0.02])},
    }
    rep = report(sweep_of(tmp_path / "s", groups), "--baseline", "optimizer.lr=1e-4")
    const = row_of(rep, "optimizer.lr=2e-4")
    assert const["p_paired_t"] is None and const["p_permutation"] == 0.25 and const["p_holm"] is None
    from statsmodels.stats.multitest import multipletests

    ps = [row_of(rep, g)["p_paired_t"] for g in ("optimizer.lr=3e-4", "optimizer.lr=4e-4")]
    ref = multipletests([*ps, 1.0], method="holm")[1]  # the undefined p counts as 1: a family of 3
    assert [row_of(rep, g)["p_holm"] for g in ("optimizer.lr=3e-4", "optimizer.lr=4e-4")] == pytest.approx(ref[:2])
    assert "across all 3 comparisons" in (tmp_path / "s" / "report.md").read_text()


def test_selection_ties_failed_winner_and_states(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = sweep_of(
        tmp_path / "s",
        {
            "optimizer.lr=3e-4": {
                "val": [0.9, 0.8, None],
                "test": [0.9, 0.8, None],
                "status": ["completed", "completed", "failed"],
            },
            "optimizer.lr=1e-4": {"val": [0.85, 0.85, 0.85], "test": [0.8, 0.8, 0.8]},
            "optimizer.lr=1e-3": {
                "val": [0.1, None, None],
                "test": [0.1, None, None],
                "status": ["completed", "interrupted", "pruned"],
            },
        },
    )
    write_job(sweep / "9", ["optimizer.lr=1e-3", "seed=3"], None, "running")
    # A `running` job whose process is gone (this host, a pid that does not exist) is dead.
    write_job(
        sweep / "10",
        ["optimizer.lr=1e-3", "seed=4"],
        None,
        {
            "status": "running",
            "pid": 2**22 + 12345,
            "host": socket.gethostname(),
            "heartbeat": "2020-01-01T00:00:00+00:00",
        },
    )
    rep = report(sweep)
    sel = rep["selection"]
    # Tie: 3e-4 (mean of 0.9, 0.8 = 0.85) and 1e-4 (0.85): the first in value order (1e-4) is taken, and said.
    assert sel["tied"] == ["optimizer.lr=1e-4", "optimizer.lr=3e-4"] and sel["group"] == "optimizer.lr=1e-4"
    assert "tie: 2 groups" in sel["flags"][0] and "first in table order" in sel["flags"][0]
    assert rep["states"] == {"completed": 6, "dead": 1, "failed": 1, "interrupted": 1, "pruned": 1, "running": 1}
    assert rep["n_running"] == 1
    g = row_of(rep, "optimizer.lr=1e-3")
    assert g["n_running"] == 1 and g["states"] == "1 completed, 1 dead, 1 interrupted, 1 pruned, 1 running"
    err = capsys.readouterr().err
    assert "1 job(s) still running (9)" in err
    # A failed-seed group that wins is flagged.
    rep = report(sweep, "--select-mode", "max", "--select", "val/f1_macro", "--metric", "test/f1_macro")
    (sweep / "1" / "metrics.json").write_text(json.dumps({"val/f1_macro": 0.95, "test/f1_macro": 0.8, **META}))
    rep = report(sweep)
    assert rep["selection"]["group"] == "optimizer.lr=3e-4"
    assert any("did not finish (2 completed, 1 failed)" in f for f in rep["selection"]["flags"])


def test_baseline_matched_by_value_in_any_order(tmp_path: Path) -> None:
    # Hydra writes 0.0001 and 3e-05 into overrides.yaml; the README commands type 1e-4 and 3e-5.
    sweep = tmp_path / "s"
    i = 0
    for opt, lr in itertools.product(["adamw", "sgd"], ["0.0001", "3e-05", "0.001"]):
        for seed in range(2):
            write_job(
                sweep / str(i),
                [f"optimizer.lr={lr}", f"optimizer={opt}", f"seed={seed}"],
                {"val/f1_macro": 0.5 + i / 100, "test/f1_macro": 0.5 + i / 100, **META},
            )
            i += 1
    rep = report(sweep, "--baseline", "optimizer=adamw optimizer.lr=3e-5")
    assert rep["baseline"] == "optimizer.lr=3e-05 optimizer=adamw"
    rep = report(sweep, "--baseline", "optimizer.lr=3e-5 optimizer=adamw")  # any order
    assert rep["baseline"] == "optimizer.lr=3e-05 optimizer=adamw"
    # Sorted by value: lr numerically (3e-05 < 0.0001 < 0.001) within optimizer.
    assert [r["group"] for r in rep["groups"]][:3] == [
        "optimizer.lr=3e-05 optimizer=adamw",
        "optimizer.lr=3e-05 optimizer=sgd",
        "optimizer.lr=0.0001 optimizer=adamw",
    ]
    lr_only = tmp_path / "lr"
    for i, lr in enumerate(["0.0001", "3e-05", "0.0003"] * 2):
        write_job(
            lr_only / str(i),
            [f"optimizer.lr={lr}", f"seed={i // 3}"],
            {"val/f1_macro": 0.5 + i / 100, "test/f1_macro": 0.6 + i / 100, **META},
        )
    rep = report(lr_only, "--baseline", "optimizer.lr=1e-4")
    assert rep["baseline"] == "optimizer.lr=0.0001"
    assert [r["group"] for r in rep["groups"]] == ["optimizer.lr=3e-05", "optimizer.lr=0.0001", "optimizer.lr=0.0003"]


def test_trials_with_seeds_and_dapt_layout(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    # Optuna multi-seed trials: trial_<n>/seed=<s>/ (overrides carry the sampled values and the seed).
    for t, lr in enumerate([1e-4, 3e-4]):
        for s in range(3):
            write_job(
                sweep / f"trial_{t}" / f"seed={s}",
                [f"optimizer.lr={lr}", f"seed={s}"],
                {"val/f1_macro": 0.7 + t / 10 + s / 100, "test/f1_macro": 0.7 + t / 10, **META},
            )
    # Two trials that sampled the same value stay two groups.
    for s in range(3):
        write_job(
            sweep / "trial_2" / f"seed={s}",
            ["optimizer.lr=0.0001", f"seed={s}"],
            {"val/f1_macro": 0.5, "test/f1_macro": 0.5, **META},
        )
    # Stage-1 runs of experiment=dapt: not part of the stage-2 comparison.
    for s in range(2):
        write_job(sweep / "pretrain" / f"seed={s}", ["task=masked_lm", f"seed={s}"], {"val/loss": 1.0})
    rep = report(sweep)
    names = [r["group"] for r in rep["groups"]]
    assert names == ["trial_0 optimizer.lr=0.0001", "trial_2 optimizer.lr=0.0001", "optimizer.lr=0.0003"]
    assert all(r["n"] == 3 for r in rep["groups"]) and rep["n_jobs"] == 9
    assert rep["ignored_dirs"] == ["pretrain"]
    assert any("1 subdir(s) that hold runs but are not jobs" in n and "pretrain" in n for n in rep["notes"])

    # dapt stage 2: groups differ by model.init_from (a path vs null); the baseline is named by parsed value.
    dapt = tmp_path / "dapt"
    for i, (init, s) in enumerate(itertools.product(["null", "/runs/pretrain/seed=0/model"], range(3))):
        write_job(
            dapt / str(i),
            [f"model.init_from={init}", f"seed={s}"],
            {
                "val/f1_macro": 0.7 + (init != "null") * 0.05 + s / 100,
                "test/f1_macro": 0.7 + (init != "null") * (0.05 + s / 1000) + s / 1000,
                **META,
            },
        )
    for s in range(2):
        write_job(dapt / "pretrain" / f"seed={s}", ["task=masked_lm", f"seed={s}"], {"val/loss": 1.0})
    rep = report(dapt, "--baseline", "model.init_from=null")
    assert rep["baseline"] == "model.init_from=null" and rep["n_jobs"] == 6
    other = row_of(rep, "model.init_from=/runs/pretrain/seed=0/model")
    assert other["diff"] == pytest.approx(0.051) and other["test"] == "paired_t"


def test_language_model_direction(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "lm"
    meta = {"meta/task": "causal_lm", "meta/monitor": "val/loss", "meta/mode": "min"}
    for i, (lr, s) in enumerate(itertools.product(["1e-4", "3e-4"], range(3))):
        loss = 3.0 - (lr == "3e-4") * 0.2 + s / 100
        write_job(
            sweep / str(i),
            [f"optimizer.lr={lr}", f"seed={s}"],
            {"val/loss": loss, "test/loss": loss, "test/ppl": math.exp(loss), "test/bpb": loss / math.log(2), **meta},
        )
    rep = report(
        sweep,
        "--baseline",
        "optimizer.lr=1e-4",
        "--metric",
        "test/loss",
        "--metric",
        "test/ppl",
        "--metric",
        "test/bpb",
    )
    assert rep["selection"]["group"] == "optimizer.lr=3e-4" and rep["selection"]["select_mode"] == "min"
    assert rep["metric"] == "test/loss" and rep["metric_mode"] == "min"
    row = row_of(rep, "optimizer.lr=3e-4")
    assert row["p_improve"] == 1.0  # lower loss on every seed is an improvement
    for m in ("test/ppl", "test/bpb"):
        extra = next(r for r in rep["extra_metrics"][m] if r["group"] == "optimizer.lr=3e-4")
        assert extra["p_improve"] == 1.0 and extra["diff"] < 0
    assert "no meta/mode" not in capsys.readouterr().err


# --- new statistics against independent computations -------------------------------------------------------


def test_effect_sizes_with_cis() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(1.0, 1.0, 8), rng.normal(0.0, 1.0, 8)
    d = x - y
    dz = S.cohens_dz(d)
    assert dz.value == pytest.approx(d.mean() / d.std(ddof=1))
    # The CI's ends are where the noncentral t puts the observed t at 97.5% / 2.5%.
    t_obs = dz.value * math.sqrt(8)
    assert stats.nct.cdf(t_obs, 7, dz.ci_low * math.sqrt(8)) == pytest.approx(0.975, abs=1e-7)
    assert stats.nct.cdf(t_obs, 7, dz.ci_high * math.sqrt(8)) == pytest.approx(0.025, abs=1e-7)
    g = S.hedges_g(x, y)
    sp = math.sqrt((np.var(x, ddof=1) + np.var(y, ddof=1)) / 2)
    j_approx = 1 - 3 / (4 * 14 - 1)  # Hedges' approximation of J
    assert g.value == pytest.approx(j_approx * (x.mean() - y.mean()) / sp, rel=1e-3)
    assert g.ci_low < g.value < g.ci_high
    # Large samples: the CI approaches the normal-theory one, d ± 1.96 sqrt(2/n + d^2/(4n)).
    bx, by = rng.normal(0.5, 1, 4000), rng.normal(0, 1, 4000)
    big = S.hedges_g(bx, by)
    half = 1.96 * math.sqrt(2 / 4000 + big.value**2 / 16000)
    assert (big.ci_low, big.ci_high) == pytest.approx((big.value - half, big.value + half), abs=2e-3)


def test_probability_of_improvement() -> None:
    x = np.array([0.80, 0.82, 0.81, 0.80])
    y = np.array([0.79, 0.82, 0.83, 0.78])
    p = S.probability_of_improvement(x, y, paired=True, higher_is_better=True)
    assert p.value == pytest.approx((2 + 0.5) / 4)  # better on seeds 0, 3; tied on 1
    assert 0 <= p.ci_low <= p.value <= p.ci_high <= 1
    u = stats.mannwhitneyu(x, y, alternative="two-sided").statistic
    q = S.probability_of_improvement(x, y, paired=False, higher_is_better=True)
    assert q.value == pytest.approx(u / 16)
    low = S.probability_of_improvement(x, y, paired=False, higher_is_better=False)
    assert low.value == pytest.approx(1 - u / 16)


def test_power_against_statsmodels(tmp_path: Path) -> None:
    from statsmodels.stats.power import TTestIndPower, TTestPower

    for n, alpha in ((3, 0.05), (5, 0.05 / 3), (10, 0.01)):
        assert S.min_detectable_effect(n, alpha, True) == pytest.approx(
            TTestPower().solve_power(nobs=n, alpha=alpha, power=0.8), rel=1e-6
        )
        assert S.min_detectable_effect(n, alpha, False) == pytest.approx(
            TTestIndPower().solve_power(nobs1=n, alpha=alpha, power=0.8), rel=1e-6
        )
    for e, alpha in ((0.5, 0.05), (1.2, 0.05 / 4), (3.0, 0.01)):
        for paired, solver in ((True, TTestPower()), (False, TTestIndPower())):
            assert S.seeds_needed(e, alpha, paired) == math.ceil(
                solver.solve_power(effect_size=e, alpha=alpha, power=0.8)
            )
    # The 3-seed report says what it can detect: d_z >= 3.26 at alpha = 0.05 with one comparison.
    sweep = sweep_of(
        tmp_path / "s",
        {
            "optimizer.lr=1e-4": {"val": [0.8, 0.81, 0.82], "test": [0.80, 0.82, 0.81]},
            "optimizer.lr=3e-4": {"val": [0.7, 0.71, 0.72], "test": [0.81, 0.84, 0.82]},
        },
    )
    assert main([str(sweep), "--no-plots", "--baseline", "optimizer.lr=1e-4"]) == 0
    rep = json.loads((sweep / "report.json").read_text())
    assert rep["power"]["mde_effect"] == pytest.approx(3.264, abs=1e-3) and rep["power"]["m"] == 1
    md = (sweep / "report.md").read_text()
    assert (
        "With 3 seeds (paired) and 1 comparison(s), this design detects at 80% power only standardized "
        "effects of d_z ≥ 3.264" in md
    )
    row = row_of(rep, "optimizer.lr=3e-4")
    d = np.array([0.01, 0.02, 0.01])
    assert row["effect"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert row["mde"] == pytest.approx(3.264043 * d.std(ddof=1), rel=1e-5)
    assert row["seeds_needed"] == math.ceil(TTestPower().solve_power(effect_size=row["effect"], alpha=0.05, power=0.8))


def test_unbiased_expected_max_equals_brute_force() -> None:
    scores = np.array([0.3, 0.9, 0.5, 0.5, 0.7, 0.1])
    mean, std = S.expected_max_unbiased(scores)
    for n in range(1, 7):
        maxima = [max(c) for c in itertools.combinations(scores, n)]
        assert mean[n - 1] == pytest.approx(np.mean(maxima), abs=1e-12)
        assert std[n - 1] == pytest.approx(np.std(maxima), abs=1e-12)
    assert mean[-1] == scores.max()


def test_two_level_bootstrap_brute_force() -> None:
    # 2 seed pairs x 4 examples: all 2^2 seed draws x 4^4 example draws are equally likely; the Monte Carlo
    # bootstrap's mean and std must match that exact distribution.
    y = np.array([0, 1, 1, 0])
    a = [np.array([0, 1, 0, 0]), np.array([0, 1, 1, 1])]
    b = [np.array([1, 1, 0, 0]), np.array([0, 0, 1, 0])]

    def acc(pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return (pred[idx] == y[idx]).mean(axis=-1)

    exact = []
    for seeds in itertools.product(range(2), repeat=2):
        for ex in itertools.product(range(4), repeat=4):
            idx = np.array(ex)[None, :]
            exact.append(np.mean([acc(a[s], idx)[0] - acc(b[s], idx)[0] for s in seeds]))
    exact = np.array(exact)
    res = S.two_level_bootstrap(acc, a, b, 4, n_resamples=20000)
    assert res.diff == pytest.approx(
        np.mean([acc(p, np.arange(4)[None])[0] - acc(q, np.arange(4)[None])[0] for p, q in zip(a, b, strict=True)])
    )
    assert res.std == pytest.approx(exact.std(), rel=0.03)
    lo, hi = np.percentile(exact, [2.5, 97.5])
    assert res.ci_low == pytest.approx(lo, abs=0.07) and res.ci_high == pytest.approx(hi, abs=0.07)
    # The example-only bootstrap (one seed pair resampled on examples) is narrower: it misses seed variance.
    only_ex = np.array(
        [
            np.mean([acc(a[s], np.array(ex)[None])[0] - acc(b[s], np.array(ex)[None])[0] for s in range(2)])
            for ex in itertools.product(range(4), repeat=4)
        ]
    )
    assert only_ex.std() < exact.std()


def test_several_sweep_dirs_and_learning_curves(tmp_path: Path) -> None:
    a = sweep_of(tmp_path / "a", {"optimizer.lr=1e-4": {"val": [0.8, 0.81], "test": [0.8, 0.81]}})
    b = sweep_of(
        tmp_path / "b",
        {
            "optimizer.lr=3e-4": {"val": [0.7, 0.71], "test": [0.7, 0.72]},
            "optimizer.lr=1e-3": {"val": [0.6, 0.61], "test": [0.6, 0.62]},
        },
    )
    # Budget axis in hours: manifest start/end (30 min per run, 2 seeds = 1 h per configuration).
    for job in [*a.iterdir(), *b.iterdir()]:
        (job / "manifest.json").write_text(
            json.dumps({"start_time": "2026-01-01T10:00:00+00:00", "end_time": "2026-01-01T10:30:00+00:00"})
        )
    for job in (a / "0", a / "1"):
        (job / "csv").mkdir()
        pd.DataFrame({"epoch": [0, 0, 1, 1], "step": [1, 2, 3, 4], "val/f1_macro": [np.nan, 0.6, np.nan, 0.8]}).to_csv(
            job / "csv" / "metrics.csv", index=False
        )
    out = tmp_path / "out"
    assert main([str(a), str(b), "--out", str(out), "--baseline", "optimizer.lr=1e-4"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_jobs"] == 6
    assert [r["group"] for r in rep["groups"]] == ["optimizer.lr=1e-4", "optimizer.lr=3e-4", "optimizer.lr=1e-3"]
    em = rep["expected_max"]
    assert em["hours_per_config"] == pytest.approx(1.0) and em["runs_per_config"] == 2
    assert rep["curves"]["optimizer.lr=1e-4"]["mean"] == [0.6, 0.8]
    assert "report_learning_curves.png" in rep["plots"] and "report_forest.png" in rep["plots"]
    hp = rep["hparam"]  # the metric against lr, on a log axis
    assert hp["key"] == "optimizer.lr" and hp["log"] and sorted(p["x"] for p in hp["points"]) == [1e-4, 3e-4, 1e-3]
    assert "report_hparam.png" in rep["plots"]
    for p in rep["plots"]:
        assert (out / p).read_bytes()[:4] == b"\x89PNG"


# --- the HTML report in a real browser ---------------------------------------------------------------------


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextlib.contextmanager
def headless_chromium() -> Iterator[Any]:
    """A headless Chromium (selenium) that logs the page's console; skipped where it is not installed (not on CI)."""
    found = _chromium()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI: chromium + chromium-driver are missing; .ci/run installs them with apt-get")
        pytest.skip("chromium/chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(found[1]), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def loaded_images(driver: Any) -> list[int]:
    """The natural width of every <img> on the page (0: it did not load)."""
    from selenium.webdriver.common.by import By

    script = "return arguments[0].complete && arguments[0].naturalWidth"
    return [driver.execute_script(script, i) for i in driver.find_elements(By.TAG_NAME, "img")]


def test_html_report_in_chromium(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    sweep = sweep_of(
        tmp_path / "s",
        {
            "optimizer.lr=1e-4": {"val": [0.8, 0.81, 0.82], "test": [0.80, 0.82, 0.81]},
            "optimizer.lr=3e-4": {"val": [0.7, 0.71, 0.72], "test": [0.81, 0.84, 0.82]},
            "optimizer.lr=1e-3": {"val": [0.6, 0.61, 0.62], "test": [0.70, 0.74, 0.72]},
        },
    )
    assert main([str(sweep), "--baseline", "optimizer.lr=1e-4"]) == 0
    page = (sweep / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # nothing from the network
    assert page.count("data:image/png;base64,") == 4  # groups, forest, expected max, metric vs lr

    with headless_chromium() as driver:
        driver.get((sweep / "report.html").as_uri())
        assert driver.title.startswith("lmlab report")
        widths = loaded_images(driver)
        assert len(widths) == 4 and all(w > 100 for w in widths)
        table = driver.find_element(By.ID, "groups")
        first = lambda: table.find_elements(By.CSS_SELECTOR, "tbody tr")[0].find_elements(By.TAG_NAME, "td")[0].text  # noqa: E731
        assert first() == "optimizer.lr=1e-4"
        mean_header = [h for h in table.find_elements(By.TAG_NAME, "th") if h.text.strip() == "mean"][0]
        mean_header.click()  # ascending mean: 1e-3 (0.72) first
        assert first() == "optimizer.lr=1e-3"
        mean_header.click()
        assert first() == "optimizer.lr=3e-4"
        assert "this design detects at 80% power" in driver.find_element(By.ID, "power").text
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10000


@pytest.mark.slow
def test_interval_coverage_simulation() -> None:
    # The reasons behind two rules, by simulation: BCa under-covers with few seeds (so --ci bootstrap uses t below
    # 10), and the noncentral-t CI of d_z covers its true value.
    rng = np.random.default_rng(11)
    reps = 300
    for n in (3, 5):
        cover_t = cover_bca = 0
        for _ in range(reps):
            x = rng.normal(0.0, 1.0, n)
            lo, hi = S.mean_ci(x, "t")
            cover_t += lo <= 0 <= hi
            lo, hi = S.mean_ci(x, "bootstrap")
            cover_bca += lo <= 0 <= hi
        assert cover_t / reps == pytest.approx(0.95, abs=0.04)
        assert cover_bca / reps < 0.9
    covered = 0
    for _ in range(reps):
        d = rng.normal(0.5, 1.0, 6)  # true d_z = 0.5
        e = S.cohens_dz(d)
        covered += e.ci_low <= 0.5 <= e.ci_high
    assert covered / reps == pytest.approx(0.95, abs=0.04)


@pytest.mark.slow
def test_aso_via_deepsig(tmp_path: Path) -> None:
    # deepsig imports torch, so ASO is opt-in (slow). Clearly better group: ε_min near 0; clearly worse: near 1.
    rng = np.random.default_rng(4)
    base = rng.normal(0.80, 0.01, 5)
    sweep = sweep_of(
        tmp_path / "s",
        {
            "optimizer.lr=1e-4": {"val": list(base), "test": list(base)},
            "optimizer.lr=3e-4": {"val": list(base + 0.05), "test": list(base + 0.05 + rng.normal(0, 0.005, 5))},
            "optimizer.lr=1e-3": {"val": list(base - 0.05), "test": list(base - 0.05 + rng.normal(0, 0.005, 5))},
        },
    )
    rep = report(sweep, "--baseline", "optimizer.lr=1e-4", "--aso")
    assert rep["aso"]["optimizer.lr=3e-4"] < 0.2 and rep["aso"]["optimizer.lr=1e-3"] > 0.8
    assert "ε_min = " in (sweep / "report.md").read_text()
