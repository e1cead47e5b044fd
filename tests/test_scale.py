"""Scale-out without a cluster: 2-process CPU DDP (single run and inside a multirun), exact mid-epoch resume,
and the SLURM launcher's refusal of resource sweeps (refused before anything is submitted)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl

from tests.conftest import TINY, compose_train, read_metrics, run_cli, single_run_dir

DDP_TINY = [o for o in TINY if not o.startswith("dataset.batch_size")]


def _finished_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("status.json"))


def test_ddp_cpu_single_run_one_dir_rank0_outputs_and_eval_reproduces(tmp_path: Path, train_tiny: Any) -> None:
    # Per-device batch 8 x 2 processes = the single-process run's global batch of 16.
    res = run_cli("train.py", *DDP_TINY, "trainer=ddp_cpu", "dataset.batch_size=8", f"paths.log_dir={tmp_path}")
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = single_run_dir(tmp_path)  # exactly one run dir for both ranks
    assert _finished_dirs(tmp_path) == [run_dir]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert (run_dir / "train_ddp_process_1.log").exists()  # rank 1 ran, in the same dir
    assert (res.stdout + res.stderr).count("] - config: task=") == 1  # one config summary on the console (rank 0)
    metrics = read_metrics(run_dir)
    assert metrics["effective_batch_size"] == 16
    assert metrics["perf/train_samples_per_sec"] > 0  # from the fit trainer, not the single-device eval one
    # The test ran on one device after fit: every test example exactly once, no DistributedSampler padding.
    assert len((run_dir / "test_predictions.csv").read_text().splitlines()) == 1 + 48
    assert sum(map(sum, metrics["test/confusion_matrix"]["matrix"])) == 48

    single, _ = train_tiny()
    for key in ("test/acc", "test/f1_macro", "val/acc"):
        assert abs(metrics[key] - single[key]) <= 0.15, (key, metrics[key], single[key])
    assert abs(metrics["test/loss"] - single["test/loss"]) <= 0.05

    ev = run_cli("eval.py", f"ckpt_path={run_dir / metrics['best/ckpt_path']}", f"paths.log_dir={tmp_path}")
    assert ev.returncode == 0, ev.stderr[-3000:]
    evaluated = read_metrics(single_run_dir(tmp_path, "eval"))
    for key in ("test/acc", "test/f1_macro", "test/loss"):
        assert evaluated[key] == pytest.approx(metrics[key], abs=1e-6), key


def test_ddp_cpu_inside_a_multirun_runs_each_job_in_its_own_dir(tmp_path: Path) -> None:
    """Lightning #11300: DDP children must re-run their own job (not the whole `-m` sweep) in its dir."""
    sweep = tmp_path / "sweep"
    res = run_cli(
        "train.py",
        "-m",
        *DDP_TINY,
        "trainer=ddp_cpu",
        "dataset.batch_size=8",
        "seed=1,2",
        f"hydra.sweep.dir={sweep}",
        f"paths.log_dir={tmp_path}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = _finished_dirs(tmp_path)
    assert len(jobs) == 2 and all(j.parent == sweep for j in jobs), jobs
    assert not (tmp_path / "train" / "runs").exists()  # no child fell back to a single-run dir
    for job in jobs:
        assert json.loads((job / "status.json").read_text())["status"] == "completed"
        assert "test/f1_macro" in read_metrics(job)
        seed = [o for o in (job / ".hydra" / "overrides.yaml").read_text().split() if o.startswith("seed=")][0]
        assert f"Seed set to {seed.split('=')[1]}" in (job / "train_ddp_process_1.log").read_text()


class _StopAt(pl.Callback):
    """Stands in for the pre-emption signal: at `step`, save the requeue checkpoint and end the attempt."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses[trainer.global_step] = float(outputs["loss"])
        if trainer.global_step == self.step:
            from lmlab.rundir import requeue_checkpoint

            trainer.save_checkpoint(requeue_checkpoint(Path(trainer.default_root_dir)))
            raise KeyboardInterrupt  # Lightning ends fit gracefully and exits


@pytest.mark.parametrize("grouped", [False, True], ids=["random", "group_by_length"])
def test_mid_epoch_resume_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grouped: bool) -> None:
    """A run stopped mid-epoch and resumed from resume.ckpt ends with the uninterrupted run's losses and metrics
    (RNG state, optimizer, scheduler, and the epoch's remaining batches), with either training sampler."""
    from lmlab import train as train_module

    overrides = [o for o in TINY if not o.startswith(("trainer.max_epochs", "dataset.max_samples.train"))]
    overrides += [
        "trainer.max_epochs=2",
        "dataset.max_samples.train=96",
        "callbacks.early_stopping=null",
        "callbacks.model_checkpoint.monitor=null",  # the final weights are the evaluated ones
        f"dataset.group_by_length={str(grouped).lower()}",
    ]
    recorder: list[_StopAt] = []
    build = train_module.build

    def build_with(cfg: Any) -> dict[str, Any]:
        objects = build(cfg)
        objects["trainer"].callbacks.insert(0, recorder[-1])
        return objects

    monkeypatch.setattr(train_module, "build", build_with)

    def run(run_dir: Path, stop: int) -> tuple[dict[str, Any] | None, dict[int, float]]:
        recorder.append(_StopAt(stop))
        cfg = compose_train(overrides, run_dir)
        try:
            return train_module.train(cfg), recorder[-1].losses
        except SystemExit:
            return None, recorder[-1].losses

    reference, ref_losses = run(tmp_path / "ref", stop=-1)
    _, first = run(tmp_path / "resumed", stop=9)  # 6 steps per epoch: mid-epoch 2
    assert (tmp_path / "resumed" / "checkpoints" / "resume.ckpt").is_file()
    resumed, second = run(tmp_path / "resumed", stop=-1)
    assert min(second) == 10 and max(second) == max(ref_losses) == 12
    assert {**first, **second} == ref_losses  # bitwise-equal per-step losses
    assert reference is not None and resumed is not None
    for key, value in reference.items():
        if key != "best/ckpt_path" and not key.startswith("perf/"):  # perf/*: timings and memory
            assert resumed[key] == value, key
    assert not (tmp_path / "resumed" / "checkpoints" / "resume.ckpt").exists()  # removed after the fit


def test_slurm_launcher_refuses_sweeping_resources(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    res = run_cli(
        "train.py",
        "-m",
        *TINY,
        "hydra/launcher=slurm",
        "trainer.devices=1,2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        timeout=120,
    )
    assert res.returncode != 0
    assert "varies trainer.devices over ['1', '2']" in res.stderr
    assert "Run one multirun per value" in res.stderr
    assert not list(tmp_path.rglob("status.json"))  # nothing was submitted
