"""LoRA vs full fine-tuning of SmolLM2-135M on BBC News text, in one benchmark run (README, "LoRA").

    python benchmarks/lora.py --steps 10 --max-length 128 --batch-size 4 --json logs/bench/lora.json

Both arms: the same data subset, blocks, batches, steps, seed and scheduler, each in a fresh `train.py` process
(so peak RSS is that arm's own). Reported per arm: trainable / total parameters, optimizer state bytes (every
tensor in the last checkpoint's optimizer state, measured), peak RSS, training tokens/s (Throughput callback,
warm-up steps excluded), test ppl after the same number of steps; then the LoRA / full ratios.
Exit status 1 when the target is missed: LoRA's trainable parameters < 2% of the total.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.lm_quality import run  # noqa: E402  (one fresh train.py process, its metrics and minutes)


def optimizer_state_bytes(ckpt: Path) -> int:
    """Bytes of every tensor in the optimizer state of a Lightning checkpoint (AdamW: exp_avg, exp_avg_sq)."""
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    total = 0
    for opt in state["optimizer_states"]:
        for per_param in opt["state"].values():
            total += sum(v.numel() * v.element_size() for v in per_param.values() if torch.is_tensor(v))
    return total


def arm(name: str, log_dir: Path, overrides: list[str]) -> dict[str, Any]:
    out = run("train.py", log_dir / name, overrides)
    m, run_dir = out["metrics"], Path(out["run_dir"])
    ckpt = max((run_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)  # each holds the optimizer
    result = {
        "trainable": m["params/trainable"],
        "total": m["params/total"],
        "trainable_pct": 100 * m["params/trainable"] / m["params/total"],
        "optimizer_state_mb": optimizer_state_bytes(ckpt) / 2**20,
        "checkpoint_mb": ckpt.stat().st_size / 2**20,
        "peak_rss_mb": m["perf/peak_rss_mb"],
        "tokens_per_sec": m["perf/train_tokens_per_sec"],
        "step_time_s": m["perf/train_step_time_s"],
        "test_ppl": m["test/ppl"],
        "test_loss": m["test/loss"],
        "val_ppl": m["val/ppl"],
        "minutes": out["minutes"],
        "run_dir": str(run_dir),
    }
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # a full fine-tune's are ~1.6 GB each
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr-full", type=float, default=1e-4, help="full fine-tuning lr")
    parser.add_argument("--lr-lora", type=float, default=1e-3, help="LoRA lr (adapters want a larger one)")
    parser.add_argument("--train-docs", type=int, default=200)
    parser.add_argument("--val-docs", type=int, default=20)
    parser.add_argument("--test-docs", type=int, default=40)
    parser.add_argument("--log-dir", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides for both arms (e.g. peft.r=16)")
    args = parser.parse_intermixed_args(argv)
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="lmlab-bench-lora-"))
    common = [
        "task=causal_lm",
        "model=smollm2",
        "optimizer=adamw",  # fine-tuning: the task's default (Muon) is its from-scratch recipe
        f"trainer.max_steps={args.steps}",
        "trainer.val_check_interval=null",
        f"dataset.max_length={args.max_length}",
        f"dataset.batch_size={args.batch_size}",
        "dataset.eval_batch_size=8",
        f"dataset.max_samples.train={args.train_docs}",
        f"dataset.max_samples.val={args.val_docs}",
        f"dataset.max_samples.test={args.test_docs}",
        "export_model=false",
        "task.samples.prompts=[]",
        "callbacks.progress_bar=null",
        "logger=csv",
    ]
    full = arm("full", log_dir, [*common, "peft=none", f"optimizer.lr={args.lr_full}", *args.overrides])
    lora = arm("lora", log_dir, [*common, "peft=lora", f"optimizer.lr={args.lr_lora}", *args.overrides])
    ratios = {
        k: lora[k] / full[k]
        for k in ("trainable", "optimizer_state_mb", "checkpoint_mb", "peak_rss_mb", "tokens_per_sec", "step_time_s")
        if full[k]
    }
    print(
        f"\nSmolLM2-135M, {args.steps} steps of {args.batch_size} x {args.max_length} tokens, BBC subset "
        f"({args.train_docs}/{args.val_docs}/{args.test_docs} docs)"
    )
    print(f"{'':22}{'full':>14}{'lora':>14}{'lora/full':>11}")
    for key in (
        "trainable",
        "total",
        "trainable_pct",
        "optimizer_state_mb",
        "checkpoint_mb",
        "peak_rss_mb",
        "tokens_per_sec",
        "step_time_s",
        "test_ppl",
        "val_ppl",
        "minutes",
    ):
        ratio = f"{ratios[key]:.3f}" if key in ratios else ""
        print(f"{key:22}{full[key]:>14.4g}{lora[key]:>14.4g}{ratio:>11}")
    ok = lora["trainable_pct"] < 2.0
    result = {
        "full": full,
        "lora": lora,
        "ratios": ratios,
        "steps": args.steps,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "lr": {"full": args.lr_full, "lora": args.lr_lora},
        "overrides": args.overrides,
        "date": time.strftime("%Y-%m-%d"),
        "ok": ok,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
