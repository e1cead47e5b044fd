"""Every config composes, documents itself, and instantiates (or is skipped for a stated reason)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lmlab.config import config_dir
from lmlab.optim import build_optimizer
from lmlab.train import build
from tests.conftest import TINY, compose_train

CONF = Path(config_dir())
GROUPS = [
    "dataset",
    "model",
    "optimizer",
    "scheduler",
    "trainer",
    "logger",
    "callbacks",
    "debug",
    "experiment",
    "hparams_search",
    "peft",
]
HUB_MODELS = {"bert", "distilbert", "roberta", "gpt2"}
GPU_TRAINERS = {"gpu", "ddp", "fsdp"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml")) if (CONF / group).is_dir() else []


ALL = [(group, option) for group in GROUPS for option in options(group)]


def test_every_group_has_options() -> None:
    for group in [
        "dataset",
        "model",
        "optimizer",
        "scheduler",
        "trainer",
        "logger",
        "callbacks",
        "debug",
        "experiment",
    ]:
        assert options(group), f"conf/{group} is empty"
    assert {"bbc_news", "files", "hf"} <= set(options("dataset"))
    assert {"minilm", "bert", "distilbert", "roberta", "gpt2", "tiny_bert"} <= set(options("model"))
    assert {"adamw", "adam", "sgd", "adafactor"} <= set(options("optimizer"))
    assert {"none", "linear", "cosine", "constant_warmup", "plateau"} <= set(options("scheduler"))
    assert {"default", "cpu", "gpu", "ddp", "ddp_cpu"} <= set(options("trainer"))
    assert {"csv", "tensorboard", "wandb", "many"} <= set(options("logger"))
    assert {"fdr", "overfit", "limit", "profiler"} <= set(options("debug"))
    assert {"seed_example", "bbc_minilm"} <= set(options("experiment"))


@pytest.mark.parametrize("path", sorted(CONF.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONF)))
def test_config_header_says_what_and_how(path: Path) -> None:
    lines = [line for line in path.read_text().splitlines() if not line.startswith("# @package")]
    assert lines[0].startswith("# ") and len(lines[0]) > 10, f"{path}: first line must say what it is"
    header = "\n".join(line for line in lines if line.startswith("#"))
    if path.parent.name not in ("hydra", "paths", "launcher"):
        assert "python train.py" in header or "python eval.py" in header, f"{path}: no example command"


@pytest.mark.parametrize(("group", "option"), ALL, ids=[f"{g}={o}" for g, o in ALL])
def test_config_composes(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_train([f"{group}={option}"], tmp_path)
    assert OmegaConf.to_yaml(cfg)
    if group not in ("experiment", "debug", "hparams_search"):
        assert cfg[group] is not None


@pytest.mark.parametrize(
    ("group", "option"),
    [(g, o) for g, o in ALL if g != "hparams_search"],
    ids=[f"{g}={o}" for g, o in ALL if g != "hparams_search"],
)
def test_config_instantiates(group: str, option: str, tmp_path: Path, tiny_checkpoints: dict) -> None:
    overrides = [*TINY, f"{group}={option}"]
    if group == "model" and option in HUB_MODELS:
        overrides.append(f"model.name_or_path={tiny_checkpoints[option]}")
    if group == "experiment" and option == "seed_example":
        overrides.append(f"model.name_or_path={tiny_checkpoints['bert']}")
    if group == "model" and option == "smollm2":
        pytest.skip("model=smollm2 loads 135M weights (~1 min): test_language_modeling.py::test_smollm2_zero_shot")
    if group == "trainer" and option in GPU_TRAINERS and not torch.cuda.is_available():
        pytest.skip(f"trainer={option} needs a GPU (none here)")
    if group == "dataset" and option in ("files", "hf"):
        pytest.skip(f"dataset={option} needs data files; covered by test_train.py::test_fast_dev_run_sources")
    if group == "dataset" and option == "mixture":
        pytest.skip("dataset=mixture needs a corpus file and task=causal_lm; covered by test_mixture.py")
    if group == "experiment" and option in ("compare_optimizers", "wsd_branches"):  # causal LM: not TINY's tiny_bert
        overrides = [o for o in overrides if not o.startswith("model=")] + ["model=llama_tiny"]
    if group == "experiment":  # experiments pick their models; keep them tiny here
        overrides += [
            "model.from_scratch={hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64}"
        ]
    cfg = compose_train(overrides, tmp_path)
    objects = build(cfg)
    assert cfg.task.name != "classification" or objects["datamodule"].labels  # LM tasks ignore labels
    assert objects["trainer"].max_epochs is not None
    if group == "optimizer":
        model = objects["model"]
        optimizer = build_optimizer(model.backbone, model.head, cfg.optimizer)
        assert type(optimizer).__name__ == cfg.optimizer._target_.split(".")[-1]
        assert optimizer.defaults["lr"] == pytest.approx(cfg.optimizer.lr)
