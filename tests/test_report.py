"""lmlab-report on fixture sweeps built in tmp_path; every number is recomputed here from numpy/scipy."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from lmlab.report import main
from lmlab.report.cli import CSV_COLUMNS
from lmlab.report.stats import expected_max_curve, holm, macro_f1

SRC = Path(__file__).resolve().parents[1] / "src"

# 2x2 grid x 3 seeds. sgd/1e-4 is best on *test* but not on val, and its seed 2 failed, so an honest
# selection (on val) must pick adamw/1e-4 while a test-peeking one would pick sgd/1e-4.
GRID = {
    ("adamw", "3e-5"): {"val": [0.79, 0.80, 0.81], "test": [0.80, 0.82, 0.81]},
    ("adamw", "1e-4"): {"val": [0.85, 0.86, 0.84], "test": [0.84, 0.85, 0.83]},
    ("sgd", "3e-5"): {"val": [0.71, 0.70, 0.72], "test": [0.70, 0.74, 0.69]},
    ("sgd", "1e-4"): {"val": [0.83, 0.84, None], "test": [0.86, 0.87, None]},
}
BASELINE = "optimizer=adamw optimizer.lr=3e-5"
G = {k: f"optimizer={k[0]} optimizer.lr={k[1]}" for k in GRID}


def write_job(
    job: Path,
    overrides: list[str],
    metrics: dict | None,
    status: str | None = "completed",
    manifest: dict | None = None,
) -> None:
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if status is not None:
        (job / "status.json").write_text(json.dumps({"status": status, "attempts": 1}))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if manifest is not None:
        (job / "manifest.json").write_text(json.dumps(manifest))


def make_grid_sweep(root: Path, commits: dict[int, str] | None = None) -> Path:
    sweep = root / "multirun"
    i = 0
    for (opt, lr), vals in GRID.items():
        for seed in range(3):
            v, t = vals["val"][seed], vals["test"][seed]
            metrics = (
                None
                if v is None
                else {
                    "val/f1_macro": v,
                    "test/f1_macro": t,
                    "val/loss": 1 - v,
                    "test/acc": t + 0.01,
                    "test/f1_per_class": {"a": t},
                    "best/epoch": 2,
                    "meta/task": "classification",
                    "meta/monitor": "val/f1_macro",
                    "meta/mode": "max",
                }
            )
            commit = (commits or {}).get(i, "abc123")
            # Half the jobs use the nested manifest form, half the flat one: both must be read.
            manifest = (
                {"git": {"commit": commit}, "data": {"fingerprint": "fp1"}}
                if i % 2 == 0
                else {"git.commit": commit, "data.fingerprint": "fp1"}
            )
            write_job(
                sweep / str(i),
                [f"optimizer={opt}", f"optimizer.lr={lr}", f"seed={seed}"],
                metrics,
                "completed" if v is not None else "failed",
                manifest,
            )
            i += 1
    return sweep


def values(key: tuple[str, str], stage: str = "test") -> np.ndarray:
    return np.array([v for v in GRID[key][stage] if v is not None])


def read_csv(sweep: Path) -> pd.DataFrame:
    return pd.read_csv(sweep / "report.csv", dtype={"dropped_seeds": str, "states": str}).set_index("group")


def t_ci(x: np.ndarray) -> tuple[float, float]:
    half = stats.t.ppf(0.975, x.size - 1) * np.std(x, ddof=1) / math.sqrt(x.size)
    return x.mean() - half, x.mean() + half


def exact_perm_p_paired(x: np.ndarray, y: np.ndarray) -> float:
    d = x - y
    obs = d.mean()
    null = np.array([np.mean(d * s) for s in itertools.product([1, -1], repeat=d.size)])
    return min(1.0, 2 * min(np.mean(null >= obs - 1e-12), np.mean(null <= obs + 1e-12)))


def exact_perm_p_indep(x: np.ndarray, y: np.ndarray) -> float:
    pooled = np.concatenate([x, y])
    obs = x.mean() - y.mean()
    null = []
    for idx in itertools.combinations(range(pooled.size), x.size):
        mask = np.zeros(pooled.size, bool)
        mask[list(idx)] = True
        null.append(pooled[mask].mean() - pooled[~mask].mean())
    null = np.array(null)
    return min(1.0, 2 * min(np.mean(null >= obs - 1e-12), np.mean(null <= obs + 1e-12)))


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    return make_grid_sweep(tmp_path)


def test_grid_report_numbers(grid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(grid), "--baseline", BASELINE, "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "test/f1_macro per group" in out and "optimizer=sgd optimizer.lr=1e-4" in out

    df = read_csv(grid)
    assert list(pd.read_csv(grid / "report.csv").columns) == CSV_COLUMNS
    assert list(df.index) == list(G.values())  # order of first appearance
    for key, name in G.items():
        x = values(key)
        row = df.loc[name]
        assert row["n"] == x.size
        assert row["n_failed"] == (1 if key == ("sgd", "1e-4") else 0)
        assert row["mean"] == pytest.approx(np.mean(x), abs=1e-12)
        assert row["std"] == pytest.approx(np.std(x, ddof=1), abs=1e-12)
        lo, hi = t_ci(x)
        assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((lo, hi), abs=1e-12)
        assert (row["min"], row["max"]) == (x.min(), x.max())

    base = values(("adamw", "3e-5"))
    assert (
        df.loc[BASELINE, ["diff", "diff_ci95_low", "diff_ci95_high", "p_paired_t", "p_permutation", "p_holm"]]
        .isna()
        .all()
    )
    p_t = {}
    # Same seeds as the baseline: paired t on the differences, sign-flip permutation.
    for key in [("adamw", "1e-4"), ("sgd", "3e-5")]:
        x, row = values(key), df.loc[G[key]]
        d = x - base
        assert row["diff"] == pytest.approx(d.mean(), abs=1e-12)
        assert (row["diff_ci95_low"], row["diff_ci95_high"]) == pytest.approx(t_ci(d), abs=1e-12)
        tstat = d.mean() / (np.std(d, ddof=1) / math.sqrt(d.size))
        p_t[key] = 2 * stats.t.sf(abs(tstat), d.size - 1)
        assert row["p_paired_t"] == pytest.approx(p_t[key], rel=1e-9)
        assert row["p_permutation"] == pytest.approx(exact_perm_p_paired(x, base), abs=1e-12)
    # sgd/1e-4 lost seed 2: paired on the 2 shared seeds (0, 1), seed 2 named as dropped (today: Welch).
    key = ("sgd", "1e-4")
    x, row = values(key), df.loc[G[key]]
    d = x - base[:2]
    assert row["diff"] == pytest.approx(d.mean(), abs=1e-12)
    assert (row["diff_ci95_low"], row["diff_ci95_high"]) == pytest.approx(t_ci(d), abs=1e-10)
    p_t[key] = stats.ttest_rel(x, base[:2]).pvalue
    assert row["p_paired_t"] == pytest.approx(p_t[key], rel=1e-9)
    assert row["p_permutation"] == pytest.approx(exact_perm_p_paired(x, base[:2]), abs=1e-12)
    assert row["test"] == "paired_t" and row["n_compared"] == 2 and str(row["dropped_seeds"]) == "2"

    # Holm by hand: sort the 3 p-values, multiply by 3, 2, 1, keep monotone, cap at 1.
    keys = sorted(p_t, key=p_t.get)
    adj, running = {}, 0.0
    for rank, k in enumerate(keys):
        running = max(running, min(1.0, (3 - rank) * p_t[k]))
        adj[k] = running
    for k in keys:
        assert df.loc[G[k], "p_holm"] == pytest.approx(adj[k], rel=1e-9)

    rep = json.loads((grid / "report.json").read_text())
    assert rep["comparisons"][G[("sgd", "1e-4")]]["test"] == "paired_t"  # paired on its 2 shared seeds
    assert rep["comparisons"][G[("sgd", "1e-4")]]["dropped_seeds"] == ["2"]
    assert rep["comparisons"][G[("adamw", "1e-4")]]["test"] == "paired_t"
    assert rep["n_jobs"] == 12 and rep["n_finished"] == 11 and rep["n_failed"] == 1
    for r in rep["groups"]:  # same columns and numbers as the CSV (NaN/empty -> null)
        assert list(r) == ["group", *df.columns]
        for c in df.columns:
            want = df.loc[r["group"], c]
            if pd.isna(want):
                assert r[c] in (None, "")  # an empty text cell ("" in JSON) is empty in the CSV too
            elif isinstance(want, str):
                assert r[c] == want
            else:
                assert r[c] == pytest.approx(want, abs=1e-15)
    assert (
        rep["warnings"]
        == [
            f"group {G[key]!r} vs baseline on 'test/f1_macro': paired on the 2 shared seeds; "
            "seed(s) 2 have no partner and are left out of the comparison",
        ]
        and rep["notes"] == []
    )


def test_selection_on_val_reports_test(grid: Path) -> None:
    assert main([str(grid), "--no-plots"]) == 0
    rep = json.loads((grid / "report.json").read_text())
    sel = rep["selection"]
    # Best on val is adamw/1e-4 (0.85); sgd/1e-4 has the best test mean but must not be chosen.
    assert sel["group"] == G[("adamw", "1e-4")]
    assert sel["select_metric"] == "val/f1_macro" and sel["report_metric"] == "test/f1_macro"
    assert sel["select_mean"] == pytest.approx(0.85)
    assert sel["report_mean"] == pytest.approx(np.mean(values(("adamw", "1e-4"))))
    md = (grid / "report.md").read_text()
    assert "chosen on **val/f1_macro**" in md and "reported on **test/f1_macro**" in md
    assert "test metric played no part" in md
    # Baseline columns stay empty without --baseline.
    df = read_csv(grid)
    assert df[["diff", "p_paired_t", "p_permutation", "p_holm"]].isna().all().all()

    # A loss is minimized: val/loss = 1 - val/f1 picks the same group.
    assert main([str(grid), "--no-plots", "--select", "val/loss", "--metric", "test/acc"]) == 0
    sel = json.loads((grid / "report.json").read_text())["selection"]
    assert sel["group"] == G[("adamw", "1e-4")] and sel["select_mode"] == "min"
    assert sel["report_mean"] == pytest.approx(np.mean(values(("adamw", "1e-4")) + 0.01))


def test_expected_max_curve(grid: Path) -> None:
    assert main([str(grid), "--no-plots"]) == 0
    em = json.loads((grid / "report.json").read_text())["expected_max"]
    means = np.array([np.mean(values(k, "val")) for k in GRID])
    assert em["n"] == [1, 2, 3, 4] and em["n_configs"] == 4
    assert em["expected"][0] == pytest.approx(means.mean(), abs=1e-12)  # one draw: the mean
    # Dodge et al.: sum_i v_(i) [(i/N)^n - ((i-1)/N)^n], written out for the last point n = N = 4.
    v = np.sort(means)
    last = sum(v[i - 1] * ((i / 4) ** 4 - ((i - 1) / 4) ** 4) for i in range(1, 5))
    assert em["expected"][-1] == pytest.approx(last, abs=1e-12)
    # Draws are with replacement, so E[max of N] stays below the observed max and rises towards it.
    assert np.all(np.diff(em["expected"]) > 0) and em["expected"][-1] < means.max()
    big, _ = expected_max_curve(np.tile(means, 50))  # 200 draws: essentially the max
    assert big[-1] == pytest.approx(means.max(), abs=1e-9)
    second = sum(v[i - 1] * ((i / 4) ** 2 - ((i - 1) / 4) ** 2) for i in range(1, 5))
    assert em["expected"][1] == pytest.approx(second, abs=1e-12)
    # Std at n=1 is the population std of the configuration scores.
    assert em["std"][0] == pytest.approx(np.std(means), abs=1e-12)


def test_plots_and_markdown(grid: Path) -> None:
    assert main([str(grid), "--baseline", BASELINE]) == 0
    for png in ("report_groups.png", "report_expected_max.png"):
        data = (grid / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    md = (grid / "report.md").read_text()
    assert "![report_groups.png](report_groups.png)" in md
    assert "- `optimizer=sgd optimizer.lr=1e-4`: paired on 2 shared seeds; dropped seed(s) without a partner: 2" in md
    assert "Holm correction" in md and "Expected best validation score" in md


def test_bootstrap_ci(grid: Path, tmp_path: Path) -> None:
    # 3 seeds: BCa would cover far below 95%, so the t interval is used and the report says so.
    assert main([str(grid), "--no-plots", "--ci", "bootstrap"]) == 0
    df = read_csv(grid)
    x = values(("adamw", "3e-5"))
    assert (df.loc[BASELINE, "ci95_low"], df.loc[BASELINE, "ci95_high"]) == pytest.approx(t_ci(x), abs=1e-12)
    rep = json.loads((grid / "report.json").read_text())
    assert any("fewer than 10 values use the Student t interval" in n for n in rep["notes"])
    # 12 seeds: scipy's BCa.
    sweep = tmp_path / "many"
    vals = np.random.default_rng(3).normal(0.8, 0.02, 12)
    for i, v in enumerate(vals):
        write_job(sweep / str(i), ["optimizer.lr=1e-4", f"seed={i}"], {"val/f1_macro": v, "test/f1_macro": v})
    assert main([str(sweep), "--no-plots", "--ci", "bootstrap"]) == 0
    row = json.loads((sweep / "report.json").read_text())["groups"][0]
    ref = stats.bootstrap((vals,), np.mean, n_resamples=9999, rng=0, method="BCa").confidence_interval
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((ref.low, ref.high))


def test_commit_and_fingerprint_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = make_grid_sweep(tmp_path, commits={5: "def456"})  # job 5 uses the flat manifest form
    fp = json.loads((sweep / "2" / "manifest.json").read_text())
    fp["data"]["fingerprint"] = "fp2"
    (sweep / "2" / "manifest.json").write_text(json.dumps(fp))
    assert main([str(sweep), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "differ in git commit" in err and "def456: jobs 5" in err
    assert "differ in data fingerprint" in err and "fp2: jobs 2" in err
    rep = json.loads((sweep / "report.json").read_text())
    assert any("git commit" in w for w in rep["warnings"])
    assert "differ in git commit" in (sweep / "report.md").read_text()


def _preds(n: int, acc: float, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    wrong = rng.random(n) > acc
    pred = labels.copy()
    pred[wrong] = (labels[wrong] + rng.integers(1, 3, wrong.sum())) % 3
    return pred


def write_predictions(job: Path, labels: np.ndarray, preds: np.ndarray, order: np.ndarray) -> None:
    names = np.array(["business", "sport", "tech"])
    df = pd.DataFrame({"id": [f"ex{i:04d}" for i in order], "label": names[labels[order]], "pred": names[preds[order]]})
    for k, name in enumerate(names):
        df[f"score_{name}"] = (preds[order] == k).astype(float)
    df.to_csv(job / "test_predictions.csv", index=False)


def test_paired_bootstrap(grid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    n = 300
    labels = rng.integers(0, 3, n)
    preds = {}
    for i in range(12):
        # jobs 0-2: the baseline group, 3-5: adamw/1e-4 (clearly better)
        acc = {0: 0.7, 1: 0.7, 2: 0.7, 3: 0.9, 4: 0.9, 5: 0.9}.get(i, 0.5)
        preds[i] = _preds(n, acc, rng, labels)
        # Rows in another order per job: the report must align on id, not on row position.
        write_predictions(grid / str(i), labels, preds[i], rng.permutation(n))

    # Two job dirs.
    assert main([str(grid), "--no-plots", "--paired-bootstrap", "3", "0"]) == 0
    pb = json.loads((grid / "report.json").read_text())["paired_bootstrap"]
    f3, f0 = macro_f1(labels, preds[3]), macro_f1(labels, preds[0])
    assert pb["f1_macro_a"] == pytest.approx(f3) and pb["f1_macro_b"] == pytest.approx(f0)
    assert pb["diff"] == pytest.approx(f3 - f0) and pb["n_examples"] == n
    assert pb["diff_ci95_low"] < pb["diff"] < pb["diff_ci95_high"] and pb["diff_ci95_low"] > 0
    assert pb["p_value"] < 0.001
    # Independent check: a plain numpy percentile bootstrap agrees on the CI within Monte-Carlo error.
    idx = np.random.default_rng(7).integers(0, n, (2000, n))
    naive = np.array([macro_f1(labels[r], preds[3][r]) - macro_f1(labels[r], preds[0][r]) for r in idx])
    lo, hi = np.percentile(naive, [2.5, 97.5])
    assert pb["diff_ci95_low"] == pytest.approx(lo, abs=0.015)
    assert pb["diff_ci95_high"] == pytest.approx(hi, abs=0.015)
    assert "paired bootstrap" in capsys.readouterr().out

    # Two groups: seeds are matched and the statistic is the mean difference over the 3 seed pairs.
    assert main([str(grid), "--no-plots", "--paired-bootstrap", G[("adamw", "1e-4")], BASELINE]) == 0
    pb = json.loads((grid / "report.json").read_text())["paired_bootstrap"]
    assert len(pb["pairs"]) == 3
    expect = np.mean([macro_f1(labels, preds[i + 3]) - macro_f1(labels, preds[i]) for i in range(3)])
    assert pb["diff"] == pytest.approx(expect)
    # Seeds x examples: same point estimate, a CI that also holds the seed-to-seed variance; the example-only
    # one is kept and labelled.
    tl = pb["two_level"]
    assert tl["diff"] == pytest.approx(expect) and tl["n_pairs"] == 3 and tl["n_resamples"] == 2000
    assert tl["diff_ci95_low"] < expect < tl["diff_ci95_high"]
    md = (grid / "report.md").read_text()
    assert "seeds × examples (two-level) bootstrap" in md and "example-only bootstrap (seeds held fixed" in md
    assert "## Bootstrap over test examples" in (grid / "report.md").read_text()

    # Identical predictions: no difference, p = 1.
    write_predictions(grid / "1", labels, preds[0], np.arange(n))
    assert main([str(grid), "--no-plots", "--paired-bootstrap", "0", "1"]) == 0
    pb = json.loads((grid / "report.json").read_text())["paired_bootstrap"]
    assert pb["diff"] == 0 and pb["p_value"] == 1.0

    # A job dir without predictions is named as such.
    (grid / "4" / "test_predictions.csv").unlink()
    assert main([str(grid), "--no-plots", "--paired-bootstrap", "4", "0"]) == 2
    assert f"{grid / '4' / 'test_predictions.csv'} does not exist" in capsys.readouterr().err

    # Different test sets are refused.
    pd.read_csv(grid / "1" / "test_predictions.csv").iloc[:-1].to_csv(grid / "1" / "test_predictions.csv")
    assert main([str(grid), "--no-plots", "--paired-bootstrap", "0", "1"]) == 2
    assert "other example ids" in capsys.readouterr().err


def test_macro_f1_by_hand() -> None:
    # class a: tp=1 fp=1 fn=1 -> 0.5; class b: tp=1 fp=0 fn=1 -> 2/3; class c: tp=1 fp=1 fn=0 -> 2/3
    y = ["a", "a", "b", "b", "c"]
    p = ["a", "c", "b", "a", "c"]
    assert macro_f1(y, p) == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)


def test_holm_by_hand() -> None:
    # The family is all 4 comparisons shown, the NaN one included (today it shrank to 3: 0.03, 0.06, 0.06).
    adj = holm([0.01, float("nan"), 0.04, 0.03])
    assert adj[0] == pytest.approx(0.04) and math.isnan(adj[1])
    assert adj[3] == pytest.approx(0.09) and adj[2] == pytest.approx(0.09)  # monotone: max(0.08, 0.09)
    from statsmodels.stats.multitest import multipletests

    ref = multipletests([0.01, 1.0, 0.04, 0.03], method="holm")[1]
    assert adj[[0, 2, 3]] == pytest.approx(ref[[0, 2, 3]])


def test_optuna_style_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "optuna"
    lrs = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]
    vals = [0.6, 0.7, 0.8, 0.75, 0.5]
    for i, (lr, v) in enumerate(zip(lrs, vals, strict=True)):
        metrics = {"val/f1_macro": v, "test/f1_macro": v - 0.02}
        # No status.json: metrics.json alone marks a finished run.
        write_job(sweep / str(i), [f"optimizer.lr={lr}", "seed=0"], metrics, status=None)
    (sweep / "optimization_results.yaml").write_text(
        yaml.safe_dump({"name": "optuna", "best_params": {"optimizer.lr": 1e-4}, "best_value": 0.8})
    )
    assert main([str(sweep), "--no-plots"]) == 0
    rep = json.loads((sweep / "report.json").read_text())
    assert len(rep["groups"]) == 5 and all(g["n"] == 1 for g in rep["groups"])
    assert rep["selection"]["group"] == "optimizer.lr=0.0001"
    assert rep["selection"]["report_mean"] == pytest.approx(0.78)
    assert rep["optuna"]["best_value"] == 0.8
    assert rep["expected_max"]["expected"][0] == pytest.approx(np.mean(vals))
    df = pd.read_csv(sweep / "report.csv")
    assert df["std"].isna().all() and df["ci95_low"].isna().all()


def test_two_groups_skip_curve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "two"
    for i, (lr, seed) in enumerate(itertools.product(["1e-4", "3e-5"], range(2))):
        v = 0.8 if lr == "1e-4" else 0.7
        write_job(
            sweep / str(i),
            [f"optimizer.lr={lr}", f"+seed={seed}"],
            {"val/f1_macro": v + seed / 100, "test/f1_macro": v},
        )
    assert main([str(sweep), "--baseline", "optimizer.lr=3e-5", "--no-plots"]) == 0
    # Runs without meta/mode: today's name rule, with a warning.
    err = capsys.readouterr().err
    assert "WARNING: the runs have no meta/mode (written before it existed): 'val/f1_macro' taken as higher" in err
    rep = json.loads((sweep / "report.json").read_text())
    assert rep["expected_max"] is None and "expected-max curve skipped: 2 configuration(s)" in rep["notes"][0]
    # `+seed=` is still the seed key; equal test values give zero-spread CIs and an exact, untestable diff.
    # Sorted by value: 3e-5 before 1e-4 (as text it would be the other way round).
    assert [g["group"] for g in rep["groups"]] == ["optimizer.lr=3e-5", "optimizer.lr=1e-4"]
    row = rep["groups"][1]
    assert row["group"] == "optimizer.lr=1e-4" and row["n"] == 2
    assert (row["ci95_low"], row["ci95_high"]) == (0.8, 0.8)
    assert row["diff"] == pytest.approx(0.1) and row["p_paired_t"] is None


def test_bad_inputs(tmp_path: Path, grid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert main([str(missing)]) == 2
    assert f"sweep dir {missing} does not exist" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert "has no job dirs" in capsys.readouterr().err
    assert main([str(grid / "0")]) == 2
    assert "looks like a single run dir; pass its parent" in capsys.readouterr().err

    failed = tmp_path / "failed"
    write_job(failed / "0", ["seed=0"], None, "failed")
    write_job(failed / "1", ["seed=1"], None, "running")
    assert main([str(failed)]) == 2
    err = capsys.readouterr().err
    assert "has no finished jobs" in err and "0: failed, 1: running" in err
    assert not (failed / "report.csv").exists()

    assert main([str(grid), "--metric", "test/f1"]) == 2
    err = capsys.readouterr().err
    assert "unknown metric 'test/f1' for --metric" in err
    assert "metrics found: best/epoch, test/acc, test/f1_macro, val/f1_macro, val/loss" in err
    assert main([str(grid), "--select", "val/acc"]) == 2
    assert "unknown metric 'val/acc' for --select" in capsys.readouterr().err

    assert main([str(grid), "--baseline", "optimizer=adam"]) == 2
    err = capsys.readouterr().err
    assert "--baseline 'optimizer=adam' matches no group" in err
    assert "'optimizer=adamw optimizer.lr=3e-5'" in err and "'optimizer=sgd optimizer.lr=1e-4'" in err
    assert main([str(grid), "--baseline", "optimizer=adamw"]) == 2
    assert "matches 2 groups; name more overrides" in capsys.readouterr().err

    assert main([str(grid), "--ci", "normal"]) == 2
    assert "invalid choice: 'normal'" in capsys.readouterr().err
    assert not (grid / "report.csv").exists()  # no partial result after any bad input


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(SRC), **env}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=full_env, timeout=120, check=False
    )


def test_console_module(grid: Path) -> None:
    # -X importtime lists every module imported on stderr: the report must stay light, no torch behind it.
    r = _run(["-X", "importtime", "-m", "lmlab.report", str(grid), "--baseline", BASELINE, "--no-plots"])
    assert r.returncode == 0, r.stderr
    assert "optimizer=adamw optimizer.lr=1e-4" in r.stdout and "wrote" in r.stdout
    mean = read_csv(grid).loc[G[("adamw", "1e-4")], "mean"]
    assert mean == pytest.approx(np.mean(values(("adamw", "1e-4"))))
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "lmlab.report.cli" in imported and "pandas" in imported
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}

    r = _run(["-m", "lmlab.report", str(grid / "missing")])
    assert r.returncode == 2 and "does not exist" in r.stderr


WANDB_SCRIPT = """
import sys
import wandb
from lmlab.report import main
from lmlab.report.cli import CSV_COLUMNS
sweep = sys.argv[1]
# 1) --wandb PROJECT: the report opens and finishes its own run.
assert main([sweep, "--wandb", "lmlab-report-test"]) == 0
assert wandb.run is None
# 2) A run is already active (e.g. called from a training script): log into it, leave it open.
run = wandb.init(project="lmlab-report-test", job_type="active")
assert main([sweep, "--no-plots"]) == 0
assert wandb.run is run
print("active run", run.id)
run.finish()
"""


def test_wandb_offline(grid: Path, tmp_path: Path) -> None:
    r = _run(["-c", WANDB_SCRIPT, str(grid)], WANDB_MODE="offline", WANDB_DIR=str(tmp_path), WANDB_SILENT="true")
    assert r.returncode == 0, r.stderr
    own_id = r.stdout.split("logged to W&B run ")[1].split()[0]
    active_id = r.stdout.split("active run ")[1].split()[0]
    assert f"logged to W&B run {active_id}" in r.stdout
    n_plots = 3  # groups, expected max, metric vs optimizer.lr (no baseline: no forest plot)
    for run_id, n_images in ((own_id, n_plots), (active_id, 0)):
        runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
        assert len(runs) == 1
        assert (runs[0] / f"run-{run_id}.wandb").stat().st_size > 0
        media = runs[0] / "files" / "media"
        tables = list((media / "table").rglob("*.table.json"))
        assert len(tables) == 1, "the report table was not logged"
        table = json.loads(tables[0].read_text())
        assert table["columns"] == CSV_COLUMNS
        assert [row[0] for row in table["data"]] == list(G.values())
        assert len(list(media.rglob("*.png"))) == n_images


def test_runs_of_one_config_in_several_log_dirs_are_one_group(tmp_path: Path) -> None:
    """paths.log_dir says where a run writes, not what it computes: one arm's seeds launched into two log dirs
    (benchmarks/lm_quality.py runs each arm into its own) pair with the baseline's seeds as one group."""
    runs = {"new": [0.70, 0.72, 0.71], "old": [0.80, 0.83, 0.81]}
    for arm, vals in runs.items():
        for seed, v in enumerate(vals, start=1):
            where = f"paths.log_dir=/x/{arm}{'' if seed < 3 else '_more'}"  # seed 3 of each arm went elsewhere
            opt = "optimizer=adamw" if arm == "old" else "optimizer=muon"
            metrics = {"val/loss": v, "test/loss": v, "meta/monitor": "val/loss", "meta/mode": "min"}
            write_job(tmp_path / arm / f"s{seed}", [where, "task=causal_lm", f"seed={seed}", opt], metrics)
    out = tmp_path / "report"
    assert main([str(tmp_path / "new"), str(tmp_path / "old"), "--out", str(out), "--no-plots",
                 "--baseline", "paths.log_dir=/x/old optimizer=adamw", "--metric", "test/loss"]) == 0  # fmt: skip
    csv = read_csv(out)
    assert sorted(csv.index) == ["optimizer=adamw", "optimizer=muon"], csv
    new = csv.loc["optimizer=muon"]
    assert new["n"] == 3 and new["mean"] == pytest.approx(np.mean(runs["new"]))
    assert new["diff"] == pytest.approx(np.mean(runs["new"]) - np.mean(runs["old"]))
    d = np.array(runs["new"]) - np.array(runs["old"])
    assert new["p_paired_t"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue)


