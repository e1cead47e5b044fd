"""Speed features wired into the pipeline: tokenization cache through the datamodule, per-batch padding,
length-grouped batches, the throughput numbers in metrics.json, and torch.compile."""

from __future__ import annotations

import functools
import logging
import math
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from lmlab.data import TextDataModule
from lmlab.data.datamodule import PadCollator
from lmlab.data.sampler import LengthGroupedSampler
from lmlab.data.sources import bbc_news
from tests.conftest import MINILM_DIR, connect_classification
from tests.test_cache import TOKENIZER_FILES, rename_vocab_entry


def make_dm(
    cache_dir: Path | None, tokenizer: str = MINILM_DIR, max_length: int = 48, train: int = 40, **kwargs
) -> TextDataModule:
    dm = TextDataModule(
        source=bbc_news,
        max_length=max_length,
        batch_size=8,
        cache_dir=str(cache_dir) if cache_dir else None,
        max_samples={"train": train, "val": 12, "test": 12},
        **kwargs,
    )
    connect_classification(dm, str(tokenizer))
    dm.setup()
    return dm


def cache_events(caplog: pytest.LogCaptureFixture) -> list[str]:
    events = [r.getMessage().split(" key=")[0] for r in caplog.records if r.name == "lmlab.data.cache"]
    caplog.clear()
    return events


def input_ids(dm: TextDataModule, split: str = "train") -> list[list[int]]:
    return dm.datasets[split].columns["input_ids"].to_lists()


def test_cache_hit_miss_per_key_and_no_reuse_across_tokenizers(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="lmlab.data.cache")
    cache = tmp_path / "cache"
    first = make_dm(cache)
    assert cache_events(caplog) == ["tokenization cache miss"]
    t0 = time.perf_counter()
    again = make_dm(cache)
    assert cache_events(caplog) == ["tokenization cache hit"]
    assert time.perf_counter() - t0 < 5  # mostly reading BBC; the cache load itself is ~10 ms
    assert input_ids(again) == input_ids(first)
    # The cached features are exactly what the tokenizer produces (special tokens, truncation).
    texts = [ex.text for ex in first.splits["train"]]
    assert input_ids(first) == first.tokenizer(texts, truncation=True, max_length=48)["input_ids"]
    assert (
        input_ids(first, "test")
        == first.tokenizer([ex.text for ex in first.splits["test"]], truncation=True, max_length=48)["input_ids"]
    )

    make_dm(cache, max_length=49)
    assert cache_events(caplog) == ["tokenization cache miss"]
    make_dm(cache, train=41)  # different data -> different fingerprint
    assert cache_events(caplog) == ["tokenization cache miss"]

    # Same class, same vocab size, same file names: one vocab string differs. Must not reuse the old cache.
    tok = tmp_path / "tok"
    tok.mkdir()
    for name in TOKENIZER_FILES:
        shutil.copy(Path(MINILM_DIR) / name, tok / name)
    copy = make_dm(cache, tokenizer=str(tok))
    assert cache_events(caplog) == ["tokenization cache miss"]  # another path is another tokenizer identity
    other = tmp_path / "tok2"
    shutil.copytree(tok, other)
    rename_vocab_entry(other, "the", "thee")
    changed = make_dm(cache, tokenizer=str(other))
    assert cache_events(caplog) == ["tokenization cache miss"]
    assert input_ids(changed) != input_ids(copy)
    assert len(list(cache.glob("tok-*.npz"))) == 5

    off = make_dm(None)  # dataset.cache_dir=null: no cache, same features
    assert cache_events(caplog) == []
    assert input_ids(off) == input_ids(first)


