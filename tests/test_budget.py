"""What a run reports is the end of its budget, stated (issue 23), through `python train.py` as a user runs it:
token and FLOP budgets to steps, task.eval_every_tokens, the validation after the last step, curves.csv, task.score,
and the refusals."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from tests.conftest import TINY, TINY_LM, read_metrics, run_cli, single_run_dir

# llama_tiny on packed 64-token blocks, 8 per step: 512 tokens per optimizer step, exactly (training drops the
# partial last block, so every block has 64 real tokens).
LM = ["task=causal_lm", *TINY_LM]
TOKENS_PER_STEP = 8 * 64
# llama_tiny's FLOPs per token, by hand: non-embedding parameters N (2 layers x (q, k, v, o: 4 x 32 x 32; MLP:
# 3 x 32 x 64; 2 norms of 32), the final norm, the tied lm_head 32 x 512 (the BPE has 512 tokens)), then
# 6N + 12 x layers x hidden x T with T = 64.
N = 2 * (4 * 32 * 32 + 3 * 32 * 64 + 2 * 32) + 32 + 32 * 512
FLOPS_PER_TOKEN = 6 * N + 12 * 2 * 32 * 64


def train(tmp_path: Path, *args: str, base: list[str] = LM) -> tuple[dict, Path]:
    result = run_cli("train.py", *base, *args, f"paths.log_dir={tmp_path / 'logs'}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    run_dir = single_run_dir(tmp_path / "logs")
    return read_metrics(run_dir), run_dir


def curves(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "curves.csv").open() as f:
        return list(csv.DictReader(f))


def test_eval_every_tokens_final_evaluation_and_curves(tmp_path: Path) -> None:
    # 7 steps, a validation every 1000 tokens = round(1000 / 512) = 2 steps: at 2, 4, 6, and at 7, the budget's end.
    metrics, run_dir = train(tmp_path, "trainer.max_steps=7", "task.eval_every_tokens=1000")
    rows = curves(run_dir)
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 7]
    assert [int(r["tokens"]) for r in rows] == [2 * 512, 4 * 512, 6 * 512, 7 * 512]
    assert [float(r["flops"]) for r in rows] == [int(r["tokens"]) * FLOPS_PER_TOKEN for r in rows]
    assert {"val/loss", "val/bpb", "val/token_acc", "val/ppl"} <= set(rows[0])
    # task.score=final (the LM default): the reported numbers are those of step 7, the last curve row
    assert metrics["meta/score"] == "final" and metrics["best/step"] == 7
    assert metrics["best/ckpt_path"] == "checkpoints/last.ckpt"
    assert metrics["val/loss"] == pytest.approx(float(rows[-1]["val/loss"]), abs=1e-6)
    assert metrics["budget/eval_every_steps"] == 2 and metrics["budget/tokens_per_step"] == TOKENS_PER_STEP
    assert metrics["budget/flops_per_token"] == FLOPS_PER_TOKEN
    assert metrics["budget/tokens_trained"] == 7 * 512 and metrics["perf/model_flops"] == 7 * 512 * FLOPS_PER_TOKEN
    # eval.py on the run dir reads the scored (final) weights: the same test metrics
    result = run_cli("eval.py", f"ckpt_path={run_dir}", f"paths.log_dir={tmp_path / 'eval_logs'}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    evaluated = read_metrics(single_run_dir(tmp_path / "eval_logs", task="eval"))
    assert evaluated["test/loss"] == metrics["test/loss"] and evaluated["test/bpb"] == metrics["test/bpb"]


def test_token_and_flop_budgets_to_steps(tmp_path: Path) -> None:
    metrics, run_dir = train(tmp_path / "tokens", "task.max_tokens=2600")  # ceil(2600 / 512) = 6 steps
    assert metrics["budget/max_steps"] == 6 and metrics["budget/steps_trained"] == 6
    assert metrics["budget/max_tokens"] == 2600
    assert [int(r["step"]) for r in curves(run_dir)] == [6]  # no epoch end before: validated at the budget's end
    flops = 4.5 * TOKENS_PER_STEP * FLOPS_PER_TOKEN  # 4.5 steps of FLOPs -> 5 steps
    metrics, _ = train(tmp_path / "flops", f"task.max_flops={flops}")
    assert metrics["budget/max_steps"] == math.ceil(flops / (TOKENS_PER_STEP * FLOPS_PER_TOKEN)) == 5
    assert metrics["budget/max_flops"] == flops
    assert metrics["perf/model_flops"] == 5 * TOKENS_PER_STEP * FLOPS_PER_TOKEN >= flops


def test_masked_lm_token_budget_eval_schedule_and_final_score(tmp_path: Path) -> None:
    from tests.test_masked_lm import MLM_TINY

    # tiny_bert on packed 32-token blocks, 16 per step = 512 tokens per step: 1500 tokens -> 3 steps, validated
    # every 2 steps (1000 tokens) and at the budget's end; task.score=final reports step 3's weights.
    base = [o for o in MLM_TINY if not o.startswith("trainer.max_steps")]
    metrics, run_dir = train(
        tmp_path, "task.max_tokens=1500", "task.eval_every_tokens=1000", "task.score=final", base=base
    )
    assert metrics["budget/tokens_per_step"] == 512 and metrics["budget/max_steps"] == 3
    assert metrics["budget/tokens_trained"] == 3 * 512
    rows = curves(run_dir)
    assert [int(r["step"]) for r in rows] == [2, 3] and {"val/loss", "val/masked_acc"} <= set(rows[0])
    assert metrics["meta/score"] == "final" and metrics["best/step"] == 3
    assert metrics["best/ckpt_path"] == "checkpoints/last.ckpt"
    assert metrics["val/loss"] == pytest.approx(float(rows[-1]["val/loss"]), abs=1e-6)


def test_classification_max_steps_past_an_epoch_end_is_evaluated_at_the_end(tmp_path: Path) -> None:
    # TINY: 96 examples / 16 = 6 steps per epoch. max_steps=8 ends 2 steps into epoch 2: before, those 2 steps
    # were never validated and could not be the reported checkpoint.
    metrics, run_dir = train(tmp_path, "trainer.max_steps=8", "trainer.max_epochs=3", base=TINY)
    rows = curves(run_dir)
    assert [int(r["step"]) for r in rows] == [6, 8]
    assert "val/f1_macro" in rows[0]
    assert metrics["meta/score"] == "best_val"
    best = max(rows, key=lambda r: float(r["val/f1_macro"]))  # first of ties: the checkpoint kept is the first best
    assert metrics["best/step"] == int(best["step"])
    assert metrics["budget/steps_trained"] == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["task.max_tokens=100"], "task.max_tokens=100 is smaller than one optimizer step (512: 8 examples of 64"),
        (["task.max_flops=1000"], "task.max_flops=1000 is smaller than one optimizer step"),
        (["task.max_tokens=5000", "task.max_flops=1e12"], "are both set: a run has one budget"),
        (["task.score=last"], "task.score='last' is not one of ['final', 'best_val']"),
        (["task.eval_every_tokens=0"], "task.eval_every_tokens=0"),
    ],
)
def test_bad_budgets_are_refused(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli("train.py", *LM, *args, f"paths.log_dir={tmp_path}")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr, (result.stdout + result.stderr)[-2000:]
    assert not list(tmp_path.rglob("metrics.json"))


def test_a_resumed_run_continues_the_token_count_and_its_curve(tmp_path: Path) -> None:
    # Run A: 4 steps, validated at 2 and 4, every checkpoint complete (optimizer state kept to resume from).
    _, first = train(tmp_path / "a", "trainer.max_steps=4", "task.eval_every_tokens=1024", "checkpoint_policy=keep")
    # Run B resumes A's last.ckpt (step 4) to step 8 in a dir that holds what a killed attempt had written: rows up
    # to step 6, the last one past the checkpoint (stale). It is replaced, each step appears once, tokens go on.
    run_b = tmp_path / "b"
    run_b.mkdir()
    stale = (first / "curves.csv").read_text() + "6,99999,1.0,1.0,1.0,1.0,1.0,1.0\n"
    (run_b / "curves.csv").write_text(stale)
    result = run_cli(
        "train.py",
        *LM,
        "trainer.max_steps=8",
        "task.eval_every_tokens=1024",
        f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={run_b}",
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    rows = curves(run_b)
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]
    assert [int(r["tokens"]) for r in rows] == [1024, 2048, 3072, 4096]
    assert read_metrics(run_b)["budget/tokens_trained"] == 4096
