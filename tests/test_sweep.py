"""Sweeps as a user runs them (`python train.py -m ...` in a fresh process): job isolation, sweep.json, resume,
manifests, W&B offline read-back, and the report on real sweep output (Optuna: tests/test_optuna.py).

Each sweep runs once per module (module-scoped fixtures) and later tests re-issue it; every re-issue leaves
the sweep complete again, so the tests do not depend on each other's order.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from lmlab.report import main as report_main
from tests.conftest import ROOT, TINY
from tests.wandb_offline import offline_runs

GRID = ["optimizer=adamw,sgd", "optimizer.lr=1e-3,1e-2", "seed=1,2,3"]
# Hydra's override_dirname sorts the overrides: `optimizer.lr=` sorts before `optimizer=`.
JOBS = [
    ",".join(sorted([f"optimizer={o}", f"optimizer.lr={lr}", f"seed={s}"]))
    for o, lr, s in product(["adamw", "sgd"], ["0.001", "0.01"], [1, 2, 3])
]
BASELINE = "optimizer=adamw optimizer.lr=0.001"


def sweep_env(home: Path) -> dict[str, str]:
    """No W&B key and no WANDB_MODE: the logger must pick offline by itself. Fresh HOME = no ~/.netrc."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), PYTHONPATH=str(ROOT / "src"), HYDRA_FULL_ERROR="0")
    return env


def start_sweep(sweep_dir: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *TINY, *args, f"hydra.sweep.dir={sweep_dir}"]
    # stdin from /dev/null and a session of its own: nothing can prompt, and a kill reaches every child.
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run_sweep(sweep_dir: Path, *args: str, env: dict[str, str], timeout: int = 900) -> tuple[int, str]:
    proc = start_sweep(sweep_dir, *args, env=env)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def sweep_json(sweep_dir: Path) -> dict[str, Any]:
    return json.loads((sweep_dir / "sweep.json").read_text())


def status(job_dir: Path) -> dict[str, Any]:
    return json.loads((job_dir / "status.json").read_text())


def parse(dirname: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in dirname.split(","))


def attempts(sweep_dir: Path) -> dict[str, int]:
    return {d: status(sweep_dir / d)["attempts"] for d in JOBS}


def mtimes(job_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(job_dir)): p.stat().st_mtime_ns for p in job_dir.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- 2x2 grid x 3 seeds, logger=wandb


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("grid")
    env = sweep_env(root / "home")
    sweep_dir = root / "sweep"
    rc, out = run_sweep(sweep_dir, "logger=wandb", *GRID, env=env)
    assert rc == 0, out[-3000:]
    return {"dir": sweep_dir, "env": env, "out": out}


def test_grid_jobs_named_by_overrides_and_summarized(grid: dict[str, Any]) -> None:
    sweep_dir = grid["dir"]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == sorted(JOBS)
    summary = sweep_json(sweep_dir)
    assert summary["counts"] == {"completed": 12}
    assert [j["dir"] for j in summary["jobs"]] == JOBS  # launch order
    for job in summary["jobs"]:
        assert job["status"] == "completed" and job["attempts"] == 1 and job["error"] is None
        # The full override list (constant ones included) is kept; only the dir name leaves constants out.
        assert "model=tiny_bert" in job["overrides"] and f"seed={parse(job['dir'])['seed']}" in job["overrides"]
        assert (sweep_dir / job["dir"] / "metrics.json").is_file()
    assert summary["invocations"][0]["launched"] == JOBS and summary["invocations"][0]["skipped"] == []


