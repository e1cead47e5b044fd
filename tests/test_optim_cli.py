"""The new optimizers and schedules through `python train.py` / `python eval.py`, as a user runs them: a few steps
of llama_tiny each, eval.py reproducing the run's test metrics (Muon, Schedule-Free), LoRA, and the refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY_LM, read_metrics, run_cli, single_run_dir

# 5 optimizer steps of a tiny Llama, one validation (and a best checkpoint) at step 4: Schedule-Free must switch
# to eval mode for it, back to train mode for step 5, and to eval mode again for the test and last.ckpt.
LM_STEPS = ["task=causal_lm", *TINY_LM, "trainer.max_steps=5", "trainer.val_check_interval=4"]
ARGS = {
    "muon": ["optimizer=muon"],
    "schedulefree": ["optimizer=schedulefree", "scheduler=constant_warmup"],
    "lion": ["optimizer=lion", "optimizer.lr=3e-4", "scheduler=wsd"],
    "soap": ["optimizer=soap", "scheduler=cosine", "scheduler.min_lr_ratio=0.1"],
}


def train(tmp_path: Path, *args: str) -> tuple[dict, Path]:
    result = run_cli("train.py", *LM_STEPS, *args, f"paths.log_dir={tmp_path / 'logs'}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    run_dir = single_run_dir(tmp_path / "logs")
    return read_metrics(run_dir), run_dir


@pytest.mark.parametrize("name", ["muon", "schedulefree"])
def test_train_then_eval_reproduces_the_test_metrics(name: str, tmp_path: Path) -> None:
    metrics, run_dir = train(tmp_path, *ARGS[name])
    assert metrics["best/ckpt_path"] is not None  # the step-4 validation's checkpoint is what was tested
    result = run_cli("eval.py", f"ckpt_path={run_dir}", f"paths.log_dir={tmp_path / 'eval_logs'}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    evaluated = read_metrics(single_run_dir(tmp_path / "eval_logs", task="eval"))
    for key in ("test/loss", "test/bpb", "test/token_acc"):
        assert evaluated[key] == metrics[key], key


@pytest.mark.parametrize("name", ["lion", "soap"])
def test_a_few_steps_train(name: str, tmp_path: Path) -> None:
    metrics, _ = train(tmp_path, *ARGS[name])
    assert metrics["test/loss"] > 0


def test_muon_with_lora_optimizes_the_adapters_only(tmp_path: Path) -> None:
    result = run_cli(
        "train.py", *LM_STEPS, "optimizer=muon", "peft=lora", "trainer.max_steps=2", f"paths.log_dir={tmp_path}"
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    line = next(line for line in (result.stdout + result.stderr).splitlines() if "Muon: " in line)
    assert "lora_A" in line and "q_proj.base_layer" not in line and "embed_tokens" not in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["optimizer=schedulefree"], "Use scheduler=constant_warmup (warmup, then a constant lr) or scheduler=none"),
        (["scheduler=wsd", "scheduler.decay=1.5"], "scheduler.decay=1.5 must be a fraction of the run in (0, 1]"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli("train.py", *LM_STEPS, *args, f"paths.log_dir={tmp_path}")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]
    assert not list(tmp_path.rglob("metrics.json"))
