"""`dataset=mixture` (issue 22, data mixtures): a causal LM pre-trained on BBC News and a generated corpus with
weights, through the CLI. The training order's shares, its determinism, per-source val/test metrics and their
totals, the mixture in metrics.json and the manifest, eval.py's exact test numbers, bitwise resume from a mid-epoch
step checkpoint, a weight of 0, and bad mixtures refused."""

from __future__ import annotations

import json
import math
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import read_metrics, run_cli, single_run_dir
from tests.test_elastic_resume import DDP, KILL, _blocks, _comparable, _log

WORDS = "the a of market team film government minister player music game election company shares".split()


def _corpus(path: Path, n: int = 200) -> Path:
    rng = random.Random(0)
    rows = [{"id": i, "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40)))} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _args(corpus: Path) -> list[str]:
    """A tiny Llama (attention dropout on, so a resume's RNG matters) on 32-token blocks of BBC (4/2/2 articles) and
    the generated corpus (hash split), 0.3 / 0.7, 12 steps of 4 blocks, a last.ckpt every 4 steps."""
    return [
        "task=causal_lm",
        "model=llama_tiny",
        "+model.from_scratch.attention_dropout=0.1",
        "dataset=mixture",
        f"dataset.mixture.mine.source.path={corpus}",
        "dataset.mixture.bbc.max_samples={train: 4, val: 2, test: 2}",
        "dataset.max_length=32",
        "dataset.batch_size=4",
        "dataset.eval_batch_size=16",
        "dataset.log_positions=true",
        "trainer.max_epochs=1",
        "trainer.max_steps=12",
        "trainer.num_sanity_val_steps=0",
        "callbacks.last_checkpoint.every_n_train_steps=4",
        "callbacks.progress_bar=null",
        "callbacks.early_stopping=null",
        "export_model=false",
        "task.samples.max_new_tokens=4",
    ]


def _train(corpus: Path, log_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Any:
    return run_cli("train.py", *_args(corpus), f"paths.log_dir={log_dir}", *extra, env=env, timeout=600)


# ---- the order, without training
def test_mixture_order_shares_cycling_and_determinism() -> None:
    from lmlab.data.mixture import mixture_order

    sizes, weights = [100, 900], [0.6, 0.4]  # BBC-like small source upsampled (600 > 100), the large one cut
    order = mixture_order(sizes, weights, seed=3, epoch=0)
    assert len(order) == 1000
    small = order[order < 100]
    assert len(small) == 600 and np.bincount(small).tolist() == [6] * 100  # 6 whole passes of its blocks
    large = order[order >= 100]
    assert len(large) == 400 == len(set(large.tolist()))  # a subset, each block at most once
    # The shares along the order (what a run that stops early consumed): within 4 binomial sigmas everywhere.
    for stop in (50, 200, 500):
        count = int((order[:stop] < 100).sum())
        assert abs(count - 0.6 * stop) <= 4 * math.sqrt(stop * 0.6 * 0.4), (stop, count)
    assert np.array_equal(order, mixture_order(sizes, weights, seed=3, epoch=0))  # same (seed, epoch): same
    assert not np.array_equal(order, mixture_order(sizes, weights, seed=4, epoch=0))
    assert not np.array_equal(order, mixture_order(sizes, weights, seed=3, epoch=1))
    # Weight 0: never drawn; the epoch keeps every source's blocks as its length.
    only = mixture_order([50, 70], [0.0, 1.0], seed=0, epoch=0)
    assert len(only) == 120 and only.min() >= 50


def test_mixture_sampler_is_sliced_and_resumed_like_the_single_source_one() -> None:
    from lmlab.data.mixture import MixtureBlockSampler, mixture_order

    order = mixture_order([30, 73], [0.3, 0.7], seed=7, epoch=0)
    ranks = [MixtureBlockSampler([30, 73], [0.3, 0.7], 4, seed=7, world_size=2, rank=r) for r in range(2)]
    for sampler in ranks:
        sampler.resume(0, start=20, batches_done=5)  # a one-rank run had trained 5 batches of 4
    taken = [list(s) for s in ranks]
    assert sorted(taken[0] + taken[1]) == sorted(order[20:100].tolist())  # 10 whole steps of 2 x 4, disjoint
    assert taken[1][:4] == order[24:28].tolist()


# ---- through the CLI
@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The uninterrupted mixture run: (corpus, run dir)."""
    root = tmp_path_factory.mktemp("mixture")
    corpus = _corpus(root / "corpus.jsonl")
    result = _train(corpus, root / "logs")
    assert result.returncode == 0, result.stderr[-3000:]
    return corpus, single_run_dir(root / "logs")


def test_per_source_metrics_totals_shares_and_records(reference: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, run_dir = reference
    metrics = read_metrics(run_dir)
    for stage in ("val", "test"):
        parts = {
            s: {k: metrics[f"{stage}/{s}/{k}"] for k in ("loss", "bpb", "tokens", "bytes")} for s in ("bbc", "mine")
        }
        assert all(p["tokens"] > 0 and p["bytes"] > 0 for p in parts.values())
        tokens, bytes_ = (sum(p[k] for p in parts.values()) for k in ("tokens", "bytes"))
        assert metrics[f"{stage}/tokens"] == tokens  # every source scored, nothing else
        # The totals: loss over all tokens (token-weighted), bits-per-byte over all bytes (byte-weighted).
        assert metrics[f"{stage}/loss"] == pytest.approx(
            sum(p["loss"] * p["tokens"] for p in parts.values()) / tokens, abs=1e-5
        )
        assert metrics[f"{stage}/bpb"] == pytest.approx(
            sum(p["bpb"] * p["bytes"] for p in parts.values()) / bytes_, abs=1e-5
        )
        assert parts["bbc"]["bpb"] != parts["mine"]["bpb"]
    info = {
        s: {k: metrics[f"mixture/{s}/{k}"] for k in ("weight", "train_blocks", "epoch_blocks")} for s in ("bbc", "mine")
    }
    assert info["bbc"]["weight"] == pytest.approx(0.3) and info["mine"]["weight"] == pytest.approx(0.7)
    n = info["bbc"]["train_blocks"] + info["mine"]["train_blocks"]
    assert (
        info["bbc"]["epoch_blocks"] == round(0.3 * n)
        and info["bbc"]["epoch_blocks"] + info["mine"]["epoch_blocks"] == n
    )
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["data"]["mixture"]["mine"]["train_tokens"] == metrics["mixture/mine/train_tokens"] > 0
    assert "split by hash" in (run_dir / "train.log").read_text()  # the files source took its LM (shard) path

    # The consumed blocks: 48 (12 steps x 4), BBC's share within 4 binomial sigmas of 0.3.
    blocks = _blocks(_log(run_dir))
    assert len(blocks) == 48
    bbc = sum(b < info["bbc"]["train_blocks"] for b in blocks)
    assert abs(bbc - 0.3 * 48) <= 4 * math.sqrt(48 * 0.3 * 0.7), bbc

    # eval.py on the run dir: the same per-source and total test numbers (one loader, sources in the batches).
    result = run_cli("eval.py", f"ckpt_path={run_dir}", f"paths.log_dir={tmp_path / 'eval_logs'}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    evaluated = read_metrics(single_run_dir(tmp_path / "eval_logs", task="eval"))
    names = ("loss", "ppl", "token_acc", "bpb", "tokens", "bytes")
    keys = [k for k in metrics if k.startswith("test/") and k.rsplit("/", 1)[1] in names]
    assert len(keys) == 5 + 2 * 6 and {k: evaluated[k] for k in keys} == {k: metrics[k] for k in keys}


def test_same_seed_same_order_other_seed_other_order(reference: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, run_dir = reference
    again = _train(corpus, tmp_path / "again", "trainer.max_steps=3")
    other = _train(corpus, tmp_path / "other", "trainer.max_steps=3", "seed=7")
    assert again.returncode == 0 and other.returncode == 0, (again.stderr + other.stderr)[-3000:]
    first = _blocks(_log(run_dir))[:12]
    assert _blocks(_log(single_run_dir(tmp_path / "again"))) == first
    assert _blocks(_log(single_run_dir(tmp_path / "other"))) != first


def test_sigkill_after_a_step_checkpoint_resumes_a_mixture_bitwise(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    corpus, run_dir = reference
    killed = _train(corpus, tmp_path, env=KILL)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed_dir = single_run_dir(tmp_path)
    checkpoint = torch.load(resumed_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 4 and checkpoint["lmlab_resume"]["positions"] == 16  # mid-epoch
    resumed = _train(corpus, tmp_path, f"ckpt_path={resumed_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _comparable(read_metrics(resumed_dir)) == _comparable(read_metrics(run_dir))
    assert _log(resumed_dir) == _log(run_dir)  # the same batches, in the same order


def test_weight_zero_trains_on_the_others_and_still_scores_it(reference: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, _ = reference
    result = _train(corpus, tmp_path, "dataset.mixture.bbc.weight=0", "trainer.max_steps=3")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = single_run_dir(tmp_path)
    metrics = read_metrics(run_dir)
    assert metrics["mixture/bbc/weight"] == 0 and metrics["mixture/bbc/epoch_blocks"] == 0
    assert min(_blocks(_log(run_dir))) >= metrics["mixture/bbc/train_blocks"]  # no BBC block trained on
    assert metrics["val/bbc/bpb"] > 0 and metrics["test/bbc/bpb"] > 0  # still scored


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset.mixture.bbc.weight=-0.5"], "dataset.mixture.bbc.weight=-0.5: weights cannot be negative"),
        (["dataset.mixture.bbc.weight=0", "dataset.mixture.mine.weight=0"], "every weight of dataset.mixture is 0"),
        (["dataset.mixture.bcc.weight=0.5"], "Key 'bcc' is not in struct"),  # Hydra's: a typo in a source name
        (
            ["+dataset.mixture.bcc.weight=0.5"],
            "dataset.mixture.bcc has no source (the sources are ['bbc', 'mine', 'bcc'])",
        ),
        (["+dataset.mixture.mine.batch_size=2"], "dataset.mixture.mine.batch_size is not a per-source setting"),
        (["task=masked_lm", "model=tiny_bert"], "dataset=mixture pre-trains a causal LM: use task=causal_lm"),
    ],
)
def test_bad_mixtures_through_the_cli(overrides: list[str], message: str, tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "corpus.jsonl", n=40)
    base = [a for a in _args(corpus) if not a.startswith(("model=", "+model.", "task"))]
    lm = ["task=causal_lm", "model=llama_tiny"] if not any(o.startswith("task=") for o in overrides) else []
    result = run_cli("train.py", *base, *lm, f"paths.log_dir={tmp_path / 'logs'}", *overrides)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]
    assert "Traceback" not in result.stderr or "Key 'bcc'" in message


def test_mixture_resumed_on_two_ranks_continues_its_order(reference: tuple[Path, Path], tmp_path: Path) -> None:
    """The 1 -> 2 rank elastic resume of tests/test_elastic_resume.py, on a mixture: the same global positions."""
    corpus, run_dir = reference
    killed = _train(corpus, tmp_path / "one", env=KILL)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    one = single_run_dir(tmp_path / "one")
    resumed = _train(corpus, tmp_path / "two", *DDP, "dataset.batch_size=2", f"ckpt_path={one}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming epoch 0 at global position 16 of" in resumed.stdout + resumed.stderr
    before, after = _log(one, up_to_step=4), _log(single_run_dir(tmp_path / "two"))
    assert {rank for rank, _, _ in after} == {0, 1}
    reference_log = _log(run_dir)
    # Positions 0-47 each once (steps 1-4 at one rank, 5-12 on two ranks of 2), holding the reference's blocks (a
    # mixture's order may hold a block twice: an upsampled source).
    taken = {p: b for r in [*before.values(), *after.values()] for p, b in zip(range(*r["positions"]), r["blocks"])}
    expected = {p: b for r in reference_log.values() for p, b in zip(range(*r["positions"]), r["blocks"])}
    assert sum(len(r["blocks"]) for r in [*before.values(), *after.values()]) == len(taken) == 48
    assert taken == expected