def test_pad_collator_pads_to_batch_max_or_multiple_like_hf(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, DataCollatorWithPadding

    dm = make_dm(tmp_path, max_length=64, train=16)
    ds = dm.datasets["train"]
    items = [ds[i] for i in range(8)]
    lengths = [len(x["input_ids"]) for x in items]
    batch = dm.collate(items)
    assert batch["input_ids"].shape == (8, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["labels"].dtype == torch.int64 and batch["idx"].tolist() == list(range(8))

    tokenizer = AutoTokenizer.from_pretrained(MINILM_DIR)  # a private copy: padding_side is changed below
    as_lists = [
        {k: (v.tolist() if k in ("input_ids", "token_type_ids") else v) for k, v in x.items() if k != "idx"}
        for x in items
    ]
    for side, multiple in (("right", None), ("right", 24), ("left", 8)):
        tokenizer.padding_side = side
        ours = PadCollator(tokenizer.pad_token_id, side, multiple)(items)
        hf = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)(as_lists)
        if multiple:
            assert ours["input_ids"].shape[1] % multiple == 0 and ours["input_ids"].shape[1] >= max(lengths)
        for key in ("input_ids", "token_type_ids", "attention_mask", "labels"):
            assert torch.equal(ours[key], hf[key]), (side, multiple, key)


def test_group_by_length_sampler_is_wired_seeded_and_left_alone_by_ddp(tmp_path: Path) -> None:
    import pytorch_lightning as pl
    from pytorch_lightning.trainer.states import RunningStage

    dm = make_dm(tmp_path, max_length=512, train=200, group_by_length=True, seed=7)
    # A DDP trainer, not launched: world_size 2, rank 0, Lightning's own decision about wrapping the sampler.
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
    dm.trainer = trainer
    loader = dm.train_dataloader()
    sampler = loader.sampler
    assert isinstance(sampler, LengthGroupedSampler)
    assert (sampler.num_replicas, sampler.rank, sampler.seed, sampler.batch_size) == (2, 0, 7, 8)
    prepared = trainer._data_connector._prepare_dataloader(loader, shuffle=True, mode=RunningStage.TRAINING)
    assert prepared.sampler is sampler  # not re-sharded by Lightning's DistributedSamplerWrapper

    dm.trainer = None  # single process: every example exactly once per epoch, new order each epoch
    sampler = dm.train_dataloader().sampler
    epochs = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
        assert sorted(epochs[-1]) == list(range(200))
    assert epochs[0] != epochs[1]
    # Grouped batches carry less padding than random ones.
    lengths = dm.datasets["train"].lengths

    def padded(order: list[int]) -> int:
        return sum(8 * max(lengths[order[i : i + 8]]) for i in range(0, len(order), 8))

    random_order = torch.randperm(200, generator=torch.Generator().manual_seed(0)).tolist()
    assert padded(epochs[0]) < 0.95 * padded(random_order)


def test_throughput_in_metrics_and_second_run_is_a_cache_hit(train_tiny, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    cache = f"dataset.cache_dir={tmp_path / 'cache'}"
    train_tiny(cache)
    assert cache_events(caplog) == ["tokenization cache miss"]
    metrics, run_dir = train_tiny(cache, "trainer.log_every_n_steps=2")
    assert cache_events(caplog) == ["tokenization cache hit"]

    assert metrics["perf/attn_implementation"] == "sdpa"  # transformers 5's default for BERT
    assert metrics["perf/train_timed_steps"] == 96 // 16 - 3
    assert metrics["perf/train_samples_per_sec"] > 0
    # BBC articles are all longer than 32 tokens: every example is 32 real tokens, no padding.
    assert metrics["perf/train_tokens_per_sec"] == pytest.approx(32 * metrics["perf/train_samples_per_sec"])
    assert metrics["perf/train_pad_fraction"] == 0.0
    assert metrics["perf/train_step_time_s"] == pytest.approx(16 / metrics["perf/train_samples_per_sec"])
    assert 100 < metrics["perf/peak_rss_mb"] < 64_000
    # Anonymous memory leaves out file-backed pages (the model's imported libraries, memory-mapped data), so it is
    # below the process's peak RSS but holds at least the model and torch's heap.
    assert 50 < metrics["perf/train_anon_rss_mb"] < metrics["perf/peak_rss_mb"]
    assert metrics["perf/time_to_first_batch_s"] > 0
    logged = pd.read_csv(run_dir / "csv" / "metrics.csv")
    rows = logged.dropna(subset=["perf/samples_per_sec"])
    assert rows["step"].tolist() == [4, 6]
    assert ((rows["perf/pad_fraction"] >= 0) & (rows["perf/pad_fraction"] <= 1)).all()
    assert (rows["perf/tokens_per_sec"] > 0).all() and (rows["perf/step_time_s"] > 0).all()
    assert "perf/attn_implementation: sdpa" in (run_dir / "csv" / "hparams.yaml").read_text()

    # With padding: short texts, long max_length, length grouping on; pad fraction is measured, not assumed.
    grouped, _ = train_tiny(
        cache, "dataset.max_length=512", "dataset.group_by_length=true", "model.attn_implementation=eager"
    )
    assert grouped["perf/attn_implementation"] == "eager"
    assert 0.0 < grouped["perf/train_pad_fraction"] < 1.0
    ratio = grouped["perf/train_tokens_per_sec"] / grouped["perf/train_samples_per_sec"]
    assert 32 < ratio < 512  # mean real tokens per example


def _has_cxx() -> bool:
    import os

    return any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++"))


@pytest.mark.slow  # inductor compiles forward+backward and an eval graph: minutes on a busy 2-core machine
@pytest.mark.skipif(
    not _has_cxx(), reason="torch.compile on CPU needs a C++ compiler (g++/clang++; set CXX); none found on PATH"
)
def test_compile_trains_and_keeps_checkpoint_names(train_tiny) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    # pad_to_multiple_of = max_length and one eval batch per split: one shape per graph, no recompiles.
    metrics, run_dir = train_tiny(
        "model.compile=true",
        "dataset.pad_to_multiple_of=32",
        "dataset.max_samples.train=64",
        "dataset.eval_batch_size=48",
        "callbacks.early_stopping=null",
    )
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert math.isfinite(metrics["test/loss"]) and metrics["perf/train_samples_per_sec"] > 0
    state = torch.load(run_dir / metrics["best/ckpt_path"], map_location="cpu", weights_only=False)["state_dict"]
    assert not any("_orig_mod" in k for k in state)  # in-place compile: same names as an uncompiled run
    torch._dynamo.reset()


def test_pad_collator_not_slower_than_hf(tmp_path: Path) -> None:
    from transformers import DataCollatorWithPadding

    dm = make_dm(tmp_path, max_length=512, train=64)
    items = [dm.datasets["train"][i] for i in range(32)]
    as_lists = [
        {k: (v.tolist() if k in ("input_ids", "token_type_ids") else v) for k, v in x.items() if k != "idx"}
        for x in items
    ]
    hf = DataCollatorWithPadding(dm.tokenizer)

    def best_of(fn, n: int = 5) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    ours = best_of(functools.partial(dm.collate, items))
    theirs = best_of(functools.partial(hf, as_lists))
    assert ours < theirs, (ours, theirs)
