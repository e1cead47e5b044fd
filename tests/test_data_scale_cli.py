"""Issue 22 end to end: `task=causal_lm dataset=files` on an unlabelled corpus streams it into token shards
(dataset.split_rule=auto -> hash); labelled sources keep the stratified split; bad corpora fail cleanly from the CLI."""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import random
from pathlib import Path

import pytest

from lmlab.data.sources import bbc_news, files
from lmlab.data.streaming import resolve_split_rule
from lmlab.errors import LmlabError
from tests.conftest import run_cli

WORDS = "the a of market team film government minister player music game election company shares".split()
LM = [
    "task=causal_lm",
    "model=llama_tiny",
    "dataset=files",
    "dataset.max_length=32",
    "dataset.batch_size=8",
    "dataset.eval_batch_size=16",
    "dataset.fractions={train: 0.6, val: 0.2, test: 0.2}",
    "trainer.max_epochs=1",
    "trainer.max_steps=3",
    "trainer.num_sanity_val_steps=0",
    "export_model=false",
    "task.samples.max_new_tokens=4",
]


def _jsonl(path: Path, n: int = 120) -> Path:
    rng = random.Random(0)
    rows = [{"id": i, "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40)))} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_split_rule_auto_is_hash_only_for_one_unlabelled_files_path(tmp_path: Path) -> None:
    corpus = _jsonl(tmp_path / "c.jsonl")
    labelled = tmp_path / "l.csv"
    labelled.write_text("text,label\na,x\nb,y\n")
    (tmp_path / "t.txt").write_text("one\ntwo\n")
    source = functools.partial(files, path=str(corpus), label_column="label")
    assert resolve_split_rule("auto", source) == "hash"  # no label column: language modeling
    assert resolve_split_rule("auto", functools.partial(files, path=str(labelled))) == "stratified"
    assert resolve_split_rule("auto", functools.partial(files, path=str(tmp_path / "t.txt"))) == "hash"
    assert resolve_split_rule("auto", functools.partial(files, path=str(labelled), label_column=None)) == "hash"
    assert resolve_split_rule("auto", bbc_news) == "stratified"  # BBC: today's split, bit for bit
    assert resolve_split_rule("stratified", source) == "stratified"
    split_files = functools.partial(files, train="a", val="b", test="c")
    assert resolve_split_rule("auto", split_files) == "stratified"
    with pytest.raises(LmlabError, match="split_rule=hash needs dataset=files with one dataset.source.path"):
        resolve_split_rule("hash", bbc_news)
    with pytest.raises(LmlabError, match="not one of"):
        resolve_split_rule("random", source)


def test_causal_lm_trains_on_an_unlabelled_jsonl_corpus_from_token_shards(train_tiny, tmp_path: Path) -> None:
    from lmlab.data.hashsplit import split_of

    corpus = _jsonl(tmp_path / "corpus.jsonl")  # {"id", "text"}: no label column, which used to be refused
    metrics, run_dir = train_tiny(f"dataset.source.path={corpus}", "dataset.num_proc=2", base=LM)
    assert math.isfinite(metrics["test/bpb"]) and metrics["test/tokens"] > 0
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    fr = {"val": 0.2, "test": 0.2}
    want = {s: sum(split_of(t, 0, fr) == s for t in dict.fromkeys(texts)) for s in ("train", "val", "test")}
    found = [
        json.loads(p.read_text())
        for p in Path(os.environ["LMLAB_CACHE_DIR"]).glob("tokenized/shards/shards-*/manifest.json")
        if json.loads(p.read_text())["fingerprint"]["files"][0][0] == str(corpus.resolve())
    ]
    assert len(found) == 1 and found[0]["docs"] == want
    data = json.loads((run_dir / "manifest.json").read_text())["data"]
    # dataset.dedupe=near (the default) ran the streamed near-copy search: random word soup has no near-copies
    assert data["sizes"] == want
    assert data["duplicates"] == {"in_pool": 0, "near_train&val": 0, "near_train&test": 0, "near_val&test": 0}


def test_masked_lm_reads_the_same_token_shards(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from tests.conftest import compose_train

    corpus = _jsonl(tmp_path / "corpus.jsonl")
    overrides = ["task=masked_lm", "model=tiny_bert", *LM[2:7], f"dataset.source.path={corpus}"]
    cfg = compose_train(overrides, tmp_path / "run")
    datamodule, task = instantiate(cfg.dataset), instantiate(cfg.task)
    task.connect(datamodule, cfg.model)
    datamodule.setup("fit")
    assert datamodule.hashed is not None and len(datamodule.datasets["train"]) > 0
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["input_ids"].shape == (8, 32) and (batch["labels"] != -100).any()


def _gz_truncated(data: Path) -> str:
    blob = gzip.compress(("some text for a corpus\n" * 5000).encode())
    (data / "c.txt.gz").write_bytes(blob[: len(blob) // 2])
    return "c.txt.gz"


def _no_text(data: Path) -> str:
    (data / "c.jsonl").write_text('{"body": "a"}\n')
    return "c.jsonl"


@pytest.mark.parametrize(
    "write, message",
    [
        (_gz_truncated, "c.txt.gz: corrupt or truncated gzip file at uncompressed byte offset"),
        (
            _no_text,
            "c.jsonl, line 1 (byte offset 0): no 'text' field (fields: ['body']). Set dataset.source.text_column",
        ),
    ],
)
def test_bad_corpus_through_the_cli(write, message: str, tmp_path: Path) -> None:
    name = write(tmp_path)
    result = run_cli("train.py", *LM, f"dataset.source.path={tmp_path / name}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 1, result.stderr[-2000:]
    assert message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_val_and_test_token_budgets_through_the_cli(train_tiny, tmp_path: Path) -> None:
    corpus = _jsonl(tmp_path / "corpus.jsonl", n=200)
    full, _ = train_tiny(f"dataset.source.path={corpus}", base=LM)
    metrics, run_dir = train_tiny(
        f"dataset.source.path={corpus}", "dataset.val_tokens=300", "dataset.test_tokens=200", base=LM
    )
    data = json.loads((run_dir / "manifest.json").read_text())["data"]
    held = data["held_out"]
    assert held["val"]["docs"] > 0 and held["test"]["docs"] > 0  # the budgets cut both splits
    # Scored tokens: a split's tokens minus its first (no target); within the budget, and what was held out is gone.
    assert 0 < metrics["test/tokens"] < 200 < full["test/tokens"]
    assert metrics["test/tokens"] + held["test"]["tokens"] == full["test/tokens"]  # whole documents, nothing lost
    assert (
        data["sizes"]["test"] + held["test"]["docs"]
        == json.loads((tmp_path / "run0" / "manifest.json").read_text())["data"]["sizes"]["test"]
    )
    assert data["fingerprint"] != json.loads((tmp_path / "run0" / "manifest.json").read_text())["data"]["fingerprint"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["dataset=bbc_news", "+dataset.val_tokens=1000"], "dataset.val_tokens=1000 needs dataset.split_rule=hash"),
        (["dataset.test_tokens=0"], "dataset.test_tokens=0: a token budget is a positive integer"),
        (["dataset.val_tokens=1"], "dataset.val_tokens=1 is smaller than every val document"),
    ],
)
def test_bad_token_budgets_through_the_cli(overrides: list[str], message: str, tmp_path: Path) -> None:
    source = [] if "dataset=bbc_news" in overrides else [f"dataset.source.path={_jsonl(tmp_path / 'corpus.jsonl')}"]
    result = run_cli("train.py", *LM, *source, *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 1, result.stderr[-2000:]
    assert message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_dedupe_near_drops_val_and_test_near_copies_of_a_streamed_corpus(train_tiny, tmp_path: Path) -> None:
    from lmlab.data.hashsplit import split_of
    from lmlab.data.near_duplicates import _find

    rng = random.Random(1)
    base = [" ".join(rng.choice(WORDS) + str(rng.randint(0, 99)) for _ in range(40)) for _ in range(100)]
    copies = [text + " one more sentence at the end" for text in base[:40]]  # near-copies, other hash draws
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in base + copies))
    fr = {"val": 0.2, "test": 0.2}
    splits = {s: [t for t in base + copies if split_of(t, 0, fr) == s] for s in ("train", "val", "test")}
    near = _find(splits, 0.5)
    assert near[("train", "val")] and near[("train", "test")]  # the corpus plants some of each
    _, run_dir = train_tiny(f"dataset.source.path={corpus}", "dataset.dedupe=near", base=LM)
    data = json.loads((run_dir / "manifest.json").read_text())["data"]
    assert data["duplicates"] == {"in_pool": 0, **{f"near_{a}&{b}": len(v) for (a, b), v in near.items()}}
    dropped_test = set(near[("train", "test")]) | set(near[("val", "test")])
    assert data["sizes"] == {
        "train": len(splits["train"]),
        "val": len(splits["val"]) - len(near[("train", "val")]),
        "test": len(splits["test"]) - len(dropped_test),
    }
    _, exact_dir = train_tiny(f"dataset.source.path={corpus}", "dataset.dedupe=exact", base=LM)
    exact = json.loads((exact_dir / "manifest.json").read_text())["data"]
    assert exact["sizes"] == {s: len(v) for s, v in splits.items()} and exact["duplicates"] == {"in_pool": 0}


def test_bpe_train_bytes_is_a_result_key_only_away_from_its_default(train_tiny, tmp_path: Path) -> None:
    from lmlab.rundir.identity import ADDED_KEYS

    corpus = _jsonl(tmp_path / "corpus.jsonl")
    _, default_dir = train_tiny(f"dataset.source.path={corpus}", base=LM)
    _, small_dir = train_tiny(f"dataset.source.path={corpus}", "model.bpe_train_bytes=2000", base=LM)
    default = json.loads((default_dir / "resolved_config.json").read_text())["config"]
    small = json.loads((small_dir / "resolved_config.json").read_text())["config"]
    # At its default the key is left out of the result config (older run dirs never recorded it: the same job).
    assert ADDED_KEYS["model.bpe_train_bytes"] == 100_000_000 and "model.bpe_train_bytes" not in default
    assert small["model.bpe_train_bytes"] == 2000
    result = run_cli("train.py", *LM, f"dataset.source.path={corpus}", "model.bpe_train_bytes=0",
                     f"hydra.run.dir={tmp_path / 'bad'}")  # fmt: skip
    assert result.returncode == 1 and "model.bpe_train_bytes=0" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
