"""Training throughput: samples/s, real (non-padding) tokens/s, pad fraction, step time, peak memory, GPU MFU.

Logged every `log_every_n_steps` optimizer steps as `perf/*` to the run's loggers, and summarised for
metrics.json by `perf_summary` with the benchmark's definition: samples (real tokens) processed from the END of
training step `warmup_steps` (3) to the end of the last step, divided by that wall time, with the time spent in
validation loops removed (benchmarks/baselines.py measures its raw loop the same way).
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn

from lmlab.console import job_age_s, process_age_s  # noqa: F401 - process_age_s: benchmarks/startup.py

log = logging.getLogger(__name__)

_COMPUTE_DTYPE = {
    "bf16-mixed": torch.bfloat16,
    "bf16-true": torch.bfloat16,
    "16-mixed": torch.float16,
    "16-true": torch.float16,
    "32-true": torch.float32,
    "64-true": torch.float64,
}


def peak_rss_mb() -> float:
    """This process's peak resident memory (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def anon_rss_mb() -> float | None:
    """This process's anonymous resident memory now (Linux `RssAnon`; None elsewhere). Unlike RSS it leaves out
    file-backed pages: the memory-mapped token shards a run has touched are page cache, shared by every rank and
    reclaimable, so RSS would grow with the corpus while the memory training really holds does not."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("RssAnon:"))
    except (OSError, StopIteration):
        return None


def matmul_params(module: torch.nn.Module) -> int:
    """Parameters that take part in a matmul per token: all but embedding lookups (found by module type, not by
    name: GPT-2's are `wte`/`wpe`), plus a tied lm_head (the d x V projection is a matmul even when its weight is
    the input embedding's, and `parameters()` lists that weight once, under the embedding)."""
    embedding = {id(p) for m in module.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    total = sum(p.numel() for p in module.parameters() if id(p) not in embedding)  # parameters() dedupes
    for sub in module.modules():
        get_head = getattr(sub, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        if isinstance(head, torch.nn.Module) and id(getattr(head, "weight", None)) in embedding:
            return total + head.weight.numel()
    return total


# Dense (no-sparsity) datasheet peaks, FLOP/s, for chips Lightning 2.6's table misses or lists with sparsity:
# it has no plain "NVIDIA H200" and gives "h200 sxm1" the 2:4-sparse 2.0e15 bf16 (benchmarks/gpu_check.py, findings).
_DENSE_PEAKS = {"h200": {torch.bfloat16: 989.4e12, torch.float16: 989.4e12, "tf32": 494.7e12, torch.float32: 67e12}}


def available_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The CUDA device's dense peak for `dtype` (None when unknown): see `dense_peak`."""
    return dense_peak(torch.cuda.get_device_name(device), dtype, device)


def dense_peak(chip: str, dtype: torch.dtype, device: torch.device | None = None) -> float | None:
    """Ours where listed (matched in the lower-cased device name), else Lightning's table for `device`."""
    for key, peaks in _DENSE_PEAKS.items():
        if key in chip.lower():
            if dtype is torch.float32 and torch.get_float32_matmul_precision() != "highest":
                return peaks["tf32"]  # as Lightning does: fp32 matmuls run as TF32 then
            return peaks.get(dtype)
    if device is None:
        return None
    from lightning_fabric.utilities.throughput import get_available_flops

    return get_available_flops(device, dtype)


def flops_per_token(config: Any, non_embedding_params: int, seq_len: float) -> float:
    """Training FLOPs per token: 6N for the weight matmuls (forward + backward) plus 12·L·d·T for attention
    scores (PaLM appendix B). N excludes embeddings, whose lookups are not matmuls."""
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    return 6.0 * non_embedding_params + 12.0 * layers * hidden * seq_len


def compile_seconds() -> float:
    """Seconds torch.compile has spent in this process so far, as torch's own timers record them: dynamo's frame
    compiles (tracing, AOT autograd, the forward's code generation) plus the backward graphs compiled at their first
    backward. 0 when torch._dynamo was never imported (nothing was compiled)."""
    if "torch._dynamo" not in sys.modules:
        return 0.0
    from torch._dynamo.utils import compilation_time_metrics

    keys = ("_compile.compile_inner", "backward._backward_impl")  # torch's timer names (torch 2.13)
    return sum(sum(compilation_time_metrics.get(key, ())) for key in keys)


class Throughput(Callback):
    """Measures training throughput without adding a device sync per step on CPU (one per step on CUDA, as
    Lightning's ThroughputMonitor does, so step end times are real)."""

    def __init__(self, warmup_steps: int = 3, log_every_n_steps: int | None = None):
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}")
        self.warmup_steps = warmup_steps
        self.log_every_n_steps = log_every_n_steps

    # ---- state
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.cuda = trainer.strategy.root_device.type == "cuda"
        self.steps = 0
        self.last_global_step = trainer.global_step
        self.pending = [0, 0]  # samples, padded tokens of the batches of the step in progress
        self.samples = self.padded = 0
        self.real: Any = 0  # a device tensor once batches arrive: summed without a sync per step
        self.excluded = 0.0  # seconds spent in validation since fit start
        self.paused_at: float | None = None
        self.last_end: float | None = None
        self.warm: dict[str, Any] | None = None
        self.marks: dict[int, dict[str, Any]] = {}  # after each warm-up step: a short resumed attempt times from one
        self.start_step: int | None = None  # the global step this attempt started at (> 0: a resumed run)
        self.last_log: dict[str, Any] | None = None
        self.seq_len_sum = 0.0
        self.anon_rss: float | None = None  # the largest RssAnon sampled during training (warm-up end, fit end)
        self.first_batch_s: float | None = None
        self.first_batch_cpu_s = 0.0
        self.compiled = bool(getattr(pl_module, "compiled", False))  # model.compile took effect
        self.compile_s0 = compile_seconds()
        self.attn_implementation = getattr(pl_module, "attn_implementation", None)
        if self.attn_implementation:
            for logger in trainer.loggers:
                logger.log_hyperparams({"perf/attn_implementation": self.attn_implementation})
        self.available_flops = None
        self.flops_config = None
        if self.cuda:
            dtype = _COMPUTE_DTYPE.get(str(trainer.precision), torch.float32)
            self.available_flops = available_flops(trainer.strategy.root_device, dtype)
            self.non_embedding_params = matmul_params(pl_module)
            self.flops_config = getattr(getattr(pl_module, "backbone", pl_module), "config", None)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _sample_anon_rss(self) -> None:
        now = anon_rss_mb()
        if now is not None:
            self.anon_rss = max(now, self.anon_rss or 0.0)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sample_anon_rss()
        if self.compiled:
            compile_s = compile_seconds() - self.compile_s0
            log.info("torch.compile: %.1f s of the fit (train and validation graphs)", compile_s)
            for logger in trainer.loggers:
                logger.log_metrics({"perf/compile_s": compile_s}, step=trainer.global_step)
        # Logged here, not at the first batch: a line printed while the rich progress bar is live breaks it.
        if self.first_batch_s is not None:
            log.info(
                "first training batch %.1f s after the job started (process CPU %.1f s)",
                self.first_batch_s,
                self.first_batch_cpu_s,
            )

    # ---- validation time is not training time
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and self.last_end is not None and self.paused_at is None:
            self.paused_at = self._now()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.start_step is None:
            self.start_step = trainer.global_step
        if self.first_batch_s is None:
            self.first_batch_s = job_age_s()
            usage = resource.getrusage(resource.RUSAGE_SELF)  # CPU time: comparable on a busy machine
            self.first_batch_cpu_s = usage.ru_utime + usage.ru_stime
        if self.paused_at is not None:
            self.excluded += time.perf_counter() - self.paused_at
            self.paused_at = None
        mask = batch["attention_mask"]
        self.pending[0] += int(mask.shape[0])
        self.pending[1] += int(mask.numel())
        self.real = self.real + mask.sum()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.last_global_step:
            return  # gradient accumulation: the optimizer step is not finished yet
        self.last_global_step = trainer.global_step
        now = self._now()
        self.steps += 1
        self.samples += self.pending[0]
        self.padded += self.pending[1]
        self.seq_len_sum += self.pending[1] / max(self.pending[0], 1)
        self.pending = [0, 0]
        self.last_end = now
        if self.steps <= self.warmup_steps:
            self.marks[self.steps] = self._mark(now)
        if self.steps == self.warmup_steps:
            self._sample_anon_rss()
            self.warm = self.marks[self.steps]
            self.last_log = self.warm
        every = self.log_every_n_steps or trainer.log_every_n_steps
        if self.last_log is not None and self.steps > self.warmup_steps and self.steps % every == 0:
            mark = self._mark(now)
            metrics = self._rates(self.last_log, mark, prefix="perf/")
            self.last_log = mark
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def _mark(self, now: float) -> dict[str, Any]:
        real = self.real.clone() if isinstance(self.real, torch.Tensor) else self.real
        return {
            "t": now - self.excluded,
            "steps": self.steps,
            "samples": self.samples,
            "padded": self.padded,
            "real": real,
            "seq_len_sum": self.seq_len_sum,
        }

    def _rates(self, start: dict[str, Any], end: dict[str, Any], prefix: str) -> dict[str, float]:
        seconds = end["t"] - start["t"]
        steps = end["steps"] - start["steps"]
        real = float(end["real"] - start["real"])
        padded = end["padded"] - start["padded"]
        out = {
            f"{prefix}samples_per_sec": (end["samples"] - start["samples"]) / seconds,
            f"{prefix}tokens_per_sec": real / seconds,
            f"{prefix}pad_fraction": 1.0 - real / padded if padded else 0.0,
            f"{prefix}step_time_s": seconds / steps,
            f"{prefix}peak_rss_mb": peak_rss_mb(),
        }
        if self.cuda:
            out[f"{prefix}peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
            if self.available_flops and self.flops_config is not None:
                seq_len = (end["seq_len_sum"] - start["seq_len_sum"]) / steps
                flops = flops_per_token(self.flops_config, self.non_embedding_params, seq_len) * real / seconds
                out[f"{prefix}mfu"] = flops / self.available_flops
        return out

    def summary(self) -> dict[str, Any]:
        """The run's training throughput for metrics.json (null values when too few steps were timed)."""
        out: dict[str, Any] = {
            "perf/attn_implementation": self.attn_implementation,
            "perf/time_to_first_batch_s": self.first_batch_s,
        }
        keys = ("samples_per_sec", "tokens_per_sec", "pad_fraction", "step_time_s")
        resumed = bool(self.start_step)
        warm = self.warm
        if resumed:
            # This process saw only the resumed attempt's steps: the numbers are of those (the first attempt's
            # were never written), timed after fewer warm-up steps when the attempt was short.
            out["perf/train_resumed"] = True
            out["perf/train_resumed_from_step"] = self.start_step
            if self.steps <= self.warmup_steps and self.steps >= 2:
                warm = self.marks.get(self.steps - 1)
            out["perf/train_note"] = (
                f"measured over the resumed attempt's steps {self.start_step + 1}-{self.start_step + self.steps}, "
                f"after {warm['steps'] if warm else self.warmup_steps} warm-up steps"
            )
        else:
            out["perf/train_resumed"] = False
        if warm is None or self.last_end is None or self.steps <= warm["steps"]:
            log.warning(
                "perf/train_* throughput needs more than %d training steps; this run had %d",
                self.warmup_steps,
                self.steps,
            )
            out.update({f"perf/train_{k}": None for k in keys})
        else:
            # `excluded` only grows when training resumes, so a validation after the last step is not in it.
            end = self._mark(self.last_end)
            rates = self._rates(warm, end, prefix="perf/train_")
            out.update({k: v for k, v in rates.items() if not k.endswith("peak_rss_mb")})
            out["perf/train_timed_steps"] = end["steps"] - warm["steps"]
        if self.compiled:  # the fit's compile time (train and validation graphs), outside perf/train_* windows
            out["perf/compile_s"] = compile_seconds() - self.compile_s0
        out["perf/tokens_seen"] = float(self.real)  # real (non-padding) training tokens, warm-up steps included
        out["perf/peak_rss_mb"] = peak_rss_mb()  # the process's peak, data preparation included
        out["perf/train_anon_rss_mb"] = self.anon_rss
        return out


def perf_summary(trainer: pl.Trainer, model: Any) -> dict[str, Any]:
    """The `perf/*` keys for metrics.json: the Throughput callback's summary, or the basics without it."""
    callback = next((c for c in trainer.callbacks if isinstance(c, Throughput)), None)
    if callback is not None and hasattr(callback, "steps"):
        return callback.summary()
    return {"perf/attn_implementation": getattr(model, "attn_implementation", None), "perf/peak_rss_mb": peak_rss_mb()}
