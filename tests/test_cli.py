"""What a new user sees: the documented commands, from a fresh process, and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, read_metrics, run_cli, single_run_dir


def test_cfg_job_shows_bert_and_adamw(tmp_path: Path) -> None:
    result = run_cli("train.py", "model=bert", "optimizer=adamw", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "name_or_path: bert-base-uncased" in result.stdout
    assert "_target_: torch.optim.AdamW" in result.stdout


def test_tiny_bert_fast_dev_run_from_any_directory(tmp_path: Path) -> None:
    result = run_cli("train.py", "model=tiny_bert", "debug=fdr", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = single_run_dir(tmp_path / "logs", task="debug")  # logs/ under the working directory
    assert set(read_metrics(run_dir)["test/f1_per_class"]) == {
        "business",
        "entertainment",
        "politics",
        "sports",
        "tech",
    }
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    tree = (run_dir / "config_tree.log").read_text()  # the tree printed to the terminal, as plain text
    assert tree.startswith("CONFIG") and "_target_: lmlab.tasks.ClassificationTask" in tree and "\x1b[" not in tree


def test_local_bert_trains_offline_and_eval_reproduces(tmp_path: Path, tiny_checkpoints) -> None:
    args = [
        "model=bert",
        f"model.name_or_path={tiny_checkpoints['bert']}",
        "optimizer=adamw",
        "dataset.max_length=32",
        "dataset.max_samples.train=64",
        "dataset.max_samples.val=32",
        "dataset.max_samples.test=32",
        "trainer.max_epochs=1",
        "export_model=false",
    ]
    result = run_cli("train.py", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = single_run_dir(tmp_path / "logs")
    metrics = read_metrics(run_dir)
    assert (run_dir / metrics["best/ckpt_path"]).is_file()

    result = run_cli("eval.py", f"ckpt_path={run_dir / metrics['best/ckpt_path']}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = read_metrics(single_run_dir(tmp_path / "logs", task="eval"))
    assert evaluated["test/f1_macro"] == metrics["test/f1_macro"]
    assert evaluated["test/loss"] == metrics["test/loss"]


def _data_files(tmp_path: Path) -> dict[str, Path]:
    rows = "text,label\n" + "".join(f"text number {i},{'ab'[i % 2]}\n" for i in range(40))
    (tmp_path / "ok.csv").write_text(rows)
    (tmp_path / "train.csv").write_text(rows)
    (tmp_path / "val.csv").write_text("text,label\nsome text,a\n")
    (tmp_path / "test.csv").write_text("text,label\nother text,zebra\n")
    return {
        "ok": tmp_path / "ok.csv",
        "train": tmp_path / "train.csv",
        "val": tmp_path / "val.csv",
        "test": tmp_path / "test.csv",
    }


BAD_INPUTS = {
    "unknown_option": (["model=bertt"], [r"Could not find 'model/bertt'", "Available options", "minilm"]),
    "missing_file": (["dataset=files", "dataset.source.path=missing.csv"], ["Data file not found", "missing.csv"]),
    "missing_column": (
        ["dataset=files", "dataset.source.path={ok}", "dataset.source.text_column=body"],
        ["Column 'body'", "Columns found: ['text', 'label']"],
    ),
    "unseen_label": (
        ["dataset=files", "dataset.source.train={train}", "dataset.source.val={val}", "dataset.source.test={test}"],
        ["test split has labels not in the training set: ['zebra']"],
    ),
    "empty_split": (["dataset.max_samples.val=0"], ["The val split is empty", "dataset.max_samples.val"]),
    "unknown_model": (
        ["model.name_or_path=no-such-org/no-such-model"],
        ["'no-such-org/no-such-model'", "offline", "model=minilm"],
    ),
    "wrong_type": (["optimizer.lr=abc"], ["optimizer.lr='abc' is not a number", "optimizer.lr=3e-5"]),
    "zero_batch": (["dataset.batch_size=0"], ["dataset.batch_size=0 is out of range", "> 0"]),
    "negative_batch": (["dataset.batch_size=-8"], ["dataset.batch_size=-8 is out of range"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_clearly(case: str, tmp_path: Path) -> None:
    overrides, messages = BAD_INPUTS[case]
    files = _data_files(tmp_path)
    overrides = [o.format(**files) for o in overrides]
    result = run_cli("train.py", "model=tiny_bert", *overrides, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for message in messages:
        assert message in output, f"{message!r} not in:\n{output[-3000:]}"
    assert "Traceback" not in output  # the message, not a stack trace
    runs = list((tmp_path / "logs").rglob("metrics.json"))
    assert runs == []  # nothing that looks like a finished run
    for status in (tmp_path / "logs").rglob("status.json"):
        assert json.loads(status.read_text())["status"] == "failed"


def test_wheel_ships_configs_and_runs_outside_the_repo(tmp_path: Path) -> None:
    """A non-editable install (the wheel) finds its configs without the repo checkout."""
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(tmp_path.glob("lmlab-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "lmlab/conf/train.yaml" in names and "lmlab/conf/model/minilm.yaml" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", "from lmlab.train import main; main()", "model=tiny_bert", "--cfg", "job"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "lmlab.tasks.ClassificationTask" in result.stdout
