"""lmlab's Optuna sweeper as a user runs it (`python train.py -m hparams_search=optuna ...` in fresh processes, real
Optuna, real Hydra multirun, model=tiny_bert): failed and pruned trials, continuation, parallel workers on one
study, multi-seed trials, the refusals, and the install (current Optuna, no SQLAlchemy pin)."""

from __future__ import annotations

import importlib.metadata
import json
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from lmlab.report import main as report_main
from tests.test_sweep import mtimes, run_sweep, start_sweep, status, sweep_env, sweep_json

SEARCH = ["hparams_search=optuna", "trainer.max_epochs=2"]
PRUNE = "hydra.sweeper.pruner={_target_:optuna.pruners.MedianPruner,n_startup_trials:1}"


def load_study(sweep_dir: Path, storage: str | None = None) -> Any:
    import optuna

    from lmlab.launch.optuna_search import open_storage

    return optuna.load_study(study_name="train", storage=open_storage(storage or str(sweep_dir / "optuna.journal")))


def overrides(job_dir: Path) -> dict[str, str]:
    return dict(o.split("=", 1) for o in yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()))


def best_metric(job_dir: Path, key: str = "best/val_f1_macro") -> float:
    return json.loads((job_dir / "metrics.json").read_text())[key]


# ---------------------------------------------------------------- 4 trials (one fails, one is pruned), then 6


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("optuna")
    env = sweep_env(root / "home")
    sweep_dir = root / "sweep"
    # The search is over two choices only, so the outcome does not hang on near-equal scores. Each trial's draw
    # depends only on the sampler seed and its number; seed 2 draws (lr, dropout) = (1e-5, 0.1), (1e-5, -1),
    # (0.05, 0.1), (1e-5, 0.1) for trials 0-3, then (1e-5, -1), (1e-5, 0.1). dropout=-1 fails its config check;
    # lr=0.05 blows the first epoch's val loss up, and the median pruner stops it (trial 3 equals trial 0: kept).
    # The monitor is val/loss, so the direction comes from the task: minimize.
    args = [
        *SEARCH,
        "task.monitor=val/loss",
        "task.mode=min",
        "task.optimized_metric=best/val_loss",
        "hydra.sweeper.params=null",
        "hydra.sweeper.sampler.seed=2",
        "optimizer.lr=choice(1e-5,0.05)",
        "model.dropout=choice(0.1,-1)",
        PRUNE,
    ]
    rc, out = run_sweep(sweep_dir, *args, "hydra.sweeper.n_trials=4", env=env)
    return {"dir": sweep_dir, "env": env, "args": args, "rc": rc, "out": out}


def test_four_trials_one_failed_one_pruned(search: dict[str, Any]) -> None:
    sweep_dir = search["dir"]
    assert search["rc"] == 0, search["out"][-3000:]
    trials = load_study(sweep_dir).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "PRUNED", "COMPLETE"]
    assert [(t.params["optimizer.lr"], t.params["model.dropout"]) for t in trials] == [
        (1e-5, 0.1),
        (1e-5, -1),
        (0.05, 0.1),
        (1e-5, 0.1),
    ]
    assert load_study(sweep_dir).direction.name == "MINIMIZE"
    first_epoch = {t.number: t.intermediate_values[0] for t in trials if t.state.name == "COMPLETE"}
    for trial in trials:
        job = sweep_dir / f"trial_{trial.number}"
        assert float(overrides(job)["model.dropout"]) == trial.params["model.dropout"]
        assert float(overrides(job)["optimizer.lr"]) == pytest.approx(trial.params["optimizer.lr"], rel=1e-12)
        if trial.state.name == "COMPLETE":
            assert trial.value == pytest.approx(best_metric(job, "best/val_loss"), rel=1e-12)
            assert status(job)["status"] == "completed"
            assert sorted(trial.intermediate_values) == [0, 1]  # one report per epoch of the fit, none after
        elif trial.state.name == "PRUNED":
            st = status(job)
            assert st["status"] == "pruned" and st["error"] is None and "pruned by Optuna at epoch 0" in st["pruned"]
            assert not (job / "metrics.json").exists()
            assert list(trial.intermediate_values) == [0]
            # MedianPruner (minimize): its first epoch was worse than the median of the completed trials' then.
            earlier = [v for n, v in first_epoch.items() if n < trial.number]
            assert trial.intermediate_values[0] > statistics.median(earlier)
        else:
            assert trial.params["model.dropout"] == -1
            assert status(job)["status"] == "failed" and "model.dropout=-1" in status(job)["error"]
            assert "model.dropout=-1" in trial.user_attrs["error"]
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(min(t.value for t in trials if t.state.name == "COMPLETE"))
    assert results["states"] == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 1}
    summary = sweep_json(sweep_dir)
    assert summary["counts"] == {"completed": 2, "pruned": 1, "failed": 1}
    assert summary["invocations"][-1]["launched"] == [f"trial_{n}" for n in range(4)]
    assert report_main([str(sweep_dir), "--no-plots"]) == 0
    assert json.loads((sweep_dir / "report.json").read_text())["optuna"]["best_value"] == results["best_value"]


