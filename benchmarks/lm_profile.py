"""Where a causal-LM training step's milliseconds go: the raw loop against lmlab's Lightning loop, in one process.

Both loops get the same model init, packed batches and AdamW settings (benchmarks/lm_throughput.py builds them with
lmlab.train.build); `--clip` turns gradient clipping (max norm 1.0) on in both. It prints:

  * ms/step of each loop (median of the steps after the first 3), measured with time.perf_counter per step;
  * lmlab's per-hook breakdown from Lightning's SimpleProfiler (mean ms per step of every action that costs more
    than 0.05 ms: the training step, backward, optimizer step, each callback's hooks, the progress bar, logging);
  * with `--torch-profiler`, the aten ops by self CPU time of both loops side by side (ops only lmlab runs stand out:
    argmax, the mask sum, isfinite, clipping's norms).

  PYTHONPATH=src python benchmarks/lm_profile.py --model llama_tiny --steps 40
  PYTHONPATH=src python benchmarks/lm_profile.py --model llama_small --steps 20 --torch-profiler --clip

For Python-level stacks of a whole `train.py` run, py-spy (pip install py-spy) works on top:
  py-spy record -r 200 -f raw -o lmlab.txt -- python train.py task=causal_lm model=llama_tiny ...
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
WARMUP = 3


def _bench() -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import lm_throughput

    return lm_throughput


def step_ms(ends: list[float]) -> float:
    return 1000 * statistics.median(b - a for a, b in zip(ends[WARMUP - 1 : -1], ends[WARMUP:]))


def raw_loop(args: argparse.Namespace, prof: Any = None) -> dict[str, Any]:
    """benchmarks/lm_throughput.py's raw loop (optionally clipping like Lightning: clip_grad_norm_ at 1.0)."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    lt = _bench()
    with tempfile.TemporaryDirectory() as log_dir:
        cfg, objects = lt.build_lmlab_objects(args, log_dir)
        model, loader = objects["model"].net, objects["datamodule"].train_dataloader()
        opt = lt.optimizer_settings(cfg, args.steps)
        params = list(model.parameters())
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": opt["weight_decay"]},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=opt["lr"], betas=opt["betas"], eps=opt["eps"])
        scheduler = get_linear_schedule_with_warmup(optimizer, opt["warmup_steps"], args.steps)
        vocab = model.config.vocab_size
        model.train()
        ends: list[float] = []
        with prof or _null():
            while len(ends) < args.steps:
                for batch in loader:
                    ids = batch["input_ids"]
                    logits = model(ids, use_cache=False).logits
                    loss = torch.nn.functional.cross_entropy(
                        logits[:, :-1].float().reshape(-1, vocab), ids[:, 1:].reshape(-1)
                    )
                    loss.backward()
                    if args.clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    ends.append(time.perf_counter())
                    if len(ends) == args.steps:
                        break
    return {"ms_per_step": step_ms(ends)}


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def lmlab_loop(args: argparse.Namespace, prof: Any = None) -> dict[str, Any]:
    """lmlab.train.build's trainer (all default callbacks, CSV logger) fitting the same batches, with Lightning's
    SimpleProfiler attached; step end times from a callback."""
    import pytorch_lightning as pl
    from pytorch_lightning.profilers import SimpleProfiler

    lt = _bench()
    ends: list[float] = []

    class Ends(pl.Callback):
        def on_train_batch_end(self, *a: Any) -> None:
            ends.append(time.perf_counter())

    extra = [] if args.clip else ["trainer.gradient_clip_val=null"]
    args.extra = [*extra, "trainer.profiler=simple", *args.override]
    with tempfile.TemporaryDirectory() as log_dir:
        _, objects = lt.build_lmlab_objects(args, log_dir)
        trainer, model, dm = objects["trainer"], objects["model"], objects["datamodule"]
        trainer.callbacks.append(Ends())
        profiler = trainer.profiler
        assert isinstance(profiler, SimpleProfiler)
        with prof or _null():
            trainer.fit(model, datamodule=dm)
        steps = len(ends)
        rows = []
        for action, durations in profiler.recorded_durations.items():
            per_step = 1000 * sum(durations) / steps
            if per_step > 0.05 and "val" not in action.lower() and "sanity" not in action.lower():
                rows.append((per_step, len(durations), action))
    return {"ms_per_step": step_ms(ends), "hooks": sorted(rows, reverse=True)}


def torch_profile(fn: Any, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU])
    out = fn(args, prof)
    ops = {e.key: e.self_cpu_time_total / 1000 / args.steps for e in prof.key_averages()}
    return out, ops


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama_tiny")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-train-docs", type=int, default=None)
    p.add_argument("--clip", action="store_true", help="gradient clipping at 1.0 in both loops")
    p.add_argument("--torch-profiler", action="store_true")
    p.add_argument("--override", action="append", default=[], help="an extra train.py override for lmlab")
    args = p.parse_args(argv)
    lt = _bench()
    base_overrides = lt.lmlab_overrides

    def overrides(a: argparse.Namespace, log_dir: str) -> list[str]:
        out = [o for o in base_overrides(a, log_dir) if not o.startswith("trainer.gradient_clip_val")]
        return out + list(getattr(a, "extra", []))

    lt.lmlab_overrides = overrides
    args.extra = []
    import torch

    torch.manual_seed(args.seed)
    if args.torch_profiler:
        raw, raw_ops = torch_profile(raw_loop, args)
        lm, lm_ops = torch_profile(lmlab_loop, args)
    else:
        raw, lm = raw_loop(args), lmlab_loop(args)
    print(f"{args.model} {args.batch_size}x{args.max_length}, clip={'on' if args.clip else 'off'}, {args.steps} steps")
    print(f"raw   {raw['ms_per_step']:.2f} ms/step\nlmlab {lm['ms_per_step']:.2f} ms/step")
    print(f"ratio raw/lmlab (= lmlab/raw tokens/s) {raw['ms_per_step'] / lm['ms_per_step']:.3f}")
    print("\nlmlab, Lightning SimpleProfiler, ms per training step (nested: an action includes those inside it):")
    for per_step, calls, action in lm["hooks"]:
        print(f"  {per_step:8.2f}  {calls:5d}  {action}")
    if args.torch_profiler:
        print("\naten ops, self CPU ms per step (includes the fit's val/test for lmlab; top 25 by difference):")
        keys = set(raw_ops) | set(lm_ops)
        diff = sorted(keys, key=lambda k: abs(lm_ops.get(k, 0) - raw_ops.get(k, 0)), reverse=True)[:25]
        for k in diff:
            print(f"  {raw_ops.get(k, 0):8.2f} raw  {lm_ops.get(k, 0):8.2f} lmlab  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
