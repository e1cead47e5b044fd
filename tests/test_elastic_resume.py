"""Causal-LM (and masked-LM) training reads one global order of blocks, sliced by rank: a run SIGKILLed after a
step checkpoint resumes to the uninterrupted run's batches and metrics bit for bit, at one rank and at two
(trainer=ddp_cpu); a resume on two ranks of a one-rank run continues the same order (no block twice or skipped);
every block is read once per epoch. Through the CLI; `dataset.log_positions=true` is the data log each check
reads."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import read_metrics, run_cli, single_run_dir

# A tiny Llama (attention dropout on, so the restored RNG matters) on 12 BBC train documents: 456 blocks of 32
# tokens (114 batches of 4 at one rank, 57 steps of 2 x 4 at two), a last.ckpt every 4 optimizer steps.
ARGS = [
    "task=causal_lm",
    "model=llama_tiny",
    "+model.from_scratch.attention_dropout=0.1",
    "dataset.max_length=32",
    "dataset.batch_size=4",
    "dataset.eval_batch_size=16",
    "dataset.max_samples.train=12",
    "dataset.max_samples.val=4",
    "dataset.max_samples.test=4",
    "dataset.log_positions=true",
    "trainer.max_epochs=1",
    "trainer.num_sanity_val_steps=0",
    "callbacks.last_checkpoint.every_n_train_steps=4",
    "callbacks.progress_bar=null",
    "callbacks.early_stopping=null",
    "export_model=false",
    "task.samples.max_new_tokens=4",
]
DDP = ["trainer=ddp_cpu"]
KILL = {"LMLAB_FAULT_SIGNAL": "step:6:SIGKILL"}  # after step 6; the last checkpoint is step 4's


def test_sampler_positions_after_a_resume_on_another_world_size() -> None:
    from lmlab.data.packed import ElasticBlockSampler, global_order

    order = global_order(103, 7, 0)
    rank1 = ElasticBlockSampler(103, 4, seed=7, world_size=2, rank=1)
    assert len(rank1) == 48  # 12 whole steps of 2 x 4
    rank1.resume(0, start=20, batches_done=5)  # a one-rank run had trained 5 batches of 4
    assert list(rank1) == [int(order[p]) for s in range(10) for p in range(20 + 8 * s + 4, 20 + 8 * s + 8)]
    assert rank1.batch_positions(5) == (24, 28)  # the loop's batch 5 is this loader's first
    assert rank1.consumed(7) == 36 and rank1.consumed(15) == 100  # the last 3 positions: not a whole step
    assert len(rank1) == 5 * 4 + 40  # the loop counts the resumed epoch from 5
    rank1.set_epoch(1)
    assert (rank1.start, rank1.base, len(rank1)) == (0, 0, 48)
    one = ElasticBlockSampler(103, 4, seed=7)
    one.resume(0, start=20, batches_done=5)
    assert list(one) == order[20:].tolist() and len(one) == 103
    assert one.batch_positions(25) == (100, 103) and one.consumed(26) == 103  # the last, shorter batch


def _rank_rng(rank: int, init: str, out: str) -> None:
    """One of two gloo ranks with different RNG streams: gather, draw, restore its own gathered state, draw again."""
    import random

    import numpy as np

    from lmlab.launch.requeue import _set_rng_states, gather_rng_states

    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(100 + rank), np.random.seed(100 + rank), random.seed(100 + rank)
    gathered = gather_rng_states(2)
    draws = [torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()]
    _set_rng_states(gathered[rank])
    again = [torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()]
    torch.save({"draws": draws, "again": again, "n": len(gathered)}, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_every_rank_saves_and_restores_its_own_rng_states(tmp_path: Path) -> None:
    """Lightning seeds every rank alike, so the CLI runs above cannot tell; two ranks seeded apart can."""
    torch.multiprocessing.spawn(
        _rank_rng, args=(f"file://{tmp_path / 'init'}", str(tmp_path / "out")), nprocs=2, join=True
    )
    ranks = [torch.load(tmp_path / f"out.{r}", weights_only=False) for r in range(2)]
    assert all(r["n"] == 2 and r["again"] == r["draws"] for r in ranks)  # its own stream, restored exactly
    assert ranks[0]["draws"] != ranks[1]["draws"]  # rank 0's state would have given rank 1 rank 0's draws


def _train(log_dir: Path, *extra: str, env: dict[str, str] | None = None, args: list[str] = ARGS) -> Any:
    return run_cli("train.py", *args, f"paths.log_dir={log_dir}", *extra, env=env, timeout=600)


def _comparable(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not k.startswith("perf/")}  # timings and memory differ


def _log(run_dir: Path, up_to_step: int | None = None) -> dict[tuple[int, int, int], dict[str, Any]]:
    """(rank, epoch, batch) -> the data log's record; the later line wins (a resumed attempt redoes what its
    killed one did after the checkpoint); `up_to_step`: only batches whose step a checkpoint at that step holds."""
    out = {}
    for path in sorted(run_dir.glob("data_positions.rank*.jsonl")):
        rank = int(path.name.split(".rank")[1].split(".")[0])
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if up_to_step is None or record["step"] <= up_to_step:
                out[rank, record["epoch"], record["batch"]] = record
    return out


def _blocks(log: dict[tuple[int, int, int], dict[str, Any]]) -> list[int]:
    return [i for record in log.values() for i in record["blocks"]]


def _killed(log_dir: Path, *extra: str, args: list[str] = ARGS) -> tuple[Path, dict[str, Any]]:
    """A run SIGKILLed after step 6: its run dir and the lmlab state of the step-4 checkpoint it left."""
    killed = _train(log_dir, *extra, env=KILL, args=args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = single_run_dir(log_dir)
    assert not (run_dir / "metrics.json").exists()
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 4  # resumed from a step checkpoint, mid-epoch: step > 0
    return run_dir, checkpoint["lmlab_resume"]


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted one-rank run."""
    log_dir = tmp_path_factory.mktemp("one_rank")
    result = _train(log_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return single_run_dir(log_dir)


def test_every_block_once_per_epoch_and_one_rank_order_is_todays(one_rank: Path) -> None:
    from lmlab.data.packed import global_order

    log = _log(one_rank)
    blocks = _blocks(log)
    n = max(record["positions"][1] for record in log.values())
    assert n == len(blocks) > 400 and sorted(blocks) == list(range(n))  # each block once, none left out
    # One rank: ResumableRandomSampler's permutation (seed 42, epoch 0), its last shorter batch kept.
    assert blocks == global_order(n, 42, 0).tolist()
    assert len(log) == -(-n // 4)  # ceil: a last, shorter batch would be kept (none here: 456 = 114 x 4)


def test_sigkill_after_a_step_checkpoint_resumes_bitwise_at_one_rank(one_rank: Path, tmp_path: Path) -> None:
    run_dir, state = _killed(tmp_path)
    assert state["positions"] == 16 and state["world_size"] == 1 and len(state["rng_ranks"]) == 1
    resumed = _train(tmp_path, f"ckpt_path={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert single_run_dir(tmp_path) == run_dir  # the same job, continued in its dir
    assert _comparable(read_metrics(run_dir)) == _comparable(read_metrics(one_rank))
    assert _log(run_dir) == _log(one_rank)  # the same batches, in the same order


def test_sigkill_resume_is_bitwise_on_hash_split_shards(tmp_path: Path) -> None:
    """dataset=files on an unlabelled corpus: memory-mapped token shards (split_rule=auto -> hash), same order."""
    import random

    rng = random.Random(0)
    words = "the a of market team film government minister player music game election company shares".split()
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"id": i, "text": " ".join(rng.choice(words) for _ in range(rng.randint(10, 40)))} for i in range(200)]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = [a for a in ARGS if not a.startswith("dataset.max_samples")]
    files += ["dataset=files", f"dataset.source.path={corpus}", "trainer.max_steps=12"]

    def train(log_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Any:
        return run_cli("train.py", *files, f"paths.log_dir={log_dir}", *extra, env=env, timeout=600)

    assert train(tmp_path / "reference").returncode == 0
    reference = single_run_dir(tmp_path / "reference")
    assert "split by hash" in (reference / "train.log").read_text()  # the shard path, not the in-memory split
    killed = train(tmp_path / "run", env=KILL)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = single_run_dir(tmp_path / "run")
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 4 and checkpoint["lmlab_resume"]["positions"] == 16
    resumed = train(tmp_path / "run", f"ckpt_path={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _comparable(read_metrics(run_dir)) == _comparable(read_metrics(reference))
    log = _log(reference)
    assert _log(run_dir) == log and len(log) == 12
    assert len(set(_blocks(log))) == 48


def test_one_rank_run_resumed_on_two_ranks_continues_the_same_global_order(one_rank: Path, tmp_path: Path) -> None:
    run_dir, state = _killed(tmp_path / "one")
    # Two ranks of 2: the same 4 global positions per step, so the same number of steps per epoch.
    resumed = _train(tmp_path / "two", *DDP, "dataset.batch_size=2", f"ckpt_path={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming epoch 0 at global position 16 of" in resumed.stdout + resumed.stderr
    before, after = _log(run_dir, up_to_step=4), _log(single_run_dir(tmp_path / "two"))
    assert {rank for rank, _, _ in after} == {0, 1}
    consumed = _blocks(before) + _blocks(after)
    reference = _log(one_rank)
    n = len(_blocks(reference))
    usable = 16 + (n - 16) // 4 * 4  # two ranks of 2 take whole steps of 4 (here all n = 456 blocks)
    assert len(consumed) == len(set(consumed)) == usable  # no block twice
    assert set(consumed) == set(_blocks(reference)[:usable])  # the uninterrupted run's blocks, none skipped
    positions = sorted(p for r in [*before.values(), *after.values()] for p in range(*r["positions"]))
    assert positions == list(range(usable))


def test_sigkill_after_a_step_checkpoint_resumes_bitwise_at_two_ranks(tmp_path: Path) -> None:
    reference_dir = tmp_path / "reference"
    result = _train(reference_dir, *DDP)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = single_run_dir(reference_dir)
    log = _log(reference)
    blocks = _blocks(log)
    assert len(blocks) == len(set(blocks)) and {rank for rank, _, _ in log} == {0, 1}  # disjoint slices
    n = len(_blocks(_log(reference)))
    assert n % 8 == 0 and all(len(record["blocks"]) == 4 for record in log.values())  # whole steps of 2 x 4

    run_dir, state = _killed(tmp_path / "killed", *DDP)
    assert state["positions"] == 32 and state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    resumed = _train(tmp_path / "killed", *DDP, f"ckpt_path={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _comparable(read_metrics(run_dir)) == _comparable(read_metrics(reference))
    assert _log(run_dir) == log  # each rank: the same batches, in the same order


def test_time_interval_checkpoints_are_reachable_from_the_config(tmp_path: Path) -> None:
    bad = _train(tmp_path / "bad", "callbacks.last_checkpoint.train_time_interval=30min")
    assert bad.returncode == 1
    assert "callbacks.last_checkpoint.train_time_interval='30min' is not a time interval" in bad.stdout + bad.stderr
    # 0.0001 minutes (6 ms): a last.ckpt after (nearly) every step, so a kill at step 6 leaves a mid-epoch one.
    killed = _train(tmp_path / "run", "callbacks.last_checkpoint.train_time_interval=0.0001", env=KILL)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoint = torch.load(
        single_run_dir(tmp_path / "run") / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert 1 <= checkpoint["global_step"] <= 6


def test_fewer_blocks_than_one_step_of_all_ranks_is_refused(tmp_path: Path) -> None:
    result = _train(tmp_path, *DDP, "dataset.max_samples.train=1", "dataset.batch_size=400")
    assert result.returncode == 1
    assert "fewer than one step of 2 ranks x dataset.batch_size=400" in result.stdout + result.stderr


def test_masked_lm_reads_the_same_global_order_and_resumes_bitwise(tmp_path: Path) -> None:
    """task=masked_lm trains through the same global block order (its masks are drawn by the collator from the
    restored RNG), so a SIGKILLed run resumes to the uninterrupted one's batches and metrics bit for bit."""
    from lmlab.data.packed import global_order

    # The same run with a tiny random-init BERT (attention dropout on) in place of the Llama.
    replace = {"task=causal_lm": "task=masked_lm", "model=llama_tiny": "model=tiny_bert"}
    mlm = [replace.get(a, a) for a in ARGS if "attention_dropout" not in a and "task.samples" not in a]
    mlm.append("+model.from_scratch.attention_probs_dropout_prob=0.1")
    whole = _train(tmp_path / "whole", args=mlm)
    assert whole.returncode == 0, whole.stderr[-3000:]
    reference = single_run_dir(tmp_path / "whole")
    log = _log(reference)
    n = max(record["positions"][1] for record in log.values())
    assert _blocks(log) == global_order(n, 42, 0).tolist() and n > 100
    run_dir, state = _killed(tmp_path / "killed", args=mlm)
    assert state["positions"] == 16 and state["world_size"] == 1
    resumed = _train(tmp_path / "killed", f"ckpt_path={run_dir}", args=mlm)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_metrics(run_dir)["meta/task"] == "masked_lm"
    assert _comparable(read_metrics(run_dir)) == _comparable(read_metrics(reference))
    assert _log(run_dir) == _log(reference)
