"""Decay branches (issue 23): branch checkpoints at stated token counts, a branch that resumes one and decays, and
`python train.py -m experiment=wsd_branches` (one stable run, then a decay from each branch point), through the CLI
as a user runs them, on llama_tiny (512 tokens per optimizer step)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY_LM, kill_when_stage, read_metrics, run_cli, single_run_dir

LM = ["task=causal_lm", *TINY_LM, "trainer.log_every_n_steps=1"]  # the lr of every step in csv/metrics.csv
LR = 8e-3  # the task's default optimizer, Muon: conf/lr_defaults/causal_lm_muon.yaml
MIN = 0.1
# Linear warmup over 2 steps, then the stable lr; the decay (linear, to 0.1 x lr) only where decay_steps says.
SCHEDULE = ["scheduler=wsd", "scheduler.decay_shape=linear", f"scheduler.min_lr_ratio={MIN}"]
STABLE = [*SCHEDULE, "scheduler.warmup=2", "scheduler.decay_steps=0", "task.max_tokens=4096"]  # 8 steps


def train(log_dir: Path, *args: str) -> Path:
    result = run_cli("train.py", *LM, *args, f"paths.log_dir={log_dir}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return single_run_dir(log_dir)


def lrs(run_dir: Path) -> dict[int, float]:
    """step -> the lr that optimizer step used (LearningRateMonitor, first parameter group)."""
    with (run_dir / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    column = next(k for k in rows[0] if k.startswith("lr-"))
    return {int(r["step"]): float(r[column]) for r in rows if r.get(column)}


def results(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith(("val/", "test/", "best/val"))}


def test_wsd_decay_steps_curve_by_hand() -> None:
    from lmlab.optim import build_scheduler

    def curve(**cfg: object) -> list[float]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = build_scheduler(optimizer, {"name": "wsd", "decay_shape": "linear", **cfg}, 8)["scheduler"]
        out = []
        for _ in range(8):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    # decay_steps=3 of 8 (warmup 2): the decay starts at step 5 at the stable lr, then 2/3 and 1/3 of the way down
    assert curve(warmup=2, decay_steps=3, min_lr_ratio=MIN) == pytest.approx(
        [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, MIN + (1 - MIN) * 2 / 3, MIN + (1 - MIN) / 3], abs=1e-15
    )
    assert curve(warmup=2, decay_steps=0) == [0.0, 0.5] + [1.0] * 6  # no decay: the stable run of the experiment
    assert curve(warmup=0, decay_steps=8)[0] == 1.0  # a branch: all decay, starting from the stable lr


@pytest.fixture(scope="module")
def stable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 stable steps (2 of warmup), branch checkpoints at 1000 (-> step 2), 2048 (step 4) and 4096 (step 8) tokens,
    under checkpoint_policy=compact (the default)."""
    return train(tmp_path_factory.mktemp("stable"), *STABLE, "callbacks.branch_checkpoints.at_tokens=[2048,1000,4096]")


def test_branch_checkpoints_at_the_stated_token_counts(stable: Path) -> None:
    # checkpoint_policy=compact: the scored checkpoint (task.score=final: last.ckpt) holds no optimizer state, the
    # branch checkpoints keep theirs
    assert "optimizer_states" not in torch.load(stable / "checkpoints" / "last.ckpt", weights_only=False)
    entries = json.loads((stable / "manifest.json").read_text())["branch_checkpoints"]
    assert [(e["tokens"], e["step"], e["tokens_trained"]) for e in entries] == [
        (1000, 2, 1024.0),  # the first step whose tokens reach 1000: ceil(1000 / 512) = 2
        (2048, 4, 2048.0),
        (4096, 8, 4096.0),
    ]
    for entry in entries:
        assert entry["path"] == f"checkpoints/branch-tokens{entry['tokens']}.ckpt"
        assert entry["lr"] and all(lr == LR for lr in entry["lr"])  # the stable lr (warmup over after step 2)
        ckpt = torch.load(stable / entry["path"], map_location="cpu", weights_only=False)
        assert ckpt["global_step"] == entry["step"]
        assert ckpt["optimizer_states"][0]["state"]  # Muon momentum, AdamW moments: a branch continues the optimizer
        assert ckpt["lr_schedulers"][0]["last_epoch"] == entry["step"]
        assert "lmlab_resume" in ckpt  # the data position and RNG of an exact resume
    assert lrs(stable) == {0: 0.0, 1: LR / 2, **{s: LR for s in range(2, 8)}}  # warmup, then stable


