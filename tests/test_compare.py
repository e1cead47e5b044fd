"""`python train.py -m experiment=compare_optimizers` (the two-stage compare sweeper) on llama_tiny, as a user runs
it: per-arm choices from the tune seeds, stage 2 on disjoint confirm seeds in interleaved order, compare.json before
stage 2, a kill between the stages resumed without retraining stage 1, and the refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY_LM, kill_when_stage, run_cli

BASE = [
    "experiment=compare_optimizers",
    *TINY_LM,
    "task.max_tokens=2048",  # 4 steps of 512 tokens
    "task.eval_every_tokens=1024",
    # two arms of two lrs each, one tune seed, two confirm seeds: 4 + 4 runs
    "~compare.arms.muon",
    "~compare.arms.schedulefree",
    "compare.arms.adamw.space.optimizer.lr='1e-3,3e-3'",
    "compare.arms.lion.space.optimizer.lr='1e-4,3e-4'",
    "compare.trials_per_arm=2",
    "compare.tune_seeds=[1]",
    "compare.confirm_seeds=[5,6]",
]
TUNE_DIRS = [
    "tune/adamw/optimizer.lr=0.001,seed=1",
    "tune/adamw/optimizer.lr=0.003,seed=1",
    "tune/lion/optimizer.lr=0.0001,seed=1",
    "tune/lion/optimizer.lr=0.0003,seed=1",
]
CONFIRM_DIRS = [
    "confirm/arm=adamw,seed=5",
    "confirm/arm=lion,seed=5",
    "confirm/arm=adamw,seed=6",
    "confirm/arm=lion,seed=6",
]


def start(sweep_dir: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *BASE, *args, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a kill reaches every child
    )


def metric(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.json").read_text())["best/val_loss"]


def started_order(sweep_dir: Path, dirs: list[str]) -> list[str]:
    # train.log's first timestamp has milliseconds; status.json's `started` has seconds, and on a quiet machine two
    # tiny jobs start within one second (the tie then sorted by name, not by start: a clean-clone CI failed so).
    return sorted(dirs, key=lambda d: (sweep_dir / d / "train.log").read_text()[:25])


def test_two_stages_killed_between_them_then_resumed(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "cmp"
    proc = start(sweep_dir)
    # Killed as soon as stage 2 is planned: compare.json holds the choices by then.
    kill_when_stage(proc, sweep_dir / "compare.json", "confirm")
    record = json.loads((sweep_dir / "compare.json").read_text())
    # Stage 1: each arm's choice is its best mean val loss over the tune seeds, computed here from the job dirs
    for arm, dirs in (("adamw", TUNE_DIRS[:2]), ("lion", TUNE_DIRS[2:])):
        values = [metric(sweep_dir / d) for d in dirs]
        best = min(range(2), key=lambda i: values[i])
        assert [t["values"] for t in record["arms"][arm]["trials"]] == [[v] for v in values]
        assert record["arms"][arm]["choice"]["index"] == best
        assert record["arms"][arm]["space"] == {"optimizer.lr": ["0.001", "0.003"] if arm == "adamw" else
                                                ["0.0001", "0.0003"]}  # fmt: skip
    assert record["tune_seeds"] == [1] and record["confirm_seeds"] == [5, 6]
    assert [(c["arm"], c["seed"]) for c in record["confirm"]] == [("adamw", 5), ("lion", 5), ("adamw", 6), ("lion", 6)]
    stamps = {d: (sweep_dir / d / "metrics.json").stat().st_mtime_ns for d in TUNE_DIRS}

    # Re-issued: stage 1 is not retrained, stage 2 runs every confirm job, interleaved A, B, A, B
    proc = start(sweep_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert {d: (sweep_dir / d / "metrics.json").stat().st_mtime_ns for d in TUNE_DIRS} == stamps
    assert all((sweep_dir / d / "metrics.json").is_file() for d in CONFIRM_DIRS)
    assert started_order(sweep_dir, CONFIRM_DIRS) == CONFIRM_DIRS
    record = json.loads((sweep_dir / "compare.json").read_text())
    assert record["stage"] == "done"
    for entry in record["confirm"]:
        seed = json.loads((sweep_dir / entry["dir"] / "resolved_config.json").read_text())["config"]["seed"]
        assert seed == entry["seed"] and seed not in record["tune_seeds"]
        chosen = record["arms"][entry["arm"]]["choice"]["overrides"]
        assert entry["overrides"][-len(chosen) :] == chosen and entry["value"] == metric(sweep_dir / entry["dir"])
    # A third issue trains nothing
    proc = start(sweep_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    invocations = json.loads((sweep_dir / "sweep.json").read_text())["invocations"]
    assert invocations[-1]["launched"] == [] and invocations[-2]["launched"] == []  # stage 1, stage 2


def refused(tmp_path: Path, *args: str) -> str:
    result = run_cli("train.py", "-m", *BASE, *args, f"hydra.sweep.dir={tmp_path / 'cmp'}")
    assert result.returncode != 0
    assert not (tmp_path / "cmp" / "confirm").exists()
    return result.stdout + result.stderr


def test_a_confirm_seed_that_is_a_tune_seed_is_refused(tmp_path: Path) -> None:
    out = refused(tmp_path, "compare.confirm_seeds=[1,6]")
    assert "compare.confirm_seeds=[1, 6] shares seed(s) [1] with compare.tune_seeds=[1]" in out
    assert not (tmp_path / "cmp" / "tune").exists()


def test_a_seed_outside_seed_everythings_range_is_refused_before_stage_1(tmp_path: Path) -> None:
    out = refused(tmp_path, "compare.confirm_seeds=[5,-1]")
    assert "compare.confirm_seeds=[5, -1]: seed(s) [-1] are outside [0, 2**32)" in out
    assert not (tmp_path / "cmp" / "tune").exists()


def test_a_failed_confirm_run_exits_non_zero_and_a_reissue_runs_only_it(tmp_path: Path) -> None:
    # One lr per arm, one confirm seed: 2 tune + 2 confirm runs. lion's confirm run fails for a reason outside
    # the config: its checkpoints dir is taken by a file (a full or read-only disk fails the same way).
    sweep_dir = tmp_path / "cmp"
    one_point = [*BASE, "compare.arms.adamw.space.optimizer.lr='3e-3'", "compare.arms.lion.space.optimizer.lr='3e-4'",
                 "compare.trials_per_arm=1", "compare.confirm_seeds=[5]", f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    blocked = sweep_dir / "confirm" / "arm=lion,seed=5" / "checkpoints"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a dir")
    first = run_cli("train.py", "-m", *one_point)
    out = first.stdout + first.stderr
    assert first.returncode == 1, out[-3000:]
    assert "1 of 2 confirm runs failed, so the comparison is incomplete" in out
    assert f"{sweep_dir}/confirm/arm=lion,seed=5" in out
    record = json.loads((sweep_dir / "compare.json").read_text())
    assert record["stage"] == "confirm" and "confirm runs failed" in record["error"]  # not "done"
    assert [(c["arm"], c["status"]) for c in record["confirm"]] == [("adamw", "completed"), ("lion", "failed")]
    done = sweep_dir / "confirm" / "arm=adamw,seed=5" / "metrics.json"
    stamp = done.stat().st_mtime_ns

    blocked.unlink()
    second = run_cli("train.py", "-m", *one_point)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    record = json.loads((sweep_dir / "compare.json").read_text())
    assert record["stage"] == "done" and "error" not in record
    assert [c["status"] for c in record["confirm"]] == ["completed", "completed"]
    assert done.stat().st_mtime_ns == stamp  # the completed confirm run was kept
    launched = json.loads((sweep_dir / "sweep.json").read_text())["invocations"][-1]["launched"]
    assert launched == ["confirm/arm=lion,seed=5"]


def test_an_arm_naming_a_key_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    out = refused(tmp_path, 'compare.arms.lion.overrides=["optimizer=lion","optimizer.bettas=1"]')
    assert "compare.arms.lion: its overrides or space name something that does not exist" in out
    assert "bettas" in out
    assert not (tmp_path / "cmp" / "tune").exists()


def test_unequal_trials_are_refused(tmp_path: Path) -> None:
    out = refused(tmp_path, "compare.arms.lion.space.optimizer.lr='1e-4,3e-4,1e-3'")
    assert "compare.arms.lion.space has 3 grid point(s) but compare.trials_per_arm=2" in out


def test_an_arm_whose_tuning_trials_all_failed_stops_before_stage_2(tmp_path: Path) -> None:
    # weight_decay=-1 is refused by every lion job (before torch), adamw's jobs train
    out = refused(tmp_path, 'compare.arms.lion.overrides=["optimizer=lion","optimizer.weight_decay=-1"]')
    assert "every tuning trial of arm(s) lion failed, so there is no configuration to confirm" in out
    record = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert record["arms"]["lion"]["choice"] is None and record["arms"]["adamw"]["choice"] is not None
    assert "confirm" not in record and "stage" not in record


OPTUNA = [
    "compare.search=optuna",
    "compare.sampler.n_startup_trials=1",  # the second trial is TPE's, not random
    "compare.arms.adamw.space.optimizer.lr='tag(log, interval(1e-3, 1e-2))'",
    "compare.arms.lion.space.optimizer.lr='tag(log, interval(1e-4, 1e-3))'",
    "compare.confirm_seeds=[5]",
]


def test_optuna_per_arm_search_then_confirm_and_a_reissue_reruns_nothing(tmp_path: Path) -> None:
    import optuna

    sweep_dir = tmp_path / "cmp"
    args = ["train.py", "-m", *BASE, *OPTUNA, f"hydra.sweep.dir={sweep_dir}"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    record = json.loads((sweep_dir / "compare.json").read_text())
    assert record["search"] == "optuna" and record["stage"] == "done"
    bounds = {"adamw": (1e-3, 1e-2), "lion": (1e-4, 1e-3)}
    for arm, (low, high) in bounds.items():
        entry = record["arms"][arm]
        assert [t["dirs"] for t in entry["trials"]] == [[f"tune/{arm}/trial=0,seed=1"], [f"tune/{arm}/trial=1,seed=1"]]
        lrs = [float(t["overrides"][0].split("=", 1)[1]) for t in entry["trials"]]
        assert all(low <= lr <= high for lr in lrs) and lrs[0] != lrs[1]
        assert sorted(map(float, entry["space"]["optimizer.lr"])) == sorted(lrs)  # the values tried
        for t in entry["trials"]:  # each trial's job trained with its point, and its value is the job's metric
            run = sweep_dir / t["dirs"][0]
            config = json.loads((run / "resolved_config.json").read_text())["config"]
            assert config["optimizer.lr"] == pytest.approx(float(t["overrides"][0].split("=", 1)[1]))
            assert t["values"] == [metric(run)] and t["mean"] == metric(run)
        # The arm's study holds the same two trials, told the same values.
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(sweep_dir / "tune" / arm / "optuna.journal"))
        )
        study = optuna.load_study(study_name=arm, storage=storage)
        assert [t.value for t in study.trials] == [t["mean"] for t in entry["trials"]]
        best = min(range(2), key=lambda i: entry["trials"][i]["mean"])
        assert entry["choice"]["index"] == best
        confirm = next(c for c in record["confirm"] if c["arm"] == arm)
        assert confirm["overrides"] == [f"optimizer={arm}", *entry["trials"][best]["overrides"]]
        assert confirm["status"] == "completed"
    # Re-issued: every job is found completed, the studies are not asked again, the choices stand.
    again = run_cli(*args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert json.loads((sweep_dir / "compare.json").read_text())["arms"] == record["arms"]
    invocations = json.loads((sweep_dir / "sweep.json").read_text())["invocations"]
    first_count = len(invocations) // 2
    assert all(inv["launched"] == [] for inv in invocations[first_count:])


def test_optuna_search_refusals(tmp_path: Path) -> None:
    out = refused(tmp_path, "compare.search=random")
    assert "compare.search='random': use grid (each arm's grid in full) or optuna (TPE per arm)." in out
    out = refused(tmp_path, *OPTUNA, "compare.arms.lion.space.optimizer.lr=3e-4")
    assert "compare.arms.lion.space has nothing to search ({'optimizer.lr': '0.0003'})" in out
    assert not (tmp_path / "cmp" / "tune").exists()
