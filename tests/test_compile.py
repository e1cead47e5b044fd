"""model.compile (issue 25): no recompiles between train, val and test once the first validation has run, counted
with torch._dynamo's own counters on a tiny compiled causal LM (backend aot_eager: dynamo traces and guards as with
inductor, without generating C++, so the test takes seconds); perf/compile_s in metrics.json; and the fallback
message where inductor cannot run."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
import pytorch_lightning as pl

from lmlab.errors import LmlabError
from lmlab.models.backbone import compile_in_place
from tests.conftest import run_cli
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


def test_a_compile_mode_inductor_does_not_have_is_refused_before_training(tmp_path) -> None:
    import torch._inductor

    modes = list(torch._inductor.list_mode_options())
    args = [*LM_TINY, "model.compile=true", "model.compile_mode=fastest", f"paths.log_dir={tmp_path}"]
    result = run_cli("train.py", *args)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    said = "model.compile_mode='fastest' with model.compile=True: a mode is inductor's (model.compile=true) and one of"
    assert f"{said} {modes}; use model.compile_mode=null" in out
    assert not list(tmp_path.rglob("metrics.json"))
    # A mode is inductor's: with another backend it would reach the backend as an unexpected argument.
    with pytest.raises(LmlabError, match="model.compile_mode='max-autotune' with model.compile=aot_eager"):
        compile_in_place(pl.LightningModule(), "aot_eager", None, "max-autotune")