def test_a_branch_equals_the_single_run_whose_decay_starts_there(stable: Path, tmp_path: Path) -> None:
    # The branch from 2048 tokens (step 4) decays 2 steps; the single run trains 6 steps with the same warmup and
    # its decay over the last 2: the same lr at every step, the same data order, so the same numbers bit for bit.
    ckpt = stable / "checkpoints" / "branch-tokens2048.ckpt"
    six_steps = ["task.max_tokens=null", "trainer.max_steps=6", "trainer.max_epochs=-1", "scheduler.decay_steps=2"]
    branch = train(tmp_path / "branch", *SCHEDULE, *six_steps, "scheduler.warmup=0", f"ckpt_path={ckpt}")
    single = train(tmp_path / "single", *SCHEDULE, *six_steps, "scheduler.warmup=2")
    # lr by hand: step 4 is the decay's first (progress 0: the stable lr), step 5 is half way down to 0.1 x lr
    assert lrs(branch) == {4: LR, 5: pytest.approx(LR * (MIN + (1 - MIN) * (1 - 1 / 2)), rel=1e-12)}
    assert lrs(branch)[4] == lrs(stable)[4]  # its first step's lr is exactly the stable run's there
    assert lrs(single) == {**{s: lrs(stable)[s] for s in range(5)}, 5: lrs(branch)[5]}
    got, want = results(read_metrics(branch)), results(read_metrics(single))
    assert got == want and "test/loss" in got and "val/bpb" in got
    assert read_metrics(branch)["budget/tokens_trained"] == 6 * 512
    lineage = json.loads((branch / "manifest.json").read_text())["lineage"]
    assert lineage["resumed_from"] == str(ckpt.resolve()) and lineage["parent_run_dir"] == str(stable.resolve())
    assert (lineage["checkpoint_step"], lineage["checkpoint_tokens"], lineage["checkpoint_tokens_trained"]) == (
        4, 2048, 2048.0)  # fmt: skip
    assert lineage["parent_status"] == "completed" and lineage["parent_train_in_test"] == 0
    assert lineage["parent_data_fingerprint"] == json.loads((stable / "manifest.json").read_text())["data"][
        "fingerprint"]  # fmt: skip


# ---- experiment=wsd_branches: 8 stable steps, branches at 1024 tokens (step 2, + 1 decay step) and 4096 (step 8,
# + 4): budgets of 3 and 12 steps.
EXPERIMENT = [
    "experiment=wsd_branches",
    *TINY_LM,
    "trainer.log_every_n_steps=1",
    "task.max_tokens=4096",
    "task.eval_every_tokens=1024",
    "scheduler.warmup=1",
    "wsd_branches.at_tokens=[1024,4096]",
    "wsd_branches.decay=0.5",
]
BRANCH_DIRS = ["branch-1024", "branch-4096"]