def test_the_group_that_overrides_nothing_is_named_defaults(tmp_path: Path) -> None:
    """`python train.py task=causal_lm seed=<s>` against `... optimizer=adamw`: the first group sets nothing beyond
    what every run shares, and is named `(defaults)` (it was an empty name: "selected: ." in the summary)."""
    runs = {"(defaults)": [0.70, 0.72, 0.71], "optimizer=adamw": [0.80, 0.83, 0.81]}
    for name, vals in runs.items():
        for seed, v in enumerate(vals, start=1):
            extra = [] if name == "(defaults)" else [name]
            metrics = {"val/loss": v, "test/loss": v, "meta/monitor": "val/loss", "meta/mode": "min"}
            write_job(tmp_path / name / f"s{seed}", ["task=causal_lm", f"seed={seed}", *extra], metrics)
    out = tmp_path / "report"
    args = [str(tmp_path / "(defaults)"), str(tmp_path / "optimizer=adamw"), "--out", str(out), "--no-plots"]
    assert main([*args, "--baseline", "optimizer=adamw", "--metric", "test/loss"]) == 0
    csv = read_csv(out)
    assert sorted(csv.index) == ["(defaults)", "optimizer=adamw"], csv
    assert csv.loc["(defaults)", "diff"] == pytest.approx(
        np.mean(runs["(defaults)"]) - np.mean(runs["optimizer=adamw"])
    )
    # The name works as a baseline too.
    assert main([*args, "--baseline", "(defaults)", "--metric", "test/loss"]) == 0
    csv = read_csv(out)
    assert csv.loc["optimizer=adamw", "diff"] == pytest.approx(
        np.mean(runs["optimizer=adamw"]) - np.mean(runs["(defaults)"])
    )
