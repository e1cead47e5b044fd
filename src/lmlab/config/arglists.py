"""The arguments `trainer.*` and `optimizer.*` may set, read from the YAML files that list them.

conf/trainer/default.yaml lists every `pytorch_lightning.Trainer` argument but the two lmlab fills from other
config groups (TRAINER_SET_ELSEWHERE); each conf/optimizer/<name>.yaml lists every argument of its `_target_` plus
lmlab's parameter-group keys (OPTIMIZER_GROUP_KEYS). So the YAML files are the one list of names: a new optimizer is
one YAML file, and its arguments are checked with no code change. They are read with PyYAML, without importing
torch or Lightning (milliseconds, cached), so a typo fails in well under a second; `tests/test_arglists.py` compares
them with `inspect.signature` of the installed classes, so they cannot drift.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from lmlab.config.paths import config_dir
from lmlab.errors import LmlabError

# Trainer arguments lmlab fills from other config groups: setting them under trainer.* would be ignored or clash.
TRAINER_SET_ELSEWHERE: dict[str, str] = {
    "logger": "loggers come from the logger group: logger=csv|tensorboard|wandb|many (logger=null: none)",
    "callbacks": "callbacks come from the callbacks group: callbacks.<name>=... (conf/callbacks/default.yaml)",
}
# Lightning 1.x arguments and common guesses whose name does not look like the current one.
_TRAINER_RENAMED: dict[str, str] = {
    "gpus": "devices (with trainer.accelerator=gpu, or trainer=gpu)",
    "tpu_cores": "devices (with trainer.accelerator=tpu)",
    "epochs": "max_epochs",
    "steps": "max_steps",
    "resume_from_checkpoint": "the top-level ckpt_path=<run dir | .ckpt>",
    "checkpoint_callback": "enable_checkpointing",
    "weights_summary": "enable_model_summary",
    "progress_bar_refresh_rate": "enable_progress_bar (or callbacks.progress_bar.refresh_rate)",
    "amp_backend": "precision",
    "grad_clip": "gradient_clip_val",
    "clip_grad_norm": "gradient_clip_val",
}
# lmlab's own optimizer keys: they shape the parameter groups (lmlab.optim) and are not passed to the optimizer.
# The first two are in every conf/optimizer/*.yaml; `name` (a label, never passed to the optimizer) is allowed too.
OPTIMIZER_GROUP_KEYS: tuple[str, ...] = ("layerwise_lr_decay", "head_lr", "name")
_OPTIMIZER_RENAMED: dict[str, str] = {
    "learning_rate": "lr",
    "learningrate": "lr",
    "lr_rate": "lr",
    "wd": "weight_decay",
    "decay": "weight_decay",
    "epsilon": "eps",
    "beta": "betas",
    "beta2": "betas",
    "adam_beta1": "betas",
    "adam_beta2": "betas",
    "adam_epsilon": "eps",
    "llrd": "layerwise_lr_decay",
    "layer_decay": "layerwise_lr_decay",
    "classifier_lr": "head_lr",
}
_NOT_ARGUMENTS = ("_target_", "defaults")


def _read(path: Path) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        data = yaml.load(f, Loader=loader)
    return data if isinstance(data, dict) else {}


def _group_keys(group: str, name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """conf/<group>/<name>.yaml's top-level keys (with those of the same-group files its `defaults` list names)."""
    data = _read(Path(config_dir()) / group / f"{name}.yaml")
    keys: dict[str, Any] = {}
    for entry in data.get("defaults") or []:
        if isinstance(entry, str) and entry != "_self_" and entry not in seen:
            keys.update(_group_keys(group, entry, (*seen, name)))
    keys.update(data)
    return {k: v for k, v in keys.items() if k != "defaults"}


@functools.cache
def trainer_args() -> tuple[str, ...]:
    """Every `pytorch_lightning.Trainer` argument: conf/trainer/default.yaml's keys and TRAINER_SET_ELSEWHERE."""
    listed = [k for k in _group_keys("trainer", "default") if k not in _NOT_ARGUMENTS]
    return (*listed, *(k for k in TRAINER_SET_ELSEWHERE if k not in listed))


@functools.cache
def optimizer_configs() -> dict[str, tuple[str, tuple[str, ...]]]:
    """conf/optimizer/<name>.yaml -> (its `_target_`, its arguments): every key but `_target_` and the group keys."""
    out = {}
    for path in sorted((Path(config_dir()) / "optimizer").glob("*.yaml")):
        keys = _group_keys("optimizer", path.stem)
        target = keys.get("_target_")
        if isinstance(target, str):
            args = tuple(k for k in keys if k not in _NOT_ARGUMENTS and k not in OPTIMIZER_GROUP_KEYS)
            out[path.stem] = (target, args)
    return out


@functools.cache
def _default_choice(group: str) -> str | None:
    """The option conf/train.yaml's defaults list picks for a config group (e.g. optimizer: adamw)."""
    for entry in _read(Path(config_dir()) / "train.yaml").get("defaults") or []:
        if isinstance(entry, dict) and group in entry and isinstance(entry[group], str):
            return entry[group]
    return None