def start(sweep_dir: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *EXPERIMENT, *args, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a kill reaches every child
    )


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def test_stable_run_then_branches_killed_between_them_then_resumed(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "wsd"
    proc = start(sweep_dir)
    # Killed as soon as the branches are planned: the stable run has finished by then.
    kill_when_stage(proc, sweep_dir / "branches.json", "branches")
    stable = sweep_dir / "stable"
    assert json.loads((stable / "status.json").read_text())["status"] == "completed"
    plan = json.loads((sweep_dir / "branches.json").read_text())
    assert [(b["tokens"], b["step"], b["decay_steps"], b["max_steps"], b["budget_tokens"]) for b in plan["branches"]] \
        == [(1024, 2, 1, 3, 1536), (4096, 8, 4, 12, 6144)]  # fmt: skip
    stamp = (stable / "metrics.json").stat().st_mtime_ns

    # A missing branch checkpoint: refused before any branch runs
    ckpt = stable / "checkpoints" / "branch-tokens4096.ckpt"
    ckpt.rename(tmp_path / "aside.ckpt")
    proc = start(sweep_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0
    assert "the branch checkpoint for 4096 tokens is missing or unusable" in out, out[-3000:]
    assert not any((sweep_dir / d / "metrics.json").exists() for d in BRANCH_DIRS)
    (tmp_path / "aside.ckpt").rename(ckpt)

    # Re-issued: the stable run is not retrained, every branch runs
    finish(start(sweep_dir))
    assert (stable / "metrics.json").stat().st_mtime_ns == stamp
    record = json.loads((sweep_dir / "branches.json").read_text())
    assert record["stage"] == "done" and [b["status"] for b in record["branches"]] == ["completed", "completed"]
    for entry in record["branches"]:
        metrics = read_metrics(sweep_dir / entry["dir"])
        assert metrics["budget/steps_trained"] == entry["max_steps"]
        assert metrics["budget/tokens_trained"] == entry["budget_tokens"] == entry["tokens_trained"]
        budget = record["budgets"][str(entry["budget_tokens"])]
        assert budget["val/loss"] == metrics["val/loss"] and budget["test/bpb"] == metrics["test/bpb"]
        # The lr by hand (scheduler=wsd's default 1-sqrt shape down to 0): its first step is the stable lr, exactly
        n, d = entry["step"], entry["decay_steps"]
        assert lrs(sweep_dir / entry["dir"]) == {n + j: pytest.approx(LR * (1 - (j / d) ** 0.5), rel=1e-12)
                                                 for j in range(d)}  # fmt: skip
        assert lrs(sweep_dir / entry["dir"])[n] == lrs(stable)[n - 1] == LR
        lineage = json.loads((sweep_dir / entry["dir"] / "manifest.json").read_text())["lineage"]
        assert lineage["parent_run_dir"] == str(stable.resolve())
        assert lineage["resumed_from"] == str((sweep_dir / entry["checkpoint"]).resolve())
        assert (lineage["checkpoint_step"], lineage["checkpoint_tokens"]) == (entry["step"], entry["tokens"])
    # A third issue trains nothing
    finish(start(sweep_dir))
    invocations = json.loads((sweep_dir / "sweep.json").read_text())["invocations"]
    assert invocations[-1]["launched"] == [] and invocations[-2]["launched"] == []  # branches, stable


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["wsd_branches.at_tokens=[1024,99999]"], "[99999] beyond the stable run's budget task.max_tokens=4096"),
        (["wsd_branches.at_tokens=[0,1024]"], "wsd_branches.at_tokens=[0, 1024]: 0 is not a positive integer"),
        (["wsd_branches.decay=1.5"], "wsd_branches.decay=1.5 must be in (0, 1]"),
        (["wsd_branches.decay=0"], "wsd_branches.decay=0 must be in (0, 1]"),
        (["scheduler=cosine"], "experiment=wsd_branches needs scheduler=wsd"),
    ],
)
def test_bad_experiment_settings_are_refused(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli("train.py", "-m", *EXPERIMENT, *args, f"hydra.sweep.dir={tmp_path / 'wsd'}")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr, (result.stdout + result.stderr)[-2000:]
    assert not (tmp_path / "wsd" / "stable").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # step 1 of a 2-step warmup: the lr is half the stable one
        (
            ["callbacks.branch_checkpoints.at_tokens=[512]"],
            "512 tokens is optimizer step 1, where the lr schedule is at 0.5 x optimizer.lr",
        ),  # fmt: skip
        (
            ["callbacks.branch_checkpoints.at_tokens=[99999]"],
            "99999 tokens is optimizer step 196 (512 tokens per step), past this run's budget of 8 steps",
        ),  # fmt: skip
        (["callbacks.branch_checkpoints.at_tokens=[-5]"], "-5 is not a positive integer"),
        (["scheduler.decay_steps=7"], "scheduler.decay_steps=7 is longer than the 6 optimizer steps this run has"),
        (["ckpt_path=/nonexistent/branch-tokens1024.ckpt"], "no checkpoint at /nonexistent/branch-tokens1024.ckpt"),
    ],
)
def test_bad_branch_settings_of_a_single_run_are_refused(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli("train.py", *LM, *SCHEDULE, "scheduler.warmup=2", "task.max_tokens=4096", *args,
                     f"paths.log_dir={tmp_path}")  # fmt: skip
    assert result.returncode != 0
    assert message in result.stdout + result.stderr, (result.stdout + result.stderr)[-2000:]
    assert not list(tmp_path.rglob("metrics.json"))
