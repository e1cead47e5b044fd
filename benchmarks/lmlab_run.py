"""lmlab's own training (train.py -> Lightning Trainer) as a benchmark variant, on the baselines' settings.

Runs `train.py` in a fresh process with the same model, max_length, batch size, steps, learning rate and seed
as benchmarks/baselines.py, then prints one JSON line made from the run's metrics.json: the throughput lmlab
measured and logged itself (`perf/train_*`, from the end of step 3 to the end of the last step, validation
excluded: the raw loop's definition).

Settings that match the raw loop: CPU, fp32, AdamW at lr 5e-5 with a linear schedule, no gradient clipping
(lmlab's default clips at 1.0; the raw loop does not). Everything else is lmlab's default, including the
callbacks (checkpointing, progress bar, throughput logging) and the CSV logger. Validation/test use one batch each,
outside the timed window. The training examples are the first steps x batch_size of lmlab's stratified train
split (the baselines take the first ones of a seeded shuffle of all BBC articles): same corpus, not the same
examples. With --group-by-length the whole train split is used, so that mega-batches have their real size.

  PYTHONPATH=src python benchmarks/lmlab_run.py --model tiny --steps 10 --group-by-length --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 3


def overrides(args: argparse.Namespace, log_dir: str) -> list[str]:
    model = (
        ["model=minilm"]
        if args.model == "minilm"
        else [
            # benchmarks/baselines.py's "tiny": BERT, hidden 64, 2 layers, 2 heads, intermediate 128, MiniLM vocab.
            "model=tiny_bert",
            "model.from_scratch.hidden_size=64",
            "model.from_scratch.num_hidden_layers=2",
            "model.from_scratch.num_attention_heads=2",
            "model.from_scratch.intermediate_size=128",
        ]
    )
    out = [
        *model,
        f"dataset.max_length={args.max_length}",
        f"dataset.batch_size={args.batch_size}",
        f"dataset.eval_batch_size={args.batch_size}",
        # Grouping sorts within mega-batches of up to 50 batches: capping the data at `steps` batches would shrink
        # them to 3 batches and hide most of what grouping saves. Its batches come in random order (see
        # lmlab/data/sampler.py), so the timed steps are a fair sample of the full split's epoch.
        *([] if args.group_by_length else [f"dataset.max_samples.train={args.steps * args.batch_size}"]),
        f"dataset.max_samples.val={args.batch_size}",
        f"dataset.max_samples.test={args.batch_size}",
        f"dataset.group_by_length={str(args.group_by_length).lower()}",
        f"seed={args.seed}",
        f"optimizer.lr={args.lr}",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.max_epochs=1",
        f"++trainer.max_steps={args.steps}",
        "trainer.num_sanity_val_steps=0",
        "trainer.gradient_clip_val=null",
        "export_model=false",
        f"paths.log_dir={log_dir}",
    ]
    if args.fixed:
        out.append(f"dataset.pad_to_multiple_of={args.max_length}")  # every batch padded to max_length
    return out + list(args.extra)


# Offline, and no tokenizer thread pool competing with torch's threads for the 2 cores.
TRAIN_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def train_command(args: argparse.Namespace, log_dir: str, *more_overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *overrides(args, log_dir), *more_overrides]


def run_metrics(log_dir: str | Path) -> dict[str, Any]:
    """The metrics.json of the one train.py run under `log_dir`."""
    found = sorted(Path(log_dir).glob("train/runs/*/metrics.json"))
    if len(found) != 1:
        raise RuntimeError(f"expected one metrics.json under {log_dir}, found {found}")
    return json.loads(found[0].read_text())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", choices=("tiny", "minilm"))
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group-by-length", action="store_true", help="dataset.group_by_length=true")
    p.add_argument("--fixed", action="store_true", help="pad every batch to --max-length (like raw_fixed)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("extra", nargs="*", help="more train.py overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.steps <= WARMUP_STEPS:
        p.error(f"--steps must be > {WARMUP_STEPS} (timing starts after step {WARMUP_STEPS}); got {args.steps}")

    with tempfile.TemporaryDirectory(prefix="lmlab-bench-") as log_dir:
        cmd = train_command(args, log_dir)
        t0 = time.perf_counter()
        # train.py's console output goes to stderr: stdout is kept for the one JSON line.
        proc = subprocess.run(cmd, cwd=ROOT, env=TRAIN_ENV, stdout=sys.stderr, stderr=sys.stderr)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(f"error: train.py exited {proc.returncode}: {' '.join(cmd)}", file=sys.stderr)
            return proc.returncode
        try:
            metrics = run_metrics(log_dir)
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    if metrics.get("perf/train_samples_per_sec") is None:
        print("error: metrics.json has no perf/train_samples_per_sec (is the throughput callback on?)", file=sys.stderr)
        return 1
    result = {
        "variant": "lmlab" + ("_grouped" if args.group_by_length else "_fixed" if args.fixed else "_dynamic"),
        "model": args.model,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "samples_per_sec": metrics["perf/train_samples_per_sec"],
        "tokens_per_sec": metrics["perf/train_tokens_per_sec"],
        "pad_fraction": metrics["perf/train_pad_fraction"],
        "steps": metrics["perf/train_timed_steps"] + WARMUP_STEPS,
        "timed_steps": metrics["perf/train_timed_steps"],
        "time_to_first_batch_s": metrics.get("perf/time_to_first_batch_s"),
        "attn_implementation": metrics.get("perf/attn_implementation"),
        "peak_rss_mb": metrics.get("perf/peak_rss_mb"),
        "total_seconds": wall,
    }
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print(
            f"{result['variant']} {args.model}: {result['samples_per_sec']:.2f} samples/s, "
            f"{result['tokens_per_sec']:.0f} tokens/s, pad {result['pad_fraction']:.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