def test_continued_to_six_trials(search: dict[str, Any]) -> None:
    sweep_dir = search["dir"]
    first = {n: mtimes(sweep_dir / f"trial_{n}") for n in range(4)}
    rc, out = run_sweep(sweep_dir, *search["args"], "hydra.sweeper.n_trials=6", env=search["env"])
    assert rc == 0, out[-3000:]
    assert "continuing Optuna study 'train' (4 trials so far)" in out
    trials = load_study(sweep_dir).trials
    assert [t.number for t in trials] == list(range(6))
    # Trial numbers go on, and so do the per-trial sampler seeds: the continuation does not replay trials 0-1.
    assert trials[4].state.name == "FAIL"  # a random start-up draw: (1e-5, -1)
    # Trial 5 is TPE's first (after 5 random ones): its draw depends on the scores, so any outcome is right, as
    # long as the study and the job dir agree.
    as_status = {"COMPLETE": "completed", "FAIL": "failed", "PRUNED": "pruned"}
    assert [status(sweep_dir / f"trial_{t.number}")["status"] for t in trials[4:]] == [
        as_status[t.state.name] for t in trials[4:]
    ]
    assert {n: mtimes(sweep_dir / f"trial_{n}") for n in range(4)} == first
    assert sweep_json(sweep_dir)["invocations"][-1]["launched"] == ["trial_4", "trial_5"]
    # n_trials is the study's total: asking for 6 again runs nothing.
    rc, out = run_sweep(sweep_dir, *search["args"], "hydra.sweeper.n_trials=6", env=search["env"])
    assert rc == 0 and len(load_study(sweep_dir).trials) == 6, out[-3000:]
    assert sweep_json(sweep_dir)["invocations"][-1]["launched"] == []


def test_continuation_with_another_fixed_config_is_refused(search: dict[str, Any]) -> None:
    sweep_dir = search["dir"]
    before = len(load_study(sweep_dir).trials)
    rc, out = run_sweep(
        sweep_dir, *search["args"], "hydra.sweeper.n_trials=9", "dataset.max_length=24", env=search["env"]
    )
    assert rc == 1
    assert "was run with a different fixed configuration: dataset.max_length: 32 -> 24" in out, out[-3000:]
    assert "Traceback" not in out and len(load_study(sweep_dir).trials) == before


# ---------------------------------------------------------------- parallel workers on one study


@pytest.mark.parametrize(
    "storage",
    [
        pytest.param(None, id="journal"),
        # In make test: two workers opening a new SQLite study at once raced on its schema ("table study_directions
        # already exists") until the study was opened under the workers' lock.
        pytest.param("sqlite", id="sqlite"),
    ],
)
def test_two_workers_share_one_study(tmp_path: Path, storage: str | None) -> None:
    sweep_dir = tmp_path / "sweep"
    url = f"sqlite:///{sweep_dir / 'optuna.db'}" if storage else None
    args = [*SEARCH[:1], "hydra.sweeper.n_trials=4", *([f"hydra.sweeper.storage={url}"] if url else [])]
    env = sweep_env(tmp_path / "home")
    workers = [start_sweep(sweep_dir, *args, env=env) for _ in range(2)]
    outs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs[0][-3000:] + outs[1][-3000:]

    trials = load_study(sweep_dir, url).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # n_trials is the study's total, not per worker
    assert all(t.state.name == "COMPLETE" for t in trials)
    pids = {t.user_attrs["lmlab_worker"]["pid"] for t in trials}
    assert pids == {w.pid for w in workers}, "both workers should have run trials"
    launched = [inv["launched"] for inv in sweep_json(sweep_dir)["invocations"]]
    assert len(launched) == 2 and sorted(launched[0] + launched[1]) == [f"trial_{n}" for n in range(4)]
    for t in trials:  # every trial ran once, in its own dir, with its own params
        job = sweep_dir / f"trial_{t.number}"
        assert status(job)["attempts"] == 1 and status(job)["status"] == "completed"
        assert status(job)["pid"] == t.user_attrs["lmlab_worker"]["pid"]
        assert float(overrides(job)["optimizer.lr"]) == pytest.approx(t.params["optimizer.lr"], rel=1e-12)
        assert t.value == pytest.approx(best_metric(job), rel=1e-12)
    assert len({t.params["optimizer.lr"] for t in trials}) == 4
    assert sweep_json(sweep_dir)["counts"] == {"completed": 4}