def test_manifests(grid: dict[str, Any]) -> None:
    sweep_dir = grid["dir"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    )
    manifests = [json.loads((sweep_dir / d / "manifest.json").read_text()) for d in JOBS]
    assert {m["git"]["commit"] for m in manifests} == {commit}
    assert {m["git"]["dirty"] for m in manifests} == {dirty}
    fingerprints = {m["data"]["fingerprint"] for m in manifests}
    assert len(fingerprints) == 1 and None not in fingerprints  # same data for every job
    for d, m in zip(JOBS, manifests):
        job = sweep_dir / d
        assert m["seed"] == int(parse(d)["seed"]) and f"seed={parse(d)['seed']}" in m["overrides"]
        assert m["data"]["labels"] == ["business", "entertainment", "politics", "sports", "tech"]
        assert m["data"]["sizes"] == {"train": 96, "val": 48, "test": 48}
        assert m["effective_batch_size"] == 16 and m["world_size"] == 1
        assert m["versions"]["torch"] and m["versions"]["transformers"] and m["versions"]["python"]
        assert m["hardware"]["cpu_count"] >= 1 and m["hardware"]["gpu_count"] == 0
        assert m["hostname"] and "train.py -m" in m["command"]
        assert m["start_time"] <= m["end_time"]
        assert "torch==" in (job / m["pip_freeze_file"]).read_text()
        assert (job / "git.diff").is_file() == dirty


def test_wandb_offline_runs(grid: dict[str, Any]) -> None:
    sweep_dir = grid["dir"]
    assert "no API key configured" in grid["out"] and "offline mode" in grid["out"]
    for d in JOBS:
        runs = offline_runs(sweep_dir / d)
        assert len(runs) == 1, f"{d}: one W&B run per job, got {len(runs)}"
        run = runs[0]
        metrics = json.loads((sweep_dir / d / "metrics.json").read_text())
        assert run["group"] == sweep_dir.name
        assert run["name"] == d  # the varying overrides only
        assert run["job_type"] == "train" and run["tags"] == ["dev"]
        optimizer, lr, seed = parse(d)["optimizer"], parse(d)["optimizer.lr"], parse(d)["seed"]
        assert run["config"]["seed"] == int(seed)
        assert run["config"]["optimizer"]["lr"] == float(lr)
        assert run["config"]["optimizer"]["_target_"].lower().endswith(optimizer)
        assert run["config"]["model"]["from_scratch"]["hidden_size"] == 32
        for key in ("test/f1_macro", "val/f1_macro", "best/val_f1_macro", "test/acc"):
            assert run["summary"][key] == pytest.approx(metrics[key], rel=1e-12)
        assert {"metrics.json", "manifest.json"} <= set(run["files"])


def _holm(p: dict[str, float]) -> dict[str, float]:
    order = sorted(p, key=p.get)
    out, running = {}, 0.0
    for rank, k in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[k]))
        out[k] = running
    return out


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12)


def test_report_matches_independent_computation(grid: dict[str, Any]) -> None:
    import pandas as pd

    sweep_dir = grid["dir"]
    assert report_main([str(sweep_dir), "--baseline", BASELINE, "--no-plots"]) == 0
    df = pd.read_csv(sweep_dir / "report.csv").set_index("group")
    values: dict[str, dict[int, float]] = {}
    for d in JOBS:
        optimizer, lr, seed = parse(d)["optimizer"], parse(d)["optimizer.lr"], parse(d)["seed"]
        metrics = json.loads((sweep_dir / d / "metrics.json").read_text())
        values.setdefault(f"optimizer={optimizer} optimizer.lr={lr}", {})[int(seed)] = metrics["test/f1_macro"]
    assert sorted(df.index) == sorted(values)
    base = np.array([values[BASELINE][s] for s in (1, 2, 3)])
    p_t = {}
    for group, by_seed in values.items():
        x = np.array([by_seed[s] for s in (1, 2, 3)])
        row = df.loc[group]
        assert row["n"] == 3 and row["n_failed"] == 0
        assert row["mean"] == pytest.approx(x.mean(), abs=1e-12)
        assert row["std"] == pytest.approx(x.std(ddof=1), abs=1e-12)
        assert (row["min"], row["max"]) == pytest.approx((x.min(), x.max()), abs=1e-12)
        if x.std() > 0:
            lo, hi = stats.t.interval(0.95, 2, loc=x.mean(), scale=stats.sem(x))
            assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((lo, hi), abs=1e-12)
        if group != BASELINE:
            assert row["diff"] == pytest.approx(x.mean() - base.mean(), abs=1e-12)
            d = x - base
            p = float(stats.ttest_rel(x, base).pvalue) if d.std() > 0 else float("nan")
            assert _close(float(row["p_paired_t"]), p), (group, row["p_paired_t"], p)
            p_t[group] = p
    # Holm's family is every comparison shown: an undefined p counts as 1 (and its adjusted p stays empty).
    for g, adj in _holm({g: 1.0 if math.isnan(p) else p for g, p in p_t.items()}).items():
        if not math.isnan(p_t[g]):
            assert df.loc[g, "p_holm"] == pytest.approx(adj, rel=1e-9)
    rep = json.loads((sweep_dir / "report.json").read_text())
    assert rep["n_jobs"] == 12 and rep["n_finished"] == 12 and rep["n_failed"] == 0
    assert not [w for w in rep["warnings"] if "differ in" in w]  # one commit, one data fingerprint
    assert "model=tiny_bert" in rep["constant_overrides"]


