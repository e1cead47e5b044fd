"""Experiment integrity: every interruption resumes to the uninterrupted result; a job is the same job only when
its whole result config matches; run dirs are never shared or overwritten."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, TINY, compose_train, run_cli

# A pretrained MiniLM on a capped BBC subset: 2 epochs x 4 steps, learns well above chance (test acc ~0.8 vs
# 0.2), so equal metrics after a resume mean equal learning, not two equally random models.
LEARNS = [
    "model=minilm",
    "model.freeze_layers=3",
    "optimizer.lr=1e-3",
    "dataset.max_length=32",
    "dataset.batch_size=16",
    "dataset.max_samples.train=64",
    "dataset.max_samples.val=32",
    "dataset.max_samples.test=32",
    "trainer.max_epochs=2",
    "trainer.num_sanity_val_steps=0",
    "export_model=false",
    "callbacks.progress_bar=null",
    "callbacks.early_stopping=null",
]


def _train(log_dir: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_cli("train.py", *LEARNS, f"paths.log_dir={log_dir}", *extra, env=env, timeout=600)


def _run_dirs(log_dir: Path) -> list[Path]:
    return sorted((log_dir / "train" / "runs").iterdir())


def _comparable(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not k.startswith("perf/")}  # timings and memory differ


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    log_dir = tmp_path_factory.mktemp("reference")
    result = _train(log_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((_run_dirs(log_dir)[0] / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.6, metrics["test/acc"]  # learned something: chance is 0.2
    return metrics


def _other_fs() -> Path:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat("/tmp").st_dev or not os.access(shm, os.W_OK):
        pytest.skip("needs /dev/shm as a writable filesystem other than /tmp")
    return shm


# (signal, where) -> how the fault is injected: deterministic hooks, never timing.
FAULTS = {
    "mid_epoch": lambda sig: {"LMLAB_FAULT_SIGNAL": f"step:6:{sig}"},  # epoch 1, batch 2 of 4
    "during_validation": lambda sig: {"LMLAB_FAULT_SIGNAL": f"val:0:{sig}"},  # the first validation
    "during_checkpoint_write": lambda sig: {"LMLAB_FAULT_CKPT_WRITE": f"2:{sig}:last.ckpt"},  # the final one
}
FAST_CELLS = {("SIGTERM", "mid_epoch", "tmp"), ("SIGKILL", "during_checkpoint_write", "other_fs")}
CELLS = [
    pytest.param(
        sig, where, fs, marks=() if (sig, where, fs) in FAST_CELLS else pytest.mark.slow, id=f"{sig}-{where}-{fs}"
    )
    for sig in ("SIGINT", "SIGTERM", "SIGKILL")
    for where in FAULTS
    for fs in ("tmp", "other_fs")
]


@pytest.mark.parametrize("sig,where,fs", CELLS)
def test_interrupted_run_resumes_to_the_uninterrupted_result(
    sig: str, where: str, fs: str, tmp_path: Path, reference: dict[str, Any]
) -> None:
    if where == "during_checkpoint_write" and sig != "SIGKILL":
        pytest.skip("a catchable signal during a write is handled after the write (the atomic rename) completes")
    root = Path(os.environ.get("TMPDIR", "/tmp")) if fs == "tmp" else _other_fs()
    log_dir = Path(root) / f"lmlab-fault-{os.getpid()}-{tmp_path.name}"
    try:
        first = _train(log_dir, env=FAULTS[where](sig))
        run_dir = _run_dirs(log_dir)[0]
        status = json.loads((run_dir / "status.json").read_text())
        if sig == "SIGKILL":
            assert first.returncode == -9
            assert status["status"] == "running"  # nothing could record it ...
            from lmlab import rundir

            assert rundir.effective_status(status) == "dead"  # ... but a reader sees the process is gone
        else:
            assert first.returncode == 128 + getattr(signal, sig), first.stderr[-2000:]
            assert status["status"] == "interrupted" and status["signal"] == sig
            assert f"ckpt_path={run_dir}" in first.stdout + first.stderr
            assert status["resume"].endswith(f"ckpt_path={run_dir}")
        assert not (run_dir / "metrics.json").exists()

        second = _train(log_dir, f"ckpt_path={run_dir}")
        assert second.returncode == 0, second.stderr[-3000:]
        assert _run_dirs(log_dir) == [run_dir]  # continued in the same dir: one curve, one status
        status = json.loads((run_dir / "status.json").read_text())
        assert status["status"] == "completed" and status["attempts"] == 2
        resumed = json.loads((run_dir / "metrics.json").read_text())
        assert _comparable(resumed) == _comparable(reference)
        assert not list((run_dir / "checkpoints").glob(".*.tmp"))  # no orphan of the killed write
    finally:
        import shutil

        shutil.rmtree(log_dir, ignore_errors=True)


def test_resume_into_a_new_dir_keeps_the_best_checkpoint(train_tiny, tmp_path: Path) -> None:
    """ckpt_path= of another run (e.g. a changed setting) resumes into a new dir and keeps the earlier best."""
    import torch

    _, first = train_tiny("trainer.max_epochs=2", "callbacks.early_stopping=null")
    best_before = json.loads((first / "metrics.json").read_text())
    metrics, second = train_tiny("trainer.max_epochs=3", "callbacks.early_stopping=null", f"ckpt_path={first}")
    assert second != first
    best = second / metrics["best/ckpt_path"]
    assert best.is_file() and best.parent == second / "checkpoints"  # the new dir is complete on its own
    state = torch.load(best, map_location="cpu", weights_only=False)
    score = next(v for k, v in state["callbacks"].items() if "val/f1_macro" in k)["best_model_score"]
    assert float(score) >= best_before["best/val_f1_macro"] - 1e-9  # the best so far, not the first new one
    assert metrics["best/val_f1_macro"] == pytest.approx(float(score))


def _sweep(sweep_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(
        "train.py",
        "-m",
        *TINY,
        "dataset.max_samples.train=32",
        "seed=1,2",
        f"hydra.sweep.dir={sweep_dir}",
        "callbacks.progress_bar=null",
        *extra,
        timeout=600,
    )


def test_reissued_sweep_with_a_changed_constant_is_refused(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    assert _sweep(sweep_dir).returncode == 0
    before = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]
    metrics = {p: p.read_text() for p in sweep_dir.rglob("metrics.json")}

    again = _sweep(sweep_dir, "trainer.max_epochs=2")
    output = again.stdout + again.stderr
    assert again.returncode != 0
    assert "trainer.max_epochs: 1 -> 2" in output, output[-3000:]
    assert "hydra.sweeper.resume=false" in output and "Traceback" not in output
    assert json.loads((sweep_dir / "sweep.json").read_text())["jobs"] == before  # real overrides kept
    assert {p: p.read_text() for p in sweep_dir.rglob("metrics.json")} == metrics

    forced = _sweep(sweep_dir, "trainer.max_epochs=2", "hydra.sweeper.resume=false")
    assert forced.returncode == 0, forced.stderr[-3000:]
    kept = sorted(p.name for p in sweep_dir.iterdir() if ".replaced-" in p.name)
    assert [k.split(".replaced-")[0] for k in kept] == ["seed=1", "seed=2"]  # the old runs, kept apart
    for job in json.loads((sweep_dir / "sweep.json").read_text())["jobs"]:
        assert "trainer.max_epochs=2" in job["overrides"] and job["status"] == "completed"


def test_result_config_ignores_only_keys_that_cannot_change_a_result(tmp_path: Path) -> None:
    from lmlab import rundir

    base = rundir.result_config(compose_train(TINY, tmp_path / "a"))
    # Where things are written, what is logged or shown, how data is fed (tokenized in advance, sampled in the
    # main process): none of these changes a number.
    same = [
        "paths.log_dir=/elsewhere",
        "tags=[x]",
        "export_model=true",
        "dataset.num_workers=2",
        "dataset.cache_dir=/tmp/other-cache",
        "trainer.log_every_n_steps=3",
        "logger=many",
        "callbacks.progress_bar=null",
        "task_name=other",
        "dataset.log_positions=true",
        "callbacks.last_checkpoint.every_n_train_steps=5",
        "callbacks.last_checkpoint.train_time_interval=00:30:00",
        "compare={baseline: a, tune_seeds: [1]}",  # the compare sweeper's plan; each job's overrides say what it runs
        "wsd_branches={at_tokens: [1000], decay: 0.5}",  # the decay-branch sweeper's plan, likewise
        "callbacks.branch_checkpoints.at_tokens=[1000]",  # extra complete checkpoints: what is kept, not learnt
    ]
    for override in same:
        cfg = compose_train([*TINY, override], tmp_path / "b")
        assert rundir.digest(rundir.result_config(cfg)) == rundir.digest(base), override
    for override in [
        "trainer.max_epochs=2",
        "seed=7",
        "optimizer.lr=1e-3",
        "dataset.max_length=64",
        "callbacks.early_stopping.patience=1",
        "dataset.split_seed=1",
        "task.score=final",  # classification's default best_val is left out (ADDED_KEYS); another value is not
    ]:
        changed = rundir.result_config(compose_train([*TINY, override], tmp_path / "c"))
        assert rundir.digest(changed) != rundir.digest(base), override
        assert any(
            k.startswith(override.split("=")[0])
            for k in (d.split(":")[0] for d in rundir.differing_keys(base, changed))
        ), override


def test_second_process_on_the_same_run_dir_is_refused_and_the_first_is_untouched(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [sys.executable, str(ROOT / "train.py"), *TINY, "callbacks.progress_bar=null", f"hydra.run.dir={run_dir}"]
    # The first run stops itself (SIGSTOP) after step 2, holding its run dir: no race with the second one.
    first = subprocess.Popen(
        args,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LMLAB_FAULT_SIGNAL": "step:2:SIGSTOP"},
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline and Path(f"/proc/{first.pid}/stat").read_text().split()[2] != "T":
            time.sleep(0.2)
        second = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        output = second.stdout + second.stderr
        assert second.returncode != 0
        assert "is in use by another lmlab process" in output, output[-2000:]
        assert "Traceback" not in output
    finally:
        first.send_signal(signal.SIGCONT)
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "completed" and status["attempts"] == 1


def test_run_files_follow_the_umask(train_tiny) -> None:
    old = os.umask(0o022)
    try:
        _, run_dir = train_tiny()
    finally:
        os.umask(old)
    for name in ("metrics.json", "status.json", "manifest.json", "resolved_config.json"):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o644, name
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        assert ckpt.stat().st_mode & 0o777 == 0o644, ckpt


def test_heartbeat_marks_a_live_run_and_a_dead_one(tmp_path: Path) -> None:
    from lmlab import rundir

    rundir.update_status(tmp_path, "running")
    with rundir.Heartbeat(tmp_path, interval=0.05):
        first = rundir.read_status(tmp_path)["heartbeat"]
        time.sleep(1.2)
    status = rundir.read_status(tmp_path)
    assert status["heartbeat"] > first and rundir.effective_status(status) == "running"  # this process
    assert rundir.effective_status({**status, "pid": 2**22 + 12345}) == "dead"  # no such pid here
    stale = {**status, "host": "another-host", "heartbeat": "2020-01-01T00:00:00+00:00"}
    assert rundir.effective_status(stale) == "dead"
    fresh = {**stale, "heartbeat": rundir.now()}
    assert rundir.effective_status(fresh) == "running"


@pytest.mark.parametrize("action", ["stop", "skip"])
def test_nonfinite_loss_is_never_a_completed_run(action: str, tmp_path: Path) -> None:
    from lmlab.errors import LmlabError
    from lmlab.launch.job import run_task
    from lmlab.train import train

    cfg = compose_train(
        [
            *TINY,
            "optimizer=sgd",
            "optimizer.lr=1e30",
            "optimizer.momentum=0.0",
            f"callbacks.nonfinite_loss.action={action}",
            "callbacks.nonfinite_loss.max_skips=2",
        ],
        tmp_path / "run",
    )
    with pytest.raises(LmlabError) as err:
        run_task(train, cfg)
    expected = "training loss is nan" if action == "stop" else "2 batches in a row had a non-finite loss"
    assert expected in str(err.value).lower() and "optimizer.lr" in str(err.value)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and not (tmp_path / "run" / "metrics.json").exists()


def test_skipped_batch_leaves_the_weights_unchanged() -> None:
    import pytorch_lightning as pl
    import torch

    from lmlab.callbacks import NonFiniteLoss

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.seen: list[torch.Tensor] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.seen.append(self.layer.weight.detach().clone())
            loss = self.layer(batch[0]).sum()
            return loss * float("nan") if batch_idx == 1 else loss

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=0.1, weight_decay=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)), batch_size=1)
    module = Module()
    guard = NonFiniteLoss(action="skip")
    pl.Trainer(
        max_epochs=1,
        callbacks=[guard],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(module, data)
    assert guard.skipped == 1
    assert torch.equal(module.seen[1], module.seen[2])  # the NaN batch changed nothing (not even weight decay)
    assert not torch.equal(module.seen[0], module.seen[1]) and torch.isfinite(module.layer.weight).all()


def test_ckpt_path_with_sweep_dir_characters_needs_no_quoting(train_tiny, tmp_path: Path) -> None:
    from lmlab.cli import preparse

    metrics, run_dir = train_tiny()
    job_dir = run_dir.rename(tmp_path / "optimizer.lr=3e-5,seed=2")  # a sweep job dir's name
    assert preparse(["train.py", f"ckpt_path={job_dir}"], entry="eval")[1] == f"ckpt_path='{job_dir}'"
    assert preparse(["train.py", "ckpt_path=a=b,c"], entry="eval")[1] == "ckpt_path=a=b,c"  # not a path: as typed
    result = run_cli("eval.py", f"ckpt_path={job_dir}", f"paths.log_dir={tmp_path / 'logs'}")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads(next((tmp_path / "logs").rglob("metrics.json")).read_text())
    assert evaluated["test/f1_macro"] == metrics["test/f1_macro"] and evaluated["test/loss"] == metrics["test/loss"]


def test_truncated_resume_checkpoint_falls_back_to_the_previous_good_one(tmp_path: Path) -> None:
    import torch

    from lmlab import rundir

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    torch.save({"epoch": 0}, ckpts / "last.ckpt")
    torch.save({"epoch": 1, "pad": torch.zeros(1000)}, ckpts / "resume.ckpt")
    (ckpts / "resume.ckpt").write_bytes((ckpts / "resume.ckpt").read_bytes()[:500])  # a write cut short
    assert rundir.resume_checkpoint(tmp_path) == ckpts / "last.ckpt"


def test_eval_says_when_the_training_run_covered_fewer_test_examples(train_tiny, tmp_path: Path) -> None:
    _, run_dir = train_tiny("trainer.limit_test_batches=1", "dataset.eval_batch_size=16")
    result = run_cli("eval.py", f"ckpt_path={run_dir}", f"paths.log_dir={tmp_path / 'logs'}")
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "the training run's test metrics covered about 16 of the 48 test examples" in output, output[-2000:]
    evaluated = json.loads(next((tmp_path / "logs").rglob("metrics.json")).read_text())
    assert evaluated["test/examples"] == 48