# ---------------------------------------------------------------- multi-seed trials


@pytest.mark.slow  # two tiny trainings (~55 s under load); the layout is also what lmlab-report reads
def test_seeds_per_trial_tells_the_mean(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    rc, out = run_sweep(
        sweep_dir,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=1",
        "hydra.sweeper.seeds_per_trial=2",
        "seed=7",
        env=sweep_env(tmp_path / "home"),
    )
    assert rc == 0, out[-3000:]
    (trial,) = load_study(sweep_dir).trials
    jobs = {s: sweep_dir / "trial_0" / f"seed={s}" for s in (7, 8)}
    values = {}
    for seed, job in jobs.items():
        assert status(job)["status"] == "completed"
        assert [
            o for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) if o.startswith("seed=")
        ] == [f"seed={seed}"]
        assert json.loads((job / "resolved_config.json").read_text())["config"]["seed"] == seed
        values[seed] = best_metric(job)
    assert trial.state.name == "COMPLETE"
    assert trial.value == pytest.approx((values[7] + values[8]) / 2, rel=1e-12)
    assert trial.user_attrs["seed_values"] == pytest.approx({"7": values[7], "8": values[8]})
    assert sorted(j["dir"] for j in sweep_json(sweep_dir)["jobs"]) == ["trial_0/seed=7", "trial_0/seed=8"]


# ---------------------------------------------------------------- refused before any trial


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["hydra.sweeper.storage=null", "hydra.sweeper.pruner=median"],
            "hydra.sweeper.pruner needs a storage the jobs can reach",
        ),
        (
            ["hydra.sweeper.seeds_per_trial=3", "hydra.sweeper.pruner=hyperband"],
            "hydra.sweeper.pruner with seeds_per_trial=3 is not supported",
        ),
        (["hydra.sweeper.pruner=mediam"], "hydra.sweeper.pruner='mediam' is not known"),
    ],
)
def test_refused_settings(tmp_path: Path, args: list[str], message: str) -> None:
    sweep_dir = tmp_path / "sweep"
    rc, out = run_sweep(sweep_dir, "hparams_search=optuna", *args, env=sweep_env(tmp_path / "home"))
    assert rc == 1 and message in out, out[-3000:]
    assert "Traceback" not in out and not list(sweep_dir.glob("trial_*"))


# ---------------------------------------------------------------- the install


def test_current_optuna_without_sqlalchemy_pins() -> None:
    requires = [Requirement(r) for r in importlib.metadata.requires("lmlab") or []]
    names = {r.name.lower(): r for r in requires if r.marker is None}
    assert "hydra-optuna-sweeper" not in names and "sqlalchemy" not in names and "alembic" not in names
    assert names["optuna"].specifier.contains("4.0.0") and names["optuna"].specifier.contains("5.0.0")
    assert Version(importlib.metadata.version("optuna")) >= Version("4")
    assert Version(importlib.metadata.version("sqlalchemy")) >= Version("2")
    import tomllib

    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {Requirement(r).name.lower(): Requirement(r).specifier for r in declared}
    assert not {"sqlalchemy", "alembic", "hydra-optuna-sweeper"} & set(pins)
    assert pins["optuna"].contains("4.0.0") and pins["optuna"].contains("5.0.0") and not pins["optuna"].contains("3.6")


# ---------------------------------------------------------------- a killed worker


@pytest.mark.slow  # one killed tiny training and one more (~45 s under load)
def test_trial_of_a_killed_worker_is_recorded_as_failed(tmp_path: Path) -> None:
    import os
    import signal
    import time

    sweep_dir = tmp_path / "sweep"
    env = sweep_env(tmp_path / "home")
    args = ["hparams_search=optuna", "hydra.sweeper.n_trials=2"]
    proc = start_sweep(sweep_dir, *args, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        job = sweep_dir / "trial_0" / "status.json"
        if job.is_file() and status(job.parent)["status"] == "running":
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # no handler runs: trial 0 stays RUNNING in the study
    proc.communicate(timeout=60)
    assert [t.state.name for t in load_study(sweep_dir).trials] == ["RUNNING"]

    rc, out = run_sweep(sweep_dir, *args, env=env)
    assert rc == 0, out[-3000:]
    assert "trials [0] were left RUNNING by a worker that is gone: recorded as FAIL" in out
    assert [t.state.name for t in load_study(sweep_dir).trials] == ["FAIL", "COMPLETE"]
    assert status(sweep_dir / "trial_1")["status"] == "completed"
