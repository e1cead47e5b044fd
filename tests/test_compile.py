"""model.compile (issue 25): no recompiles between train, val and test once the first validation has run, counted
with torch._dynamo's own counters on a tiny compiled causal LM (backend aot_eager: dynamo traces and guards as with
inductor, without generating C++, so the test takes seconds); perf/compile_s in metrics.json; and the fallback
message where inductor cannot run."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl

from lmlab.models.backbone import compile_in_place
from tests.test_language_modeling import LM_TINY

# What RecompileProbe saw, read by the test (Hydra instantiates the probe from this module).
SEEN: dict[str, Any] = {}


def dynamo_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {"frames": counters["frames"]["total"], "graphs": counters["stats"]["unique_graphs"]}


class RecompileProbe(pl.Callback):
    """Records dynamo's frame compiles and graphs at the end of every validation of the fit."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            SEEN.setdefault("after_val", []).append(dynamo_counts())


def test_compiled_lm_does_not_recompile_after_the_first_validation(train_tiny) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    SEEN.clear()
    metrics, run_dir = train_tiny(
        "model.compile=aot_eager",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=6",
        "callbacks.early_stopping=null",
        "dataset.max_samples.val=12",  # 2 val batches (16 + a short one with the split's partial, padded block)
        "dataset.max_samples.test=10",  # a short last batch of another size than val's
        "+callbacks.recompiles._target_=tests.test_compile.RecompileProbe",
        base=LM_TINY,
    )
    try:
        warm, *later = SEEN["after_val"]
        end = dynamo_counts()  # after the post-fit validation and test of the best checkpoint
        assert len(later) == 3  # epochs 2 and 3, then the post-fit validation of the best checkpoint
        assert warm["frames"] >= 2  # the training graph and the eval graph(s) were compiled...
        assert all(x == warm for x in later) and end == warm, (warm, later, end)  # ...and never again
        assert math.isfinite(metrics["test/loss"]) and metrics["perf/train_tokens_per_sec"] > 0
        assert 0 < metrics["perf/compile_s"] < 600
    finally:
        torch._dynamo.reset()


def test_eager_run_has_no_compile_time_and_unavailable_compile_falls_back(train_tiny, caplog, monkeypatch) -> None:
    metrics, _ = train_tiny("trainer.max_steps=3", base=LM_TINY)
    assert "perf/compile_s" not in metrics

    # inductor on a CPU without a C++ compiler: a clear message, and the run trains eager.
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CXX", raising=False)
    net = pl.LightningModule()
    with caplog.at_level(logging.WARNING, logger="lmlab.compile"):
        assert compile_in_place(net, True, None) is False
    assert "model.compile=True: inductor needs a C++ compiler for CPU kernels (g++ or clang++ on PATH" in caplog.text
    assert "training without compile (eager)" in caplog.text
    assert net._compiled_call_impl is None
