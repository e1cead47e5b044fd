"""Causal-LM training throughput: lmlab (train.py task=causal_lm) against a raw loop, HF Trainer and torch.compile.

Variants, all the same HF architecture (`--model`, from lmlab's own config), fp32 CPU, AdamW (`optimizer=adamw`: the
task's own recipe is Muon) with lmlab's composed optimizer settings and its linear warmup schedule, the same number of
steps and seed, and the same gradient clipping:
`--clip 1.0` (the default, lmlab's default recipe: clip_grad_norm_ at 1.0 in every variant) or `--clip 0` (none
clips), so the work per step is equal:

  raw            nanoGPT-style loop on lmlab's packed batches (the datamodule built by lmlab.train.build):
                 logits = model(input_ids).logits; cross-entropy of logits[:, :-1] vs input_ids[:, 1:]; backward;
                 opt.step(); opt.zero_grad(set_to_none=True); scheduler.step()
  lmlab          `train.py task=causal_lm model=<m> ...` in a fresh process; its own `perf/train_tokens_per_sec`
  hf_trainer     HF `Trainer` on run_clm.py's `group_texts` packing of the train split tokenized by lmlab's BPE
  lmlab_compile  lmlab with `model.compile=true` (torch.compile / inductor, C++ on CPU) and `--compile-mode` as
                 `model.compile_mode` (max-autotune-no-cudagraphs also tunes the GEMMs)
  lmlab_nobar    (only when asked for) lmlab with callbacks.progress_bar=null: what the RichProgressBar costs

On a shared machine, `--quiet-wait-s` makes each run wait for other processes to go quiet; every run records the
cores other processes used during it (`others_cores`), and ratios are also given over the clean rounds only.

Every variant is timed like lmlab's Throughput callback and benchmarks/baselines.py: real tokens from the END of
training step 3 to the end of the last step, over that wall time (so compilation, which happens in steps 1-2, is
outside it; `warmup_s` = the first 3 steps' wall time, and for lmlab_compile `compile_s` = its warm-up minus 3 of its
steady steps minus the same excess of eager lmlab). Each run is a fresh process; rounds are interleaved with the order
reversed every other round, and ratios are judged on the geometric mean of per-round ratios with a 95 % t interval on
the log-ratios (benchmarks/run.py's statistics, imported).

MFU on CPU: the fp32 GEMM peak is measured in the same invocation (torch.mm of 2048x2048 fp32 at the worker's thread
count, best of several, 2n^3/t; before and after the runs, the higher one is used) and
  MFU = tokens/s x FLOPs per token / peak,
  FLOPs per token = 6 x (non-embedding params + lm_head params when tied to the embedding) + 12 x layers x hidden x T
(the lm_head matmul is real compute even when its weight is the embedding's; the attention term counts full TxT
score and value matmuls, PaLM appendix B). It is cross-checked once against torch.utils.flop_counter.FlopCounterMode
on one forward+backward of a batch (with the CPU flash-attention ops, which FlopCounterMode does not know, mapped to
its SDPA formulas); the counter is higher by the flash backward's recomputation of QK^T (2 x layers x hidden x T,
1-3 % for llama_small) and lower by 6 x the norm/bias parameters (~0.05 %).

  PYTHONPATH=src python benchmarks/lm_throughput.py --tiny --json /tmp/lm.json            # < 60 s
  PYTHONPATH=src python benchmarks/lm_throughput.py --model llama_small --steps 30 --repeats 5 --repeats-slow 2 \
      --json logs/bench/lm-llama_small.json                                               # make bench-lm
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
WARMUP_STEPS = 3  # timing starts at the end of this step (lmlab's Throughput default)
MODELS = ("llama_tiny", "llama_small", "gpt2_small")
VARIANTS = ("raw", "lmlab", "hf_trainer", "lmlab_compile", "lmlab_nobar")
DEFAULT_VARIANTS = ("raw", "lmlab", "hf_trainer", "lmlab_compile")
# lmlab_nobar (not run by default): lmlab with callbacks.progress_bar=null, to see what the RichProgressBar costs.
NOBAR = "callbacks.progress_bar=null"
SLOW_VARIANTS = ("hf_trainer", "lmlab_compile")  # run in the first --repeats-slow rounds only
# (numerator, denominator, target or None)
COMPARISONS: list[tuple[str, str, float | None]] = [
    ("lmlab", "raw", 0.97),
    ("lmlab", "hf_trainer", None),
    ("lmlab_compile", "lmlab", 1.3),  # issue 25: compile pays >= 1.3x eager tokens/s after warm-up
    ("hf_trainer", "raw", None),
    ("lmlab_nobar", "raw", 0.97),
    ("lmlab", "lmlab_nobar", None),
]
TINY = {
    "model": "llama_tiny",
    "max_length": 64,
    "batch_size": 8,
    "steps": 6,
    "repeats": 1,
    "repeats_slow": 1,
    "max_train_docs": 200,
    "variants": "raw,lmlab,hf_trainer",
}


def bench_module(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (benchmarks/ is not a package): its functions are reused, not copied."""
    key = f"lmlab_bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, BENCH_DIR / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