@functools.cache
def task_ignores() -> dict[str, tuple[str, ...]]:
    """conf/task/<name>.yaml -> its `task.ignores` (the settings of other tasks it does not read)."""
    out = {}
    for path in sorted((Path(config_dir()) / "task").glob("*.yaml")):
        task = _read(path).get("task")
        if isinstance(task, dict):
            out[str(task.get("name") or path.stem)] = tuple(task.get("ignores") or ())
    return out


def tasks_using(key: str) -> list[str]:
    """The shipped tasks whose `ignores` does not name `key` (nor a key above it)."""
    return [
        name
        for name, ignores in task_ignores().items()
        if not any(key == ignored or key.startswith(ignored + ".") for ignored in ignores)
    ]


def optimizer_args(target: str) -> tuple[str, ...] | None:
    """The arguments of a shipped optimizer class, by `_target_` (None: no conf/optimizer file names it)."""
    found = [args for t, args in optimizer_configs().values() if t == target]
    return tuple(dict.fromkeys(a for args in found for a in args)) if found else None


def suggest(name: str, known: Iterable[str], renamed: dict[str, str] | None = None) -> str:
    """` (did you mean X?)` for a misspelt or renamed argument, else ``."""
    if renamed and name in renamed:
        return f" (did you mean {renamed[name]}?)"
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def check_trainer_arg(name: str) -> None:
    """Refuse a `trainer.<name>` that pytorch_lightning.Trainer does not take, or that lmlab sets elsewhere."""
    if name in TRAINER_SET_ELSEWHERE:
        raise LmlabError(f"trainer.{name} is set by lmlab: {TRAINER_SET_ELSEWHERE[name]}.")
    if name not in trainer_args():
        hint = suggest(name, trainer_args(), _TRAINER_RENAMED)
        raise LmlabError(
            f"trainer.{name} is not an argument of pytorch_lightning.Trainer{hint}."
            f" Every Trainer argument can be set as trainer.<arg>=...; they are listed in conf/trainer/default.yaml."
        )


def optimizer_keys(target: str) -> tuple[str, ...] | None:
    """The keys `optimizer.*` may hold for this `_target_` (None: not a shipped optimizer, nothing checked)."""
    args = optimizer_args(target)
    return None if args is None else (*args, *OPTIMIZER_GROUP_KEYS)


def check_optimizer_arg(name: str, target: str | None) -> None:
    """Refuse an `optimizer.<name>` the optimizer class does not take (lmlab's group keys are allowed)."""
    if name == "_target_":
        return
    keys = optimizer_keys(target) if target else None
    if keys is None:  # the optimizer is not known here: only names no shipped optimizer has are refused
        every = (a for _, args in optimizer_configs().values() for a in args)
        keys = tuple(dict.fromkeys(every)) + OPTIMIZER_GROUP_KEYS
        if name not in keys:
            raise LmlabError(
                f"optimizer.{name} is not an argument of any shipped optimizer"
                f"{suggest(name, keys, _OPTIMIZER_RENAMED)}."
            )
        return
    if name not in keys:
        args = ", ".join(k for k in keys if k not in OPTIMIZER_GROUP_KEYS)
        raise LmlabError(
            f"optimizer.{name} is not an argument of {target}{suggest(name, keys, _OPTIMIZER_RENAMED)}. Its "
            f"arguments: {args}; lmlab adds {', '.join(OPTIMIZER_GROUP_KEYS[:2])}."
        )


_OVERRIDE = re.compile(r"^(\+{0,2})(trainer|optimizer)\.([A-Za-z_]\w*)([.\[=].*)$", re.S)


def check_overrides(args: Sequence[str]) -> list[str]:
    """Check the command line's `trainer.<arg>=` / `optimizer.<arg>=` names before Hydra reads them (Hydra would
    say "not in struct"); returns the args with `+trainer.<arg>=` of a listed argument made `trainer.<arg>=`
    (it is in the config now; `+` would say "already exists"). Raises LmlabError."""
    chosen = None
    for arg in args:
        if arg.startswith("optimizer="):
            chosen = arg.split("=", 1)[1]
    custom = any(a.lstrip("+").startswith("optimizer._target_=") for a in args)
    shipped = optimizer_configs()
    check_optimizer = not custom and (chosen is None or chosen in shipped)  # else: a user's own config
    if chosen is None and not any(a.startswith(("experiment=", "hparams_search=")) for a in args):
        chosen = _default_choice("optimizer")  # conf/train.yaml's; an experiment may choose another
    target = shipped[chosen][0] if chosen in shipped else None
    out = []
    for arg in args:
        match = _OVERRIDE.match(arg)
        if match is None:
            out.append(arg)
            continue
        plus, group, name, rest = match.groups()
        if group == "trainer":
            check_trainer_arg(name)
        elif check_optimizer:
            check_optimizer_arg(name, target)
        out.append(f"{group}.{name}{rest}" if plus == "+" and rest.startswith("=") else arg)
    return out


def quote(value: str) -> str:
    """A Hydra override value that is exactly `value` (single-quoted, with \\ and ' escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
