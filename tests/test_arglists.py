"""The Trainer/optimizer argument names, read from conf/trainer/default.yaml and conf/optimizer/*.yaml, are the
installed signatures (every argument listed, with the library's default unless lmlab chooses one), and a typo is
refused before torch is imported."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from lmlab.config import arglists, config_dir
from lmlab.errors import LmlabError
from tests.conftest import ROOT, TINY, compose_train

CONF = Path(config_dir())
# Trainer defaults lmlab deliberately sets differently from Lightning's (each is commented in the YAML).
LMLAB_TRAINER_CHOICES = {
    "devices",
    "precision",
    "max_epochs",
    "min_epochs",
    "gradient_clip_val",
    "val_check_interval",
    "num_sanity_val_steps",
    "log_every_n_steps",
    "enable_model_summary",
    "deterministic",
    "benchmark",
    "default_root_dir",
}
LMLAB_OPTIMIZER_CHOICES = {"lr", "weight_decay", "momentum", "scale_parameter", "relative_step"}


def signature_args(cls: type, skip: tuple[str, ...]) -> dict[str, object]:
    params = inspect.signature(cls).parameters  # __init__'s, or __new__'s for a factory class (optim.soap.SOAP)
    return {
        n: p.default
        for n, p in params.items()
        if n not in ("self", *skip) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def same(yaml_value: object, default: object) -> bool:
    return (list(default) if isinstance(default, tuple) else default) == yaml_value


def test_trainer_names_are_the_real_signature_and_the_yaml_lists_every_argument() -> None:
    import pytorch_lightning as pl

    real = signature_args(pl.Trainer, ())
    assert sorted(arglists.trainer_args()) == sorted(real)  # read from conf/trainer/default.yaml (+ set elsewhere)
    yaml = OmegaConf.to_container(OmegaConf.load(CONF / "trainer" / "default.yaml"))
    assert yaml.pop("_target_") == "pytorch_lightning.Trainer"
    assert set(yaml) == set(real) - set(arglists.TRAINER_SET_ELSEWHERE)
    differ = {k for k, v in yaml.items() if k not in LMLAB_TRAINER_CHOICES and not same(v, real[k])}
    assert not differ, {k: (yaml[k], real[k]) for k in differ}


def test_every_optimizer_yaml_is_read_and_the_group_keys_are_one_tuple() -> None:
    from lmlab.optim import GROUP_KEYS

    assert GROUP_KEYS is arglists.OPTIMIZER_GROUP_KEYS
    shipped = {p.stem for p in (CONF / "optimizer").glob("*.yaml")}
    assert set(arglists.optimizer_configs()) == shipped
    assert {"adamw", "adam", "sgd", "adafactor"} <= shipped


@pytest.mark.parametrize("name", sorted(arglists.optimizer_configs()))
def test_optimizer_names_are_the_real_signatures_and_the_yamls_list_every_argument(name: str) -> None:
    """Every key of conf/optimizer/<name>.yaml is an argument of its `_target_` or one of lmlab's group keys
    (`arglists.OPTIMIZER_GROUP_KEYS`, documented in every YAML), and every argument is listed: a plain override of
    any of them works, and a name not in the file is a typo."""
    target, args = arglists.optimizer_configs()[name]
    try:
        cls = get_class(target)
    except ImportError as err:  # an optional package's optimizer: what is installed is checked
        pytest.skip(f"{target}: {err}")
    real = signature_args(cls, ("params",))
    yaml = OmegaConf.to_container(OmegaConf.load(CONF / "optimizer" / f"{name}.yaml"))
    assert yaml.pop("_target_") == target
    assert set(yaml) - set(real) <= set(arglists.OPTIMIZER_GROUP_KEYS), "keys that are not arguments"
    assert set(real) - set(yaml) == set(), "arguments the YAML does not list (they would be refused)"
    assert set(yaml) == set(real) | {"layerwise_lr_decay", "head_lr"}
    assert set(args) == set(real) and arglists.optimizer_args(target) is not None
    differ = {k for k in real if k not in LMLAB_OPTIMIZER_CHOICES and not same(yaml[k], real[k])}
    assert not differ, {k: (yaml[k], real[k]) for k in differ}


def test_a_new_optimizer_is_one_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Its arguments are checked, with hints, as soon as the file is there: no list to extend in the code."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF / "optimizer", conf / "optimizer")
    shutil.copy(CONF / "train.yaml", conf / "train.yaml")
    (conf / "optimizer" / "lion.yaml").write_text(
        "_target_: my_lib.Lion\nlr: 1e-4\nbetas: [0.9, 0.99]\nweight_decay: 0.0\n"
        "layerwise_lr_decay: null\nhead_lr: null\n"
    )
    monkeypatch.setattr(arglists, "config_dir", lambda: str(conf))
    arglists.optimizer_configs.cache_clear()  # read again from conf/ once the test is over
    request.addfinalizer(arglists.optimizer_configs.cache_clear)
    assert arglists.optimizer_args("my_lib.Lion") == ("lr", "betas", "weight_decay")
    assert arglists.check_overrides(["optimizer=lion", "optimizer.betas=[0.9,0.98]", "optimizer.head_lr=1e-3"])
    with pytest.raises(LmlabError, match=re.escape("optimizer.learning_rate is not an argument of my_lib.Lion (did")):
        arglists.check_overrides(["optimizer=lion", "optimizer.learning_rate=1e-3"])
    with pytest.raises(LmlabError, match=re.escape("Its arguments: lr, betas, weight_decay; lmlab adds")):
        arglists.check_overrides(["optimizer=lion", "optimizer.momentum=0.9"])


def test_every_trainer_argument_is_set_without_plus(tmp_path: Path) -> None:
    cfg = compose_train(
        [
            *TINY,
            "trainer.limit_train_batches=5",
            "trainer.max_time=00:00:10:00",
            "trainer.detect_anomaly=true",
            "optimizer.amsgrad=true",
        ],
        tmp_path / "run",
    )
    assert cfg.trainer.limit_train_batches == 5 and cfg.trainer.max_time == "00:00:10:00"
    assert cfg.trainer.detect_anomaly is True and cfg.optimizer.amsgrad is True
    # `+trainer.<arg>=` of older commands still works: the command line is rewritten to the plain form.
    assert arglists.check_overrides(["+trainer.limit_val_batches=2", "++trainer.max_steps=3"]) == [
        "trainer.limit_val_batches=2",
        "++trainer.max_steps=3",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trainer.max_epoch=1"], "did you mean max_epochs?"),
        (["trainer.gpus=1"], "did you mean devices"),
        (
            ["optimizer.learning_rate=1e-3"],
            "optimizer.learning_rate is not an argument of torch.optim.AdamW (did you mean lr?)",
        ),
        (
            ["optimizer=adafactor", "optimizer.betas=[0.9,0.99]"],
            "not an argument of transformers.optimization.Adafactor",
        ),
        (["experiment=seed_example", "optimizer.lrr=1"], "not an argument of any shipped optimizer (did you mean lr?)"),
    ],
)
def test_a_misspelt_argument_is_refused_with_a_suggestion(args: list[str], message: str) -> None:
    with pytest.raises(LmlabError, match=re.escape(message)):
        arglists.check_overrides(args)


def test_a_users_own_optimizer_is_not_checked() -> None:
    args = ["optimizer._target_=my.Lion", "+optimizer.use_triton=true"]
    assert arglists.check_overrides(args) == ["optimizer._target_=my.Lion", "optimizer.use_triton=true"]


def test_an_experiment_file_with_a_typo_is_refused_after_composition(tmp_path: Path) -> None:
    from lmlab.config import validate

    cfg = compose_train([*TINY, "++trainer.max_epoch=1"], tmp_path / "run")
    with pytest.raises(LmlabError, match="did you mean max_epochs"):
        validate(cfg)


def test_the_typo_is_refused_before_torch_is_imported(tmp_path: Path) -> None:
    """What makes it fail in about a second: the check runs before Hydra composes and before any heavy import."""
    code = (
        "import sys, json\nfrom lmlab.cli import preparse\ntry:\n"
        "    preparse(['train.py', 'trainer.max_epoch=1'])\n"
        "except SystemExit as e:\n    print(json.dumps({'code': e.code, 'torch': 'torch' in sys.modules,"
        " 'lightning': 'pytorch_lightning' in sys.modules}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"code": 1, "torch": False, "lightning": False}
    assert "did you mean max_epochs" in proc.stderr


@pytest.mark.parametrize("arg", ["optimizer.lrr=1", "trainer.max_epoch=1"])
def test_train_py_refuses_the_typo_before_torch_is_imported(tmp_path: Path, arg: str) -> None:
    """The whole entry point, `python train.py optimizer.lrr=1`: its module-level imports pull no torch either."""
    code = (
        "import json, runpy, sys, time\nt = time.perf_counter()\n"
        f"sys.argv = ['train.py', {arg!r}]\ntry:\n"
        f"    runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')\n"
        "except SystemExit as e:\n    print(json.dumps({'code': e.code, 'torch': 'torch' in sys.modules,"
        " 'lightning': 'pytorch_lightning' in sys.modules, 'transformers': 'transformers' in sys.modules,"
        " 's': time.perf_counter() - t}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result.pop("s") < 30  # ~0.3 s on an idle laptop core; the bound only catches a hang
    assert result == {"code": 1, "torch": False, "lightning": False, "transformers": False}, proc.stderr
    assert "did you mean" in proc.stderr


def test_every_range_names_a_shipped_key_and_the_old_paths_are_still_checked(tmp_path: Path) -> None:
    """RANGES is keyed by what a value is called (its dotted path's last parts), not by where it lives: every name
    is a key of some composed config, and each key the former path table checked still is (with a new one too)."""
    from lmlab.config.validate import LIMITS, RANGES, ranged_keys

    checked: set[str] = set()
    for extra in (
        [],
        ["model=minilm"],
        ["task=causal_lm"],
        ["task=multitask"],
        ["optimizer=sgd", "scheduler=plateau", "peft=lora"],
    ):
        cfg = compose_train([*TINY, *extra], tmp_path / "run")
        checked |= {key for key, _ in ranged_keys(cfg)}
    checked |= {key for key, _ in ranged_keys(compose_train([], tmp_path / "eval", config_name="eval"))}
    for name in [*RANGES, *LIMITS]:
        assert any(k == name or k.endswith("." + name) for k in checked), name
    former = [  # config._NUMERIC_FIELDS and _LIMIT_FIELDS before the table was keyed by name
        "optimizer.lr",
        "optimizer.weight_decay",
        "optimizer.momentum",
        "optimizer.eps",
        "optimizer.head_lr",
        "optimizer.layerwise_lr_decay",
        "scheduler.warmup",
        "scheduler.factor",
        "scheduler.patience",
        "dataset.batch_size",
        "dataset.eval_batch_size",
        "dataset.max_length",
        "dataset.num_workers",
        "dataset.split_seed",
        "dataset.pad_to_multiple_of",
        "model.bpe_vocab_size",
        "model.threshold",
        "model.dropout",
        "model.freeze_layers",
        "task.max_tokens",
        "trainer.accumulate_grad_batches",
        "trainer.gradient_clip_val",
        "trainer.val_check_interval",
        "trainer.check_val_every_n_epoch",
        "trainer.log_every_n_steps",
        "trainer.num_sanity_val_steps",
        "trainer.limit_train_batches",
        "trainer.limit_val_batches",
        "trainer.limit_test_batches",
        "callbacks.early_stopping.patience",
        "dataset.max_samples.train",
        "dataset.max_samples.val",
        "dataset.max_samples.test",
        "batch_size",
        "seed",
        "trainer.max_epochs",
        "trainer.max_steps",
    ]
    assert set(former) <= checked, set(former) - checked
    assert "peft.dropout" in checked  # new: the same quantity in another group
    assert not any(k.startswith("hydra.") for k in checked)


def test_the_mode_and_checkpoint_policy_checks_are_one_each(tmp_path: Path) -> None:
    from lmlab.callbacks.checkpoint import ResumableCheckpoint
    from lmlab.config import validate
    from lmlab.config.resolvers import optuna_direction
    from lmlab.tasks.base import Task

    class Minimal(Task):  # Task is abstract: the smallest task that reaches the mode check
        def module_class(self) -> type:
            return object

        def encoding(self) -> dict:
            return {}

    for refuse in (
        lambda: optuna_direction("up"),
        lambda: Minimal("t", "val/loss", "up", "best/val_loss"),
        lambda: validate(compose_train([*TINY, "task.mode=up"], tmp_path / "run")),
    ):
        with pytest.raises(LmlabError, match=re.escape("task.mode='up' must be 'min' or 'max'.")):
            refuse()
    policy = re.escape("checkpoint_policy='all' is not one of ['compact', 'keep'] (compact: optimizer state")
    with pytest.raises(LmlabError, match=policy):
        ResumableCheckpoint(dirpath=str(tmp_path), policy="all")
    with pytest.raises(LmlabError, match=policy):
        validate(compose_train([*TINY, "checkpoint_policy=all"], tmp_path / "run"))


@pytest.mark.parametrize("task", sorted(arglists.task_ignores()))
def test_a_tasks_ignores_name_keys_of_its_config_that_another_task_reads(tmp_path: Path, task: str) -> None:
    """`task.ignores` names no stale key: each is in the task's composed config, and some other task uses it."""
    cfg = compose_train([f"task={task}"], tmp_path / "run")
    assert list(cfg.task.ignores) == list(arglists.task_ignores()[task])
    for key in cfg.task.ignores:
        assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", key
        assert [t for t in arglists.tasks_using(key) if t != task], key


def test_the_ignored_key_message_names_the_tasks_that_use_it(tmp_path: Path) -> None:
    from lmlab.config.validate import check_task_keys

    cfg = compose_train(["task=causal_lm"], tmp_path / "run")
    with pytest.raises(LmlabError, match=re.escape("or pick a task that uses it (task=classification, task=multit")):
        check_task_keys(cfg, ["model.pooling"])
    with pytest.raises(LmlabError, match=re.escape("pick a task that uses it (task=classification).")):
        check_task_keys(cfg, ["model.class_weights"])