def test_reissue_trains_nothing(grid: dict[str, Any]) -> None:
    sweep_dir = grid["dir"]
    before = {d: mtimes(sweep_dir / d) for d in JOBS}
    rc, out = run_sweep(sweep_dir, "logger=wandb", *GRID, env=grid["env"])
    assert rc == 0, out[-3000:]
    assert "12 of 12 jobs already completed, launching 0" in out
    assert attempts(sweep_dir) == dict.fromkeys(JOBS, 1)
    assert {d: mtimes(sweep_dir / d) for d in JOBS} == before  # not a file touched, .hydra/ included
    summary = sweep_json(sweep_dir)
    assert summary["invocations"][-1]["launched"] == [] and len(summary["invocations"][-1]["skipped"]) == 12
    assert summary["counts"] == {"completed": 12} and all(j["skipped"] for j in summary["jobs"])


def test_deleted_job_is_the_only_one_retrained(grid: dict[str, Any]) -> None:
    import shutil

    sweep_dir = grid["dir"]
    gone = JOBS[4]
    shutil.rmtree(sweep_dir / gone)
    before = {d: mtimes(sweep_dir / d) for d in JOBS if d != gone}
    rc, out = run_sweep(sweep_dir, "logger=wandb", *GRID, env=grid["env"])
    assert rc == 0, out[-3000:]
    assert sweep_json(sweep_dir)["invocations"][-1]["launched"] == [gone]
    assert status(sweep_dir / gone)["status"] == "completed" and status(sweep_dir / gone)["attempts"] == 1
    assert {d: mtimes(sweep_dir / d) for d in JOBS if d != gone} == before