# ---------------------------------------------------------------- config shared by every variant
def lmlab_overrides(args: argparse.Namespace, log_dir: str) -> list[str]:
    """train.py overrides for the benchmark: lmlab's causal-LM defaults, sized by the options; validation outside the
    timed window (max_steps ends the epoch early, so the only val/test are the post-fit ones, on 2 documents)."""
    shape = [] if args.max_length is None else [f"dataset.max_length={args.max_length}"]
    if args.batch_size is not None:
        shape += [f"dataset.batch_size={args.batch_size}", f"dataset.eval_batch_size={args.batch_size}"]
    out = [
        "task=causal_lm",
        # The task's recipe trains with Muon; this benchmark measures framework overhead, and its raw loop and HF
        # Trainer are AdamW, so lmlab runs AdamW too (the same work in every loop).
        "optimizer=adamw",
        f"model={args.model}",
        *shape,
        "dataset.max_samples.val=2",
        "dataset.max_samples.test=2",
        f"seed={args.seed}",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.max_epochs=-1",
        f"++trainer.max_steps={args.steps}",
        "trainer.num_sanity_val_steps=0",
        f"trainer.gradient_clip_val={args.clip if args.clip > 0 else 'null'}",  # as the raw loop clips
        "callbacks.early_stopping=null",
        "export_model=false",
        "task.samples.prompts=[]",
        f"paths.log_dir={log_dir}",
    ]
    if args.max_train_docs:
        out.append(f"dataset.max_samples.train={args.max_train_docs}")
    return out


def compose_config(args: argparse.Namespace, log_dir: str) -> Any:
    """The config `python train.py <lmlab_overrides>` composes (tests/conftest.py::compose_train does the same)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from lmlab.config import config_dir, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=lmlab_overrides(args, log_dir), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(Path(log_dir) / "run")
        del cfg["hydra"]
    return cfg


def build_lmlab_objects(args: argparse.Namespace, log_dir: str) -> tuple[Any, dict[str, Any]]:
    """Seed like train.py, then lmlab.train.build: the same model init, tokenizer, packed blocks and batch order."""
    import pytorch_lightning as pl

    from lmlab.train import build

    cfg = compose_config(args, log_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    return cfg, build(cfg)


def optimizer_settings(cfg: Any, steps: int) -> dict[str, Any]:
    """AdamW arguments and warmup steps from lmlab's composed config, so every variant uses what lmlab uses."""
    from lmlab.optim import warmup_steps

    if cfg.optimizer._target_ != "torch.optim.AdamW" or cfg.scheduler.name != "linear":
        raise SystemExit(
            f"the benchmark assumes AdamW + linear schedule, got {cfg.optimizer._target_} + {cfg.scheduler.name}"
        )
    return {
        "lr": float(cfg.optimizer.lr),
        "weight_decay": float(cfg.optimizer.weight_decay),
        "betas": tuple(float(b) for b in cfg.optimizer.betas),
        "eps": float(cfg.optimizer.eps),
        "warmup_steps": warmup_steps(cfg.scheduler.warmup, steps),
    }


