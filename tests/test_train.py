"""Training end to end with the real Lightning Trainer on a tiny model: files written, metrics, eval, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from lmlab.data.sources import bbc_news
from tests.conftest import compose_train, read_metrics

METRIC_KEYS = [
    f"{stage}/{name}"
    for stage in ("val", "test")
    for name in ("loss", "acc", "precision", "recall", "f1_macro", "f1_micro", "f1_weighted")
]


def test_run_writes_metrics_predictions_checkpoints_and_export(train_tiny) -> None:
    metrics, run_dir = train_tiny("trainer.max_epochs=2", "export_model=true")
    on_disk = read_metrics(run_dir)
    assert on_disk == json.loads(json.dumps(metrics))
    for key in METRIC_KEYS:
        assert isinstance(on_disk[key], float), key
        if not key.endswith("loss"):
            assert 0.0 <= on_disk[key] <= 1.0
    labels = ["business", "entertainment", "politics", "sports", "tech"]
    assert list(on_disk["test/f1_per_class"]) == labels
    matrix = on_disk["test/confusion_matrix"]
    assert matrix["labels"] == labels and sum(map(sum, matrix["matrix"])) == 48
    assert on_disk["best/epoch"] in (0, 1)
    assert (run_dir / on_disk["best/ckpt_path"]).is_file()
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()  # checkpoint_policy=compact: the run is complete
    assert on_disk["effective_batch_size"] == 16
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"

    rows = list(csv.DictReader((run_dir / "test_predictions.csv").open()))
    assert len(rows) == 48 and set(rows[0]) == {"id", "label", "pred", *[f"score_{x}" for x in labels]}
    accuracy = sum(r["label"] == r["pred"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(on_disk["test/acc"])
    assert all(r["id"].split("/")[0] == r["label"] for r in rows)  # ids map back to the BBC files

    # The export loads in plain transformers and predicts what the run predicted.
    import transformers

    exported = transformers.AutoModelForSequenceClassification.from_pretrained(run_dir / "model").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(run_dir / "model")
    assert exported.config.id2label == dict(enumerate(labels))
    texts = {ex.id: ex.text for ex in bbc_news()}
    batch = tokenizer(
        [texts[r["id"]] for r in rows[:8]], truncation=True, max_length=32, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        preds = exported(**batch).logits.argmax(-1).tolist()
    assert [labels[p] for p in preds] == [r["pred"] for r in rows[:8]]


def test_val_loss_falls(train_tiny) -> None:
    # Mean pooling over a from-scratch tiny BERT learns BBC topics within a few epochs.
    _, run_dir = train_tiny(
        "trainer.max_epochs=4",
        "optimizer.lr=5e-3",
        "dataset.max_samples.train=320",
        "dataset.max_length=64",
        "model.pooling=mean",
        "callbacks.early_stopping=null",
    )
    log = pd.read_csv(run_dir / "csv" / "metrics.csv")
    val = log.dropna(subset=["val/loss"])["val/loss"].tolist()[:4]  # per epoch (the 5th row is the final eval)
    assert len(val) == 4
    assert min(val[1:]) < val[0] - 0.1, val


def test_max_steps_mid_epoch_with_default_callbacks(train_tiny) -> None:
    """`trainer.max_steps` ending training inside the first epoch: early stopping (checked after validations, not
    at the train epoch's end) must not raise; the budget's end is validated (callbacks.eval_schedule), so the run
    keeps a best checkpoint of step 3 and evaluates it."""
    metrics, run_dir = train_tiny("++trainer.max_steps=3", "trainer.max_epochs=5")  # 6 batches per epoch
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert metrics["best/epoch"] == 0 and metrics["best/step"] == 3
    assert "epoch000-step000003" in metrics["best/ckpt_path"]
    assert 0.0 <= metrics["test/f1_macro"] <= 1.0
    assert metrics["perf/train_samples_per_sec"] is None  # 3 steps = the warm-up: no timed window, no number


def test_same_seed_same_metrics(train_tiny) -> None:
    first, _ = train_tiny("seed=3")
    second, _ = train_tiny("seed=3")
    third, _ = train_tiny("seed=4")
    assert first["test/loss"] == second["test/loss"]
    assert first["test/f1_per_class"] == second["test/f1_per_class"]
    assert first["test/loss"] != third["test/loss"]


def test_eval_reproduces_test_metrics(train_tiny, tmp_path: Path) -> None:
    from lmlab.eval import evaluate

    metrics, run_dir = train_tiny("trainer.max_epochs=2")
    cfg = compose_train([f"ckpt_path={run_dir}"], tmp_path / "eval", config_name="eval")
    result = evaluate(cfg)
    for key in [k for k in METRIC_KEYS if k.startswith("test/")] + ["test/f1_per_class", "test/confusion_matrix"]:
        assert result[key] == metrics[key], key
    assert Path(result["ckpt_path"]) == (run_dir / metrics["best/ckpt_path"]).resolve()
    assert (tmp_path / "eval" / "test_predictions.csv").read_text() == (run_dir / "test_predictions.csv").read_text()

    val = evaluate(compose_train([f"ckpt_path={run_dir}", "split=val"], tmp_path / "eval_val", config_name="eval"))
    assert val["val/f1_macro"] == metrics["val/f1_macro"]


def test_resume_from_last_checkpoint_continues_at_the_right_epoch(train_tiny) -> None:
    # checkpoint_policy=keep: a completed run keeps last.ckpt and its optimizer state (compact removes it)
    _, first = train_tiny("trainer.max_epochs=1", "callbacks.early_stopping=null", "checkpoint_policy=keep")
    state = torch.load(first / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 0
    _, resumed = train_tiny(
        "trainer.max_epochs=3", f"ckpt_path={first}", "callbacks.early_stopping=null", "checkpoint_policy=keep"
    )
    log = pd.read_csv(resumed / "csv" / "metrics.csv")
    trained_epochs = log.dropna(subset=["train/loss_epoch"])["epoch"].astype(int).tolist()
    assert trained_epochs == [1, 2]  # epoch 0 is not trained again
    final = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["epoch"] == 2
    assert final["global_step"] == 3 * state["global_step"]


def _write_split_files(tmp_path: Path, kind: str, multi: bool = False) -> list[str]:
    examples = bbc_news()[::20]  # ~110 articles, all classes
    rows = [
        {
            "id": ex.id,
            "text": ex.text[:300],
            "label": ([ex.label, "long"] if len(ex.text) > 2000 else [ex.label]) if multi else ex.label,
        }
        for ex in examples
    ]
    frame = pd.DataFrame(rows)
    if kind == "csv":
        frame.assign(label=frame.label.map("|".join) if multi else frame.label).to_csv(tmp_path / "d.csv", index=False)
        return [f"dataset.source.path={tmp_path / 'd.csv'}", "dataset.source.id_column=id"] + (
            ["dataset.source.label_separator=|"] if multi else []
        )
    if kind == "tsv":
        frame.to_csv(tmp_path / "d.tsv", sep="\t", index=False)
        return [f"dataset.source.path={tmp_path / 'd.tsv'}"]
    if kind == "json":
        frame.to_json(tmp_path / "d.json", orient="records")
        return [f"dataset.source.path={tmp_path / 'd.json'}"]
    if kind == "parquet":
        frame.to_parquet(tmp_path / "d.parquet")
        return [f"dataset.source.path={tmp_path / 'd.parquet'}"]
    # jsonl: separate split files (shuffled: the BBC files come grouped by class)
    frame = frame.sample(frac=1.0, random_state=0)
    out = []
    for split, part in zip(("train", "val", "test"), (frame.iloc[:70], frame.iloc[70:90], frame.iloc[90:])):
        part.to_json(tmp_path / f"{split}.jsonl", orient="records", lines=True)
        out.append(f"dataset.source.{split}={tmp_path / f'{split}.jsonl'}")
    return out


@pytest.mark.parametrize("kind", ["csv", "tsv", "json", "jsonl", "parquet", "hf"])
def test_fast_dev_run_sources(kind: str, train_tiny, tmp_path: Path) -> None:
    if kind == "hf":
        import datasets

        examples = bbc_news()[::20]
        datasets.Dataset.from_dict(
            {"text": [ex.text for ex in examples], "label": [ex.label for ex in examples]}
        ).save_to_disk(str(tmp_path / "hfdata"))
        overrides = ["dataset=hf", f"dataset.source.load_from_disk={tmp_path / 'hfdata'}"]
    else:
        overrides = ["dataset=files", *_write_split_files(tmp_path, kind)]
    metrics, run_dir = train_tiny(*overrides, "debug=fdr")
    assert set(metrics["test/f1_per_class"]) == {"business", "entertainment", "politics", "sports", "tech"}
    assert (run_dir / "metrics.json").is_file()


@pytest.mark.parametrize("problem", ["single_label", "binary", "multi_label"])
def test_fast_dev_run_problem_types(problem: str, train_tiny, tmp_path: Path) -> None:
    overrides = [f"model.problem_type={problem}", "debug=fdr"]
    if problem == "binary":
        overrides += ["dataset.one_vs_rest=sports", "model.class_weights=auto"]
    if problem == "multi_label":
        overrides += ["dataset=files", *_write_split_files(tmp_path, "csv", multi=True), "model.class_weights=auto"]
    metrics, run_dir = train_tiny(*overrides)
    expected = {
        "binary": ["not_sports", "sports"],
        "multi_label": ["business", "entertainment", "long", "politics", "sports", "tech"],
    }.get(problem, ["business", "entertainment", "politics", "sports", "tech"])
    assert list(metrics["test/f1_per_class"]) == expected
    rows = list(csv.DictReader((run_dir / "test_predictions.csv").open()))
    assert rows and all(f"score_{label}" in rows[0] for label in expected)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooled_heads_train_and_export(pooling: str, train_tiny) -> None:
    metrics, run_dir = train_tiny(
        f"model.pooling={pooling}",
        "model.freeze_layers=1",
        "model.freeze_embeddings=true",
        "optimizer.layerwise_lr_decay=0.8",
        "export_model=true",
        "debug=fdr",
    )
    assert (run_dir / "model" / "head.pt").is_file() and (run_dir / "model" / "config.json").is_file()
    assert 0.0 <= metrics["test/f1_macro"] <= 1.0


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta", "gpt2"])
def test_hub_model_configs_train_from_local_dirs(arch: str, train_tiny, tiny_checkpoints) -> None:
    metrics, _ = train_tiny(f"model={arch}", f"model.name_or_path={tiny_checkpoints[arch]}", "debug=fdr")
    assert "test/f1_macro" in metrics