def test_killed_sweep_resumes_killed_and_never_started_jobs(grid: dict[str, Any]) -> None:
    import shutil

    sweep_dir = grid["dir"]
    redo = [JOBS[7], JOBS[9]]  # launched in this order: the first gets killed, the second never starts
    for d in redo:
        shutil.rmtree(sweep_dir / d)
    before = {d: status(sweep_dir / d)["attempts"] for d in JOBS if d not in redo}
    proc = start_sweep(sweep_dir, "logger=wandb", *GRID, env=grid["env"])
    # Kill (SIGKILL: no handler runs) while the first re-run job is training.
    deadline = time.monotonic() + 600
    victim = sweep_dir / redo[0]
    while time.monotonic() < deadline and proc.poll() is None:
        if (victim / "status.json").is_file() and status(victim)["status"] == "running":
            break
        time.sleep(0.5)
    assert proc.poll() is None, "sweep ended before it could be killed:\n" + proc.communicate()[0][-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert status(victim)["status"] == "running"  # what a killed process leaves behind
    assert not (sweep_dir / redo[1]).exists()
    assert sweep_json(sweep_dir)["counts"] == {"completed": 10, "running": 1, "pending": 1}

    rc, out = run_sweep(sweep_dir, "logger=wandb", *GRID, env=grid["env"])
    assert rc == 0, out[-3000:]
    assert sweep_json(sweep_dir)["invocations"][-1]["launched"] == redo
    assert status(victim)["attempts"] == 2 and status(victim)["status"] == "completed"
    assert status(sweep_dir / redo[1])["attempts"] == 1
    assert {d: status(sweep_dir / d)["attempts"] for d in JOBS if d not in redo} == before
    assert sweep_json(sweep_dir)["counts"] == {"completed": 12}


# ---------------------------------------------------------------- a sweep with failing jobs


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("failing")
    env = sweep_env(root / "home")
    sweep_dir = root / "sweep"
    # lr=-1 fails inside the job (config check); the lr=1e-3 jobs must still run, before and after it.
    args = ["optimizer.lr=-1,1e-3", "seed=1,2"]
    rc, out = run_sweep(sweep_dir, *args, env=env)
    return {"dir": sweep_dir, "env": env, "args": args, "rc": rc, "out": out}


def test_failing_job_does_not_stop_the_others(failing: dict[str, Any]) -> None:
    sweep_dir = failing["dir"]
    assert failing["rc"] == 1, "a sweep with failed jobs must exit non-zero"
    assert "optimizer.lr=-1 is out of range" in failing["out"]
    summary = sweep_json(sweep_dir)
    by_dir = {j["dir"]: j for j in summary["jobs"]}
    assert summary["counts"] == {"failed": 2, "completed": 2}
    for seed in (1, 2):
        bad, good = by_dir[f"optimizer.lr=-1,seed={seed}"], by_dir[f"optimizer.lr=0.001,seed={seed}"]
        assert bad["status"] == "failed" and "optimizer.lr=-1 is out of range" in bad["error"]
        st = status(sweep_dir / bad["dir"])
        assert st["status"] == "failed" and st["error"].startswith("LmlabError: optimizer.lr=-1")
        assert "Traceback" in (sweep_dir / bad["dir"] / st["traceback_file"]).read_text()
        assert not (sweep_dir / bad["dir"] / "metrics.json").exists()
        assert good["status"] == "completed" and (sweep_dir / good["dir"] / "metrics.json").is_file()
        assert good["overrides"][-2:] == ["optimizer.lr=0.001", f"seed={seed}"]

    assert report_main([str(sweep_dir), "--no-plots"]) == 0
    rep = json.loads((sweep_dir / "report.json").read_text())
    rows = {r["group"]: r for r in rep["groups"]}
    assert rows["optimizer.lr=-1"]["n"] == 0 and rows["optimizer.lr=-1"]["n_failed"] == 2
    assert rows["optimizer.lr=0.001"]["n"] == 2 and rows["optimizer.lr=0.001"]["n_failed"] == 0
    assert "4 jobs, 2 finished, 2 failed" in (sweep_dir / "report.md").read_text()


def test_reissue_reruns_only_failed_jobs(failing: dict[str, Any]) -> None:
    sweep_dir = failing["dir"]
    good = [f"optimizer.lr=0.001,seed={s}" for s in (1, 2)]
    before = {d: mtimes(sweep_dir / d) for d in good}
    rc, out = run_sweep(sweep_dir, *failing["args"], env=failing["env"])
    assert rc == 1
    assert sweep_json(sweep_dir)["invocations"][-1]["launched"] == ["optimizer.lr=-1,seed=1", "optimizer.lr=-1,seed=2"]
    for s in (1, 2):
        assert status(sweep_dir / f"optimizer.lr=-1,seed={s}")["attempts"] == 2
        assert status(sweep_dir / f"optimizer.lr=0.001,seed={s}")["attempts"] == 1
    assert {d: mtimes(sweep_dir / d) for d in good} == before


# Optuna searches: tests/test_optuna.py (the fixed-config refusal of a continued study is there too).