# ---------------------------------------------------------------- FLOPs and the CPU peak
def matmul_params(net: Any) -> tuple[int, int]:
    """(non-embedding parameters, lm_head parameters counted on top because they are tied to the embedding).

    Embedding lookups are gathers, not matmuls; the lm_head projection is a d x V matmul whether or not its weight is
    the input embedding's. An untied lm_head is already among the non-embedding parameters."""
    import torch

    embedding = {id(p) for m in net.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    non_embedding = sum(p.numel() for p in net.parameters() if id(p) not in embedding)  # parameters() dedupes
    head = net.get_output_embeddings()
    tied_head = head.weight.numel() if head is not None and id(head.weight) in embedding else 0
    return non_embedding, tied_head


def flops_per_token_formula(net: Any, seq_len: int) -> float:
    """6 x (non-embedding + tied lm_head params) + 12 x layers x hidden x seq_len: lmlab's own flops_per_token
    (src/lmlab/callbacks/throughput.py) given the matmul parameter count including the lm_head."""
    from lmlab.callbacks import throughput

    return throughput.flops_per_token(net.config, throughput.matmul_params(net), seq_len)


def _cpu_flash_forward(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _cpu_flash_backward(
    grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


def lm_loss(net: Any, input_ids: Any) -> Any:
    """The raw loop's loss: next-token cross-entropy of logits[:, :-1] against input_ids[:, 1:], in fp32."""
    from torch.nn import functional as F

    logits = net(input_ids=input_ids).logits
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1))


def counted_flops_per_token(net: Any, input_ids: Any) -> dict[str, Any]:
    """FlopCounterMode's FLOPs of one forward+backward of `input_ids`, per token, by op.

    torch's FlopCounterMode has formulas for the CUDA SDPA kernels but not for the CPU flash-attention ops that SDPA
    dispatches to here (it would silently count attention as 0), so those are mapped to its own SDPA formulas. Two
    known differences from the formula: the flash backward recomputes the scores QK^T (+2 x layers x hidden x T per
    token: real work, but not model FLOPs), and norm weights and biases are in the 6N term but are not matmuls."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward,
    }
    was_training = net.training
    net.train()
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        lm_loss(net, input_ids).backward()
    net.zero_grad(set_to_none=True)
    net.train(was_training)
    tokens = input_ids.numel()
    by_op = {str(op): n / tokens for op, n in counter.get_flop_counts()["Global"].items()}
    return {"total": counter.get_total_flops() / tokens, "by_op": by_op}


def gemm_peak(n: int = 2048, repeats: int = 8, threads: int | None = None) -> dict[str, Any]:
    """Best fp32 torch.mm FLOP/s of n x n matrices (2n^3 / t) at the thread count the workers use: the CPU's
    attainable matmul peak right now, the denominator of MFU."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # first call: allocation, thread pool start
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
        return {
            "flops": 2 * n**3 / best,
            "n": n,
            "best_s": best,
            "threads": torch.get_num_threads(),
            "repeats": repeats,
        }
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------- lmlab: a step-time callback for train.py
def step_times_callback(path: str) -> Any:
    """A Lightning callback (Hydra target: benchmarks.lm_throughput.step_times_callback) that writes each optimizer
    step's end time, relative to on_train_start, to `path`: the first steps' time is where torch.compile compiles, and
    metrics.json only has the warmed-up rate. One perf_counter call per step, the same in both lmlab variants."""
    from pytorch_lightning.callbacks import Callback

    class StepTimes(Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.start, self.ends, self.last = time.perf_counter(), [], trainer.global_step

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step != self.last:
                self.last = trainer.global_step
                self.ends.append(time.perf_counter() - self.start)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            Path(path).write_text(json.dumps({"step_ends_s": self.ends}))

    return StepTimes()


def warmup_stats(step_ends: Sequence[float]) -> dict[str, float]:
    """warmup_s: wall time of steps 1..3 (from the training start); warmup_excess_s: that minus 3 timed-window steps,
    i.e. the one-off cost of the first steps (compilation, allocator and thread-pool warm-up)."""
    if len(step_ends) <= WARMUP_STEPS:
        return {}
    warm = step_ends[WARMUP_STEPS - 1]
    step = (step_ends[-1] - warm) / (len(step_ends) - WARMUP_STEPS)
    return {
        "warmup_s": warm,
        "warmup_excess_s": warm - WARMUP_STEPS * step,
        "max_timed_step_s": max(b - a for a, b in zip(step_ends[WARMUP_STEPS - 1 : -1], step_ends[WARMUP_STEPS:])),
    }


# ---------------------------------------------------------------- workers: each prints one JSON line
def _result(args: argparse.Namespace, rec: Any, start: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    import torch

    out = {
        "variant": args.worker,
        "model": args.model,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        **rec.result(),
        **warmup_stats([t - start for t in rec.ends]),
        "torch_threads": torch.get_num_threads(),
    }
    return {**out, **(extra or {})}


def worker_raw(args: argparse.Namespace) -> dict[str, Any]:
    """The nanoGPT-style loop on lmlab's model and batches (lmlab.train.build), timed by baselines.StepRecorder."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    rec = bench_module("baselines").StepRecorder()
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-lm-") as log_dir:
        cfg, objects = build_lmlab_objects(args, log_dir)
        model, loader = objects["model"].net, objects["datamodule"].train_dataloader()
        opt = optimizer_settings(cfg, args.steps)
        # nanoGPT's groups: matrices decay, biases and norm weights do not (lmlab's param_groups does the same).
        params = list(model.parameters())
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": opt["weight_decay"]},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=opt["lr"], betas=opt["betas"], eps=opt["eps"])
        scheduler = get_linear_schedule_with_warmup(optimizer, opt["warmup_steps"], args.steps)
        # FLOPs of one fwd+bwd of a batch, before any timing (its gradients are dropped, the optimizer is untouched).
        # Every packed batch has the same shape, so which batch it is does not matter.
        flops = flops_info(model, next(iter(loader))["input_ids"]) if args.count_flops else None
        vocab = model.config.vocab_size
        model.train()
        step, start = 0, time.perf_counter()
        while step < args.steps:
            for batch in loader:
                rec.record_batch(batch)
                input_ids = batch["input_ids"]
                logits = model(input_ids, use_cache=False).logits  # no KV cache in training (lmlab neither)
                loss = torch.nn.functional.cross_entropy(
                    logits[:, :-1].float().reshape(-1, vocab), input_ids[:, 1:].reshape(-1)
                )
                loss.backward()
                if args.clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                rec.step_end()
                step += 1
                if step == args.steps:
                    break
        extra = {"final_loss": loss.item(), "optimizer": {**opt, "betas": list(opt["betas"])}}
        return _result(args, rec, start, {**extra, **({"flops": flops} if flops else {})})


def group_texts(examples: dict[str, list], block_size: int) -> dict[str, list]:
    """run_clm.py's group_texts: concatenate, drop the remainder, cut blocks of block_size, labels = input_ids."""
    concatenated = {k: [t for seq in examples[k] for t in seq] for k in examples}
    total = (len(concatenated[next(iter(examples))]) // block_size) * block_size
    result = {k: [t[i : i + block_size] for i in range(0, total, block_size)] for k, t in concatenated.items()}
    result["labels"] = result["input_ids"].copy()
    return result


def worker_hf_trainer(args: argparse.Namespace) -> dict[str, Any]:
    """HF Trainer as run_clm.py uses it: the train split tokenized by lmlab's BPE (EOS after each document, as lmlab
    packs), `group_texts` blocks, default_data_collator; the model is lmlab's (same init)."""
    import datasets
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    datasets.disable_progress_bars()
    rec = bench_module("baselines").StepRecorder()
    marks: dict[str, float] = {}

    class TimeSteps(TrainerCallback):
        def on_train_begin(self, _args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            marks["start"] = time.perf_counter()

        def on_step_end(self, _args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            rec.step_end()

    class RecordingTrainer(Trainer):
        # gradient_accumulation_steps=1: one training_step per on_step_end.
        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            rec.record_batch(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    with tempfile.TemporaryDirectory(prefix="lmlab-bench-lm-") as log_dir:
        cfg, objects = build_lmlab_objects(args, log_dir)
        datamodule, model = objects["datamodule"], objects["model"].net
        tokenizer = datamodule.tokenizer
        texts = [ex.text for ex in datamodule.splits["train"]]
        raw = datasets.Dataset.from_dict({"text": texts})

        def tokenize(batch: dict[str, list]) -> dict[str, list]:
            enc = tokenizer(batch["text"], add_special_tokens=False)
            eos = tokenizer.eos_token_id
            return {
                "input_ids": [ids + [eos] for ids in enc["input_ids"]],
                "attention_mask": [m + [1] for m in enc["attention_mask"]],
            }

        tokenized = raw.map(tokenize, batched=True, remove_columns=["text"])
        blocks = tokenized.map(group_texts, batched=True, batch_size=1000, fn_kwargs={"block_size": args.max_length})
        opt = optimizer_settings(cfg, args.steps)
        targs = TrainingArguments(
            output_dir=str(Path(log_dir) / "hf"),
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            eval_strategy="no",
            per_device_train_batch_size=args.batch_size,
            learning_rate=opt["lr"],
            weight_decay=opt["weight_decay"],
            adam_beta1=opt["betas"][0],
            adam_beta2=opt["betas"][1],
            adam_epsilon=opt["eps"],
            lr_scheduler_type="linear",
            warmup_steps=opt["warmup_steps"],
            max_steps=args.steps,
            seed=args.seed,
            max_grad_norm=args.clip,  # the raw loop's and lmlab's clipping (0 = none)
            disable_tqdm=True,
            logging_strategy="no",
        )
        trainer = RecordingTrainer(
            model=model, args=targs, train_dataset=blocks, data_collator=default_data_collator, callbacks=[TimeSteps()]
        )
        with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its metrics; stdout is for the JSON line
            out = trainer.train()
        return _result(args, rec, marks["start"], {"final_loss": float(out.training_loss), "train_blocks": len(blocks)})


def worker_lmlab(args: argparse.Namespace) -> dict[str, Any]:
    """train.py in a fresh process (the Lightning Trainer, lmlab's callbacks and CSV logger); the throughput is the
    one lmlab wrote to its metrics.json, plus the per-step end times of step_times_callback."""
    import subprocess

    lmlab_run = bench_module("lmlab_run")
    compiled = args.worker == "lmlab_compile"
    mode = [f"model.compile_mode={args.compile_mode}"] if compiled and args.compile_mode else []
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-lm-") as log_dir:
        times = Path(log_dir) / "step_times.json"
        cmd = [
            sys.executable,
            str(ROOT / "train.py"),
            *lmlab_overrides(args, log_dir),
            f"model.compile={str(compiled).lower()}",
            *mode,
            "+callbacks.step_times._target_=benchmarks.lm_throughput.step_times_callback",
            f"+callbacks.step_times.path={times}",
            *([NOBAR] if args.worker == "lmlab_nobar" else []),
            *args.train_override,
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=lmlab_run.TRAIN_ENV, stdout=sys.stderr, stderr=sys.stderr)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"train.py exited {proc.returncode}: {' '.join(cmd)}")
        metrics = lmlab_run.run_metrics(log_dir)
        ends = json.loads(times.read_text())["step_ends_s"]
    if metrics.get("perf/train_tokens_per_sec") is None:
        raise SystemExit("metrics.json has no perf/train_tokens_per_sec (is the throughput callback on?)")
    timed = int(metrics["perf/train_timed_steps"])
    return {
        "variant": args.worker,
        "model": args.model,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "samples_per_sec": metrics["perf/train_samples_per_sec"],
        "tokens_per_sec": metrics["perf/train_tokens_per_sec"],
        "pad_fraction": metrics["perf/train_pad_fraction"],
        "steps": timed + WARMUP_STEPS,
        "timed_steps": timed,
        "step_time_s": metrics["perf/train_step_time_s"],
        **warmup_stats(ends),
        "time_to_first_batch_s": metrics.get("perf/time_to_first_batch_s"),
        "attn_implementation": metrics.get("perf/attn_implementation"),
        "total_seconds": wall,
    }


def flops_info(net: Any, input_ids: Any) -> dict[str, Any]:
    """The model's FLOPs per token by the formula and by FlopCounterMode on one forward+backward of `input_ids`."""
    non_embedding, tied_head = matmul_params(net)
    seq_len = int(input_ids.shape[1])
    formula = flops_per_token_formula(net, seq_len)
    counted = counted_flops_per_token(net, input_ids)
    config = net.config
    return {
        "formula": formula,
        "counted": counted["total"],
        "counted_by_op": counted["by_op"],
        "counted_over_formula": counted["total"] / formula,
        "non_embedding_params": non_embedding,
        "tied_lm_head_params": tied_head,
        "layers": int(config.num_hidden_layers),
        "hidden": int(config.hidden_size),
        "seq_len": seq_len,
        "vocab_size": int(config.vocab_size),
        "model_class": type(net).__name__,
        "attn_implementation": str(config._attn_implementation),
    }


def worker_flops(args: argparse.Namespace) -> dict[str, Any]:
    """flops_info alone, for a run without the raw variant (which otherwise reports it from its first run)."""
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-lm-") as log_dir:
        _, objects = build_lmlab_objects(args, log_dir)
        batch = next(iter(objects["datamodule"].train_dataloader()))
        return {"variant": "flops", **flops_info(objects["model"].net, batch["input_ids"])}


WORKERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "raw": worker_raw,
    "lmlab": worker_lmlab,
    "hf_trainer": worker_hf_trainer,
    "lmlab_compile": worker_lmlab,
    "lmlab_nobar": worker_lmlab,
    "flops": worker_flops,
}


# ---------------------------------------------------------------- driver
def worker_command(args: argparse.Namespace, which: str, count_flops: bool = False) -> str:
    """A run.py-style command template (fresh process per run; run.run_one formats and executes it)."""
    cmd = (
        f"{{python}} {BENCH_DIR / 'lm_throughput.py'} --worker {which} --model {args.model} "
        f"--max-length {args.max_length} --batch-size {args.batch_size} --steps {args.steps} --seed {args.seed} "
        f"--clip {args.clip}"
    )
    if which == "lmlab_compile" and args.compile_mode:
        cmd += f" --compile-mode {shlex.quote(args.compile_mode)}"
    cmd += (
        "".join(f" --train-override {shlex.quote(o)}" for o in args.train_override) if which.startswith("lmlab") else ""
    )
    return (
        cmd
        + (f" --max-train-docs {args.max_train_docs}" if args.max_train_docs else "")
        + (" --count-flops" if count_flops else "")
    )


def cpu_busy_s() -> float:
    """Seconds of CPU time all processes have used since boot, from /proc/stat (user..steal; NaN off Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return math.nan
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def own_children_cpu_s() -> float:
    """CPU seconds of this process's finished children and their reaped descendants (the workers, train.py)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def others_cores(seconds: float = 3.0) -> float:
    """Cores' worth of CPU that other processes use right now (over `seconds`, while no worker runs)."""
    busy, t0 = cpu_busy_s(), time.perf_counter()
    time.sleep(seconds)
    return (cpu_busy_s() - busy) / (time.perf_counter() - t0)


def wait_for_quiet(max_wait_s: float, threshold: float) -> tuple[float, float]:
    """Wait (up to max_wait_s) until other processes use under `threshold` cores: on a shared 2-core machine a run
    that starts next to someone's training measures the neighbour. Returns (seconds waited, last usage)."""
    t0 = time.perf_counter()
    usage = others_cores()
    while usage >= threshold and time.perf_counter() - t0 < max_wait_s:
        usage = others_cores(5.0)
    return time.perf_counter() - t0, usage


def schedule(variants: Sequence[str], repeats: int, repeats_slow: int) -> list[tuple[int, str]]:
    """(round, variant) in run order: round r runs every variant that still has repeats left, in the given order when
    r is even and reversed when odd (drift and a first-or-second effect cancel over rounds)."""
    out = []
    for r in range(max(repeats, repeats_slow if any(v in SLOW_VARIANTS for v in variants) else 0)):
        present = [v for v in variants if r < (repeats_slow if v in SLOW_VARIANTS else repeats)]
        out += [(r, v) for v in (present if r % 2 == 0 else present[::-1])]
    return out


def clean_rounds(runs: list[dict[str, Any]], max_others: float) -> set[Any]:
    """Rounds in which no run shared the CPUs with more than `max_others` cores of other processes' work."""
    rounds = {x["round"] for x in runs}
    return {r for r in rounds if all(x.get("others_cores", 0.0) < max_others for x in runs if x["round"] == r)}


def _geomean_row(ratios: list[float], target: float | None) -> dict[str, Any]:
    bench_run = bench_module("run")
    if not ratios:
        return {"per_round": []}
    gm, low, high = bench_run.geomean_ci(ratios)
    return {
        "per_round": ratios,
        "geomean": gm,
        "ci_low": low,
        "ci_high": high,
        "verdict": bench_run.verdict(gm, low if len(ratios) > 1 else -math.inf, target),
    }


def ratio_rows(
    runs: list[dict[str, Any]], summary: dict[str, dict[str, Any]], max_others: float = math.inf
) -> list[dict[str, Any]]:
    """Each comparison: ratio of medians, per-round ratios and their geometric mean with its 95 % CI (run.py), over
    all rounds and over the clean rounds only (see clean_rounds)."""
    bench_run = bench_module("run")
    clean = clean_rounds(runs, max_others)
    rows = []
    for num, den, target in COMPARISONS:
        if num not in summary or den not in summary:
            continue
        # Samples/s ratios = tokens/s ratios here: every block is max_length real tokens in every variant.
        row: dict[str, Any] = {
            "numerator": num,
            "denominator": den,
            "target": target,
            "of_medians": summary[num]["tokens_per_sec_median"] / summary[den]["tokens_per_sec_median"],
            **_geomean_row(bench_run.per_round_ratios(runs, num, den), target),
        }
        clean_ratios = bench_run.per_round_ratios([x for x in runs if x["round"] in clean], num, den)
        row["clean"] = {"max_others_cores": max_others, **_geomean_row(clean_ratios, target)}
        rows.append(row)
    return rows


def summarize(
    runs: list[dict[str, Any]], variants: Sequence[str], flops: float | None, peak: float | None
) -> dict[str, dict[str, Any]]:
    """run.py's per-variant medians, plus MFU, median step time and warm-up time."""
    summary = bench_module("run").summarize(runs, list(variants))
    for name, s in summary.items():
        ok = [x for x in runs if x["variant"] == name and "error" not in x]
        s["tokens_per_sec_min"] = min(x["tokens_per_sec"] for x in ok)
        s["tokens_per_sec_max"] = max(x["tokens_per_sec"] for x in ok)
        s["step_time_s_median"] = statistics.median(
            x["timed_seconds"] / x["timed_steps"] if "timed_seconds" in x else x["step_time_s"] for x in ok
        )
        others = [x.get("others_cores", 0.0) for x in ok]
        s["others_cores_median"], s["others_cores_max"] = statistics.median(others), max(others)
        for key in ("warmup_s", "warmup_excess_s"):
            values = [x[key] for x in ok if key in x]
            if values:
                s[f"{key}_median"] = statistics.median(values)
        if flops and peak:
            s["mfu"] = s["tokens_per_sec_median"] * flops / peak
    if "lmlab_compile" in summary and "warmup_excess_s_median" in summary["lmlab_compile"]:
        eager = summary.get("lmlab", {}).get("warmup_excess_s_median", 0.0)
        summary["lmlab_compile"]["compile_s"] = summary["lmlab_compile"]["warmup_excess_s_median"] - eager
    return summary


def report(result: dict[str, Any]) -> str:
    """The printed tables: per variant, ratios with verdicts, the peak and the FLOPs cross-check."""
    summary, flops, peak = result["summary"], result.get("flops") or {}, result["gemm_peak"]
    lines = [
        "| variant | runs | tokens/s median | min-max | ms/step | MFU | warm-up s (first 3 steps) | excess s | "
        "others' cores (median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        mfu = f"{s['mfu']:.1%}" if "mfu" in s else "-"
        warm = f"{s['warmup_s_median']:.1f}" if "warmup_s_median" in s else "-"
        excess = f"{s['warmup_excess_s_median']:.1f}" if "warmup_excess_s_median" in s else "-"
        lines.append(
            f"| {name} | {s['runs']} | {s['tokens_per_sec_median']:.0f} | {s['tokens_per_sec_min']:.0f}-"
            f"{s['tokens_per_sec_max']:.0f} | {1000 * s['step_time_s_median']:.1f} | {mfu} | {warm} | {excess} | "
            f"{s['others_cores_median']:.2f} |"
        )
    lines += [
        "",
        "| comparison | ratio of medians | per-round: geometric mean [95% CI] (n, min-max) | target | "
        "clean rounds only | target (clean) |",
        "|---|---|---|---|---|---|",
    ]

    def cell(row: dict[str, Any]) -> tuple[str, str]:
        r = row["per_round"]
        if not r:
            return "-", "-"
        if len(r) == 1:
            return f"{row['geomean']:.3f} (n=1)", row["verdict"]
        return (
            f"{row['geomean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] (n={len(r)}, {min(r):.3f}-{max(r):.3f})",
            row["verdict"],
        )

    for row in result["ratios"]:
        per_round, judged = cell(row)
        clean, clean_judged = cell(row["clean"])
        lines.append(
            f"| {row['numerator']} / {row['denominator']} | {row['of_medians']:.3f} | {per_round} | "
            f"{judged} | {clean} | {clean_judged} |"
        )
    others = [x.get("others_cores", 0.0) for x in result["runs"] if "error" not in x]
    if others:
        lines += [
            "",
            f"other processes' CPU during the runs: median {statistics.median(others):.2f} cores, max "
            f"{max(others):.2f} (clean round: every run under {result['params']['clean_cores']} cores; "
            f"{len(clean_rounds(result['runs'], result['params']['clean_cores']))} of "
            f"{len({x['round'] for x in result['runs']})} rounds)",
        ]
    if "loadavg_before" in result["params"]:
        b, a = result["params"]["loadavg_before"], result["params"]["loadavg_after"]
        lines += [
            "",
            f"load average (1/5/15 min) before: {b[0]:.2f}/{b[1]:.2f}/{b[2]:.2f}, after: "
            f"{a[0]:.2f}/{a[1]:.2f}/{a[2]:.2f}; clipping: {result['params']['clip'] or 'off'} in every variant",
        ]
    lines += [
        "",
        f"fp32 GEMM peak ({peak['n']}x{peak['n']} torch.mm, {peak['threads']} threads, best of "
        f"{peak['repeats']}): {peak['flops'] / 1e9:.1f} GFLOP/s (before {peak['before'] / 1e9:.1f}, after "
        f"{peak['after'] / 1e9:.1f})",
    ]
    if flops:
        lines.append(
            f"FLOPs/token = 6 x (non-embedding {flops['non_embedding_params']:,} + tied lm_head "
            f"{flops['tied_lm_head_params']:,}) + 12 x {flops['layers']} layers x {flops['hidden']} hidden x "
            f"{flops['seq_len']} tokens = {flops['formula'] / 1e6:.3f} MFLOP; FlopCounterMode (1 fwd+bwd): "
            f"{flops['counted'] / 1e6:.3f} MFLOP ({flops['counted_over_formula']:.4f}x the formula)"
        )
    if "compile_s" in summary.get("lmlab_compile", {}):
        lines.append(
            f"torch.compile time (lmlab_compile's first-3-steps excess minus eager lmlab's): "
            f"{summary['lmlab_compile']['compile_s']:.1f} s"
        )
    return "\n".join(lines)


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """The flops worker once, then the interleaved rounds, with the GEMM peak measured before and after."""
    bench_run = bench_module("run")
    variants = [v for v in args.variants.split(",") if v]
    params = {"python": sys.executable}
    load_before = os.getloadavg()
    before = gemm_peak(threads=args.threads)
    flops: dict[str, Any] | None = None
    if "raw" not in variants:  # otherwise the first raw run counts them
        flops_run = bench_run.run_one(
            "flops", worker_command(args, "flops"), params, args.timeout_s, required=("formula", "counted")
        )
        flops = (
            None
            if "error" in flops_run
            else {k: v for k, v in flops_run.items() if k not in ("cmd", "wall_s", "variant")}
        )
        if flops is None:
            print(f"FAILED flops: {flops_run['error']}", file=sys.stderr)
    runs = []
    for r, name in schedule(variants, args.repeats, args.repeats_slow):
        count = name == "raw" and flops is None
        waited, before_run = wait_for_quiet(args.quiet_wait_s, args.quiet_cores) if args.quiet_wait_s else (0.0, 0.0)
        busy, own, t0 = cpu_busy_s(), own_children_cpu_s(), time.perf_counter()
        rec = bench_run.run_one(name, worker_command(args, name, count_flops=count), params, args.timeout_s)
        # Other processes' CPU during the run, in cores (all CPU time minus this run's): 0 on a quiet machine; a
        # neighbour's training shows as ~1-2 and makes the run measure the contention, not the loop.
        others = (cpu_busy_s() - busy - (own_children_cpu_s() - own)) / (time.perf_counter() - t0)
        rec.update(round=r, others_cores=max(others, 0.0), others_cores_before=before_run, quiet_wait_s=waited)
        runs.append(rec)
        if count and "flops" in rec:
            flops = rec.pop("flops")
        status = rec.get("error") or f"{rec['tokens_per_sec']:.0f} tokens/s"
        print(
            f"[round {r}] {name}: {status} ({rec.get('wall_s', 0):.0f} s; other processes {rec['others_cores']:.2f}"
            f" cores; waited {waited:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    after = gemm_peak(threads=args.threads)
    peak = {**before, "flops": max(before["flops"], after["flops"]), "before": before["flops"], "after": after["flops"]}
    summary = summarize(runs, variants, flops["formula"] if flops else None, peak["flops"])
    params = {
        "model": args.model,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "seed": args.seed,
        "clip": args.clip,
        "compile_mode": args.compile_mode,
        "repeats": args.repeats,
        "repeats_slow": args.repeats_slow,
        "variants": variants,
        "max_train_docs": args.max_train_docs,
        "warmup_steps": WARMUP_STEPS,
        "python": sys.executable,
        "quiet_wait_s": args.quiet_wait_s,
        "quiet_cores": args.quiet_cores,
        "clean_cores": args.clean_cores,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    return {
        "params": params,
        "gemm_peak": peak,
        "flops": flops,
        "runs": runs,
        "summary": summary,
        "ratios": ratio_rows(runs, summary, args.clean_cores),
        "mfu": {name: s.get("mfu") for name, s in summary.items()},
        "mfu_formula": "tokens/s x (6 x (non-embedding + tied lm_head params) + 12 x layers x hidden x seq_len) "
        "/ fp32 GEMM peak",
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, in run order, of {VARIANTS} (default: all but lmlab_nobar)",
    )
    p.add_argument("--model", default="llama_small", choices=MODELS)
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per packed block (default: lmlab's task=causal_lm dataset.max_length)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="blocks per step (default: lmlab's dataset.batch_size)")
    p.add_argument("--steps", type=int, default=30, help=f"optimizer steps per run (> {WARMUP_STEPS})")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--clip",
        type=float,
        default=1.0,
        help="gradient clipping max norm in every variant (default 1.0, lmlab's default recipe; 0 = no clipping)",
    )
    p.add_argument("--repeats", type=int, default=5, help="rounds of raw and lmlab")
    p.add_argument(
        "--repeats-slow",
        type=int,
        default=None,
        help=f"rounds of {' and '.join(SLOW_VARIANTS)} (the first ones; default min(2, --repeats))",
    )
    p.add_argument(
        "--max-train-docs",
        type=int,
        default=None,
        help="dataset.max_samples.train (default: the whole train split; fewer = a faster BPE/set-up)",
    )
    p.add_argument("--threads", type=int, default=None, help="GEMM-peak threads (default: torch's, as the workers)")
    p.add_argument("--timeout-s", type=float, default=900.0, help="per run")
    p.add_argument(
        "--quiet-wait-s",
        type=float,
        default=0.0,
        help="before each run, wait up to this long for other processes to use < --quiet-cores cores",
    )
    p.add_argument("--quiet-cores", type=float, default=0.3)
    p.add_argument(
        "--clean-cores",
        type=float,
        default=0.25,
        help="a round is clean when other processes used under this many cores in each of its runs",
    )
    p.add_argument(
        "--train-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra train.py override for the lmlab variants (e.g. callbacks.progress_bar=null)",
    )
    p.add_argument(
        "--compile-mode",
        default=None,
        help="lmlab_compile's model.compile_mode (torch.compile's mode; default: torch's default mode)",
    )
    p.add_argument("--tiny", action="store_true", help=f"a < 60 s end-to-end check: {TINY}")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write everything here")
    p.add_argument("--worker", choices=tuple(WORKERS), default=None, help=argparse.SUPPRESS)
    p.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.tiny:
        for key, value in TINY.items():  # options given explicitly win
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    if args.repeats_slow is None:
        args.repeats_slow = min(2, args.repeats)
    if args.steps <= WARMUP_STEPS:
        p.error(f"--steps must be > {WARMUP_STEPS} (timing starts after step {WARMUP_STEPS}); got {args.steps}")
    if args.repeats < 1 or args.repeats_slow < 0:
        p.error("--repeats must be >= 1 and --repeats-slow >= 0")
    unknown = [v for v in args.variants.split(",") if v and v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {VARIANTS}")
    # Offline, no tokenizer thread pool competing with torch for the cores; workers import lmlab from src/.
    os.environ.update(bench_module("lmlab_run").TRAIN_ENV)
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if x)
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))
    if args.max_length is None or args.batch_size is None:
        # lmlab's causal-LM recipe decides the batch shape; the workers are then given it explicitly.
        with tempfile.TemporaryDirectory(prefix="lmlab-bench-lm-") as log_dir:
            dataset = compose_config(args, log_dir).dataset
        args.max_length = args.max_length or int(dataset.max_length)
        args.batch_size = args.batch_size or int(dataset.batch_size)
    if args.worker:
        import transformers

        transformers.logging.set_verbosity_error()
        with contextlib.redirect_stdout(sys.stderr):
            result = WORKERS[args.worker](args)
        print(json.dumps(result), flush=True)
        return 0
    result = run_all(args)
    print(report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    failed = [r for r in result["runs"] if "error" in r] + ([] if result["flops"] else [{"variant": "flops"}])
    for r in failed:
        print(f"FAILED {r['variant']} (round {r.get('round')}): {r.get('error')}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
