"""The checkpoint disk policy: a completed run keeps its best weights once (no optimizer state), last.ckpt only
until the run completes; `checkpoint_policy=keep` keeps everything; resume, eval and continuing still work."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import read_metrics


def dir_bytes(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())


def test_compact_run_keeps_the_best_weights_once_and_continuing_works(train_tiny) -> None:
    metrics, run_dir = train_tiny("trainer.max_epochs=2")
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == [Path(metrics["best/ckpt_path"]).name]  # last.ckpt removed at completion
    best = torch.load(run_dir / metrics["best/ckpt_path"], map_location="cpu", weights_only=False)
    assert "optimizer_states" not in best and "lr_schedulers" not in best
    assert best["lmlab"]["data_fingerprint"]  # the run's identity is still in it (eval and resume read it)
    weights = sum(t.numel() * t.element_size() for t in best["state_dict"].values())
    assert (run_dir / metrics["best/ckpt_path"]).stat().st_size < 1.1 * weights + 200_000
    # perf/disk_bytes: what the run dir holds (metrics.json rewritten with the number itself: a few bytes apart)
    assert abs(read_metrics(run_dir)["perf/disk_bytes"] - dir_bytes(run_dir)) < 100

    # eval.py on a compact run dir (its best checkpoint): test_train.py::test_eval_reproduces_test_metrics.

    # Continuing the completed run: its best weights, a fresh optimizer (said in the log), into a new dir.
    again, new_dir = train_tiny(f"ckpt_path={run_dir}", "trainer.max_epochs=1")
    assert new_dir != run_dir and read_metrics(new_dir)["test/loss"] == again["test/loss"]


def test_keep_policy_keeps_every_checkpoint_complete(train_tiny) -> None:
    metrics, run_dir = train_tiny("checkpoint_policy=keep")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    best = torch.load(run_dir / metrics["best/ckpt_path"], map_location="cpu", weights_only=False)
    assert best["optimizer_states"] and best["lr_schedulers"]
