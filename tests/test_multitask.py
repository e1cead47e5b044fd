"""task=multitask: one split per source whatever the relabelling, the sub-task sampler's epochs, per-task metrics,
eval reproduction and exact resume (tiny_bert, a few steps)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from hydra.utils import instantiate

from lmlab.data.multitask import SubtaskBatchSampler, largest_remainder
from lmlab.data.sources import SPLITS, Example, bbc_news
from lmlab.data.splits import build_splits, fingerprint
from lmlab.errors import LmlabError
from tests.conftest import TINY, compose_train, read_metrics, run_cli, single_run_dir

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
MT = ["task=multitask", *TINY]


def _ids(splits: dict[str, list[Example]]) -> dict[str, list[str]]:
    return {s: [ex.id for ex in splits[s]] for s in SPLITS}


# ---------------------------------------------------------------- one split per source, made before relabelling
def test_one_vs_rest_relabels_after_the_split() -> None:
    bbc = bbc_news()
    topic, _ = build_splits(bbc, fractions=FRACTIONS, split_seed=0)
    sport, _ = build_splits(bbc, fractions=FRACTIONS, split_seed=0, one_vs_rest="sports")
    assert _ids(sport) == _ids(topic)  # the same articles, in the same order, in every split
    assert {ex.label for ex in sport["test"]} == {"sports", "not_sports"}
    assert [ex.label == "sports" for ex in sport["test"]] == [ex.label == "sports" for ex in topic["test"]]
    # The default (no one_vs_rest) split is the one main had before this change: same fingerprint.
    assert fingerprint(topic) == "5db0fa8935d0c342"
    # Pre-split sources keep their splits too.
    rows = {s: [Example(f"{s}{i}", f"{s} text number {i} " * 3, "ab"[i % 2]) for i in range(6)] for s in SPLITS}
    relabelled, _ = build_splits(rows, fractions=FRACTIONS, split_seed=0, one_vs_rest="a")
    assert _ids(relabelled) == {s: [ex.id for ex in rows[s]] for s in SPLITS}
    assert {ex.label for ex in relabelled["train"]} == {"a", "not_a"}


def test_two_bbc_subtasks_share_one_split(tmp_path: Path) -> None:
    cfg = compose_train(MT, tmp_path)
    datamodule = instantiate(cfg.dataset)
    datamodule.load()
    topic, sport = datamodule.subtasks["topic"], datamodule.subtasks["sport"]
    assert _ids(topic.splits) == _ids(sport.splits)  # identical train/val/test article sets
    assert [len(topic.splits[s]) for s in SPLITS] == [96, 48, 48]
    assert {ex.label for ex in sport.splits["train"]} == {"sports", "not_sports"}
    assert len({ex.label for ex in topic.splits["train"]}) == 5
    assert datamodule.groups == [["topic", "sport"]]

    # Sub-tasks of one source that would split it differently are refused (one would see the other's test set).
    cfg = compose_train([*MT, "+dataset.subtasks.sport.split_seed=1"], tmp_path / "b")
    with pytest.raises(
        LmlabError,
        match=r"'topic' and 'sport' read the same source but would split it differently "
        r"\(split_seed: 0 vs 1\)",
    ):
        instantiate(cfg.dataset).load()


def test_a_files_subtask_beside_two_bbc_ones(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text(
        "text,label\n"
        + "".join(f"review {i} was {'great fun' if i % 2 else 'dull'},{'pn'[i % 2]}\n" for i in range(40))
    )
    cfg = compose_train(
        [
            *MT,
            "+dataset@dataset.subtasks.reviews=files",
            f"dataset.subtasks.reviews.source.path={path}",
            "dataset.subtasks.reviews.batch_size=8",
        ],
        tmp_path / "run",
    )
    datamodule = instantiate(cfg.dataset)
    datamodule.load()
    assert datamodule.names == ["topic", "sport", "reviews"]
    assert datamodule.groups == [["topic", "sport"], ["reviews"]]  # its own source: its own split
    reviews = datamodule.subtasks["reviews"]
    assert [len(reviews.splits[s]) for s in SPLITS] == [32, 4, 4] and reviews.batch_size == 8
    assert {ex.label for ex in reviews.splits["train"]} == {"p", "n"}
    from lmlab.config import instantiate as lmlab_instantiate  # input errors unwrapped, as train.py shows them

    with pytest.raises(LmlabError, match=r"dataset.subtasks.sport has unknown dataset keys \['one_vs_reset'\]"):
        lmlab_instantiate(compose_train([*MT, "+dataset.subtasks.sport.one_vs_reset=x"], tmp_path / "c").dataset)


# ---------------------------------------------------------------- the sampler: what an epoch is, per strategy
def _visits(sampler: SubtaskBatchSampler, epoch: int = 0) -> list[Counter]:
    sampler.set_epoch(epoch)
    seen = [Counter() for _ in sampler.sizes]
    for task, indices in sampler:
        assert len(indices) <= sampler.batch_sizes[task]
        seen[task].update(indices)
    return seen


def test_proportional_epoch_visits_every_example_of_every_subtask_once() -> None:
    sampler = SubtaskBatchSampler([100, 37, 8], [16, 16, 4], "proportional", seed=3)
    assert sampler.num_batches == [7, 3, 2] and len(sampler) == 12 == len(list(sampler))
    for epoch in (0, 1):
        seen = _visits(sampler, epoch)
        assert [sorted(c) for c in seen] == [list(range(n)) for n in (100, 37, 8)]
        assert all(set(c.values()) == {1} for c in seen)
    order = [[t for t, _ in sampler.schedule(e)] for e in (0, 1)]
    assert order[0] != order[1] and order[0] != sorted(order[0])  # mixed, and differently each epoch
    assert sampler.schedule(1) == SubtaskBatchSampler([100, 37, 8], [16, 16, 4], seed=3).schedule(1)  # (seed, epoch)
    assert sampler.schedule(1) != SubtaskBatchSampler([100, 37, 8], [16, 16, 4], seed=4).schedule(1)


def test_temperature_shares_and_round_robin_passes() -> None:
    hot = SubtaskBatchSampler([160, 16], [16, 16], "temperature", temperature=2.0)
    # 11 batches (10 + 1); shares ~ sqrt(10) : sqrt(1) -> 8.36 : 2.64 -> 8 and 3 (largest remainder)
    assert len(hot) == 11 and hot.quotas == largest_remainder(11, [10**0.5, 1.0]) == [8, 3]
    seen = _visits(hot)
    assert len(seen[0]) == 8 * 16 and set(seen[0].values()) == {1}  # 8 distinct batches of the large sub-task
    assert len(seen[1]) == 16 and set(seen[1].values()) == {3}  # the small one: 3 passes over its one batch
    assert SubtaskBatchSampler([160, 16], [16, 16], "temperature", temperature=1.0).quotas == [10, 1]

    rr = SubtaskBatchSampler([64, 20], [16, 16], "round_robin", seed=1)
    assert len(rr) == 2 * 4  # one pass of the largest sub-task: K x its 4 batches
    tasks = [t for t, _ in rr]
    assert tasks == [0, 1, 0, 1, 0, 1, 0, 1]
    seen = _visits(rr)
    assert set(seen[0].values()) == {1} and len(seen[0]) == 64  # the largest: each example once
    assert len(seen[1]) == 20 and min(seen[1].values()) >= 1  # the smaller: every example at least once

    fixed = SubtaskBatchSampler([64, 20], [16, 16], "proportional", epoch_batches=5)
    assert fixed.quotas == [3, 2]  # 5 x 4/6, 5 x 2/6 -> 3.33, 1.67 and len(list(fixed)) == 5


def test_sampler_skip_resumes_mid_epoch_and_bad_settings_are_refused() -> None:
    sampler = SubtaskBatchSampler([50, 30], [8, 8], seed=0)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.skip(2, 4)
    assert list(sampler) == full[4:]
    assert list(sampler) == full  # once
    for kwargs, message in (
        ({"strategy": "uniform"}, r"dataset.sampling='uniform' is not one of"),
        ({"strategy": "temperature", "temperature": 0}, r"dataset.temperature=0 must be"),
        ({"epoch_batches": 0}, r"dataset.epoch_batches=0 must be a positive"),
    ):
        with pytest.raises(LmlabError, match=message):
            SubtaskBatchSampler([4], [2], **kwargs)


# ---------------------------------------------------------------- training: per-task metrics, eval, resume
def _comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("perf/")}


def test_multitask_trains_with_per_task_metrics_eval_reproduces_and_resume_is_exact(train_tiny, tmp_path: Path) -> None:
    from lmlab.eval import evaluate

    two_epochs = ("trainer.max_epochs=2", "dataset.sampling=round_robin", "+task.weights.sport=0.5")
    metrics, run_dir = train_tiny(*two_epochs, base=MT)
    for stage in ("val", "test"):
        for sub in ("topic", "sport"):
            for name in ("f1_macro", "acc", "precision", "recall", "loss"):
                value = metrics[f"{stage}/{sub}/{name}"]
                assert isinstance(value, float) and value == value, (stage, sub, name)
    assert metrics["val/mean_primary"] == pytest.approx(
        (metrics["val/topic/f1_macro"] + metrics["val/sport/f1_macro"]) / 2
    )
    assert metrics["best/val_mean_primary"] == metrics["val/mean_primary"]
    assert set(k.rsplit("/", 1)[1] for k in metrics if k.startswith("test/sport/f1_per_class/")) == {
        "sports",
        "not_sports",
    }
    assert all(isinstance(v, (int, float, str, type(None))) for v in metrics.values())  # plain scalars only
    on_disk = read_metrics(run_dir)
    assert on_disk["test/topic/f1_macro"] == metrics["test/topic/f1_macro"]
    for sub, labels in (("topic", 5), ("sport", 2)):
        rows = (run_dir / f"test_predictions_{sub}.csv").read_text().splitlines()
        assert len(rows) == 1 + 48 and rows[0].count("score_") == labels
    hparams = json.loads((run_dir / "manifest.json").read_text())["data"]
    assert "sport/sports" in hparams["labels"] and "topic/tech" in hparams["labels"]

    # eval.py on the run dir reproduces every per-task test number.
    cfg = compose_train([f"ckpt_path={run_dir}"], tmp_path / "eval", config_name="eval")
    evaluated = evaluate(cfg)
    assert {k: v for k, v in evaluated.items() if k.startswith("test/")} == {
        k: v for k, v in metrics.items() if k.startswith("test/")
    } | {"test/examples": 96}

    # Interrupted mid-epoch 1 (SIGTERM after step 10 of 2 x 8), then resumed in place: the same final metrics.
    os.environ["LMLAB_FAULT_SIGNAL"] = "step:10:SIGTERM"
    try:
        with pytest.raises(SystemExit) as stopped:
            train_tiny(*two_epochs, base=MT)
    finally:
        os.environ.pop("LMLAB_FAULT_SIGNAL", None)
    assert stopped.value.code == 143
    interrupted = tmp_path / "run1"
    assert json.loads((interrupted / "status.json").read_text())["status"] == "interrupted"
    resumed, _ = train_tiny(*two_epochs, f"ckpt_path={interrupted}", base=MT)
    assert _comparable(resumed) == _comparable(metrics)


def test_init_from_loads_the_parent_into_the_shared_encoder(tmp_path: Path, tiny_checkpoints: dict) -> None:
    """model.init_from (issue 11 A) reaches the shared encoder: multitask loads it through load_backbone."""
    pytest.importorskip("lmlab.models.init_from", reason="model.init_from is not on this branch yet")
    import torch
    import transformers

    from lmlab.train import build

    parent = transformers.AutoModel.from_pretrained(tiny_checkpoints["bert"]).state_dict()
    model = build(compose_train([*MT, f"model.init_from={tiny_checkpoints['bert']}"], tmp_path))["model"]
    encoder = model.encoder.state_dict()
    assert len(parent) > 30 and set(parent) <= set(encoder)
    assert all(torch.equal(encoder[k], parent[k]) for k in parent)


def test_multitask_refuses_ddp(tmp_path: Path) -> None:
    from lmlab.train import build

    cfg = compose_train([*MT, "trainer=ddp_cpu"], tmp_path)
    with pytest.raises(LmlabError, match=r"task=multitask trains on one device for now .*trainer.devices=1"):
        build(cfg)


def test_acceptance_train_py_two_bbc_subtasks_writes_per_task_test_metrics(tmp_path: Path) -> None:
    result = run_cli("train.py", *MT, f"paths.log_dir={tmp_path}", "trainer.max_steps=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(single_run_dir(tmp_path))
    assert metrics["meta/task"] == "multitask" and metrics["meta/subtasks"] == "topic,sport"
    assert {k for k in metrics if k.startswith("test/") and k.endswith("/f1_macro")} == {
        "test/topic/f1_macro",
        "test/sport/f1_macro",
    }
    assert 0.0 <= metrics["test/mean_primary"] <= 1.0
