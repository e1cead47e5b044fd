"""The arguments of `pytorch_lightning.Trainer` and of the shipped optimizers, as static lists.

Checking `trainer.<arg>=` / `optimizer.<arg>=` against the real signatures would import torch and Lightning (seconds);
these lists make a typo fail in about a second instead. `tests/test_arglists.py` compares them with
`inspect.signature` of the installed versions, so they cannot drift.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence

from lmlab.errors import LmlabError

# pytorch_lightning.Trainer.__init__ (2.6), in signature order.
TRAINER_ARGS: tuple[str, ...] = (
    "accelerator",
    "strategy",
    "devices",
    "num_nodes",
    "precision",
    "logger",
    "callbacks",
    "fast_dev_run",
    "max_epochs",
    "min_epochs",
    "max_steps",
    "min_steps",
    "max_time",
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
    "limit_predict_batches",
    "overfit_batches",
    "val_check_interval",
    "check_val_every_n_epoch",
    "num_sanity_val_steps",
    "log_every_n_steps",
    "enable_checkpointing",
    "enable_progress_bar",
    "enable_model_summary",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "deterministic",
    "benchmark",
    "inference_mode",
    "use_distributed_sampler",
    "profiler",
    "detect_anomaly",
    "barebones",
    "plugins",
    "sync_batchnorm",
    "reload_dataloaders_every_n_epochs",
    "default_root_dir",
    "enable_autolog_hparams",
    "model_registry",
)
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

# The shipped optimizers' arguments (their __init__ minus `params`), by `_target_`.
OPTIMIZER_ARGS: dict[str, tuple[str, ...]] = {
    "torch.optim.AdamW": (
        "lr",
        "betas",
        "eps",
        "weight_decay",
        "amsgrad",
        "maximize",
        "foreach",
        "capturable",
        "differentiable",
        "fused",
    ),
    "torch.optim.Adam": (
        "lr",
        "betas",
        "eps",
        "weight_decay",
        "amsgrad",
        "foreach",
        "maximize",
        "capturable",
        "differentiable",
        "fused",
        "decoupled_weight_decay",
    ),
    "torch.optim.SGD": (
        "lr",
        "momentum",
        "dampening",
        "weight_decay",
        "nesterov",
        "maximize",
        "foreach",
        "differentiable",
        "fused",
    ),
    "transformers.optimization.Adafactor": (
        "lr",
        "eps",
        "clip_threshold",
        "decay_rate",
        "beta1",
        "weight_decay",
        "scale_parameter",
        "relative_step",
        "warmup_init",
    ),
}
# conf/optimizer/<name>.yaml -> its _target_ (tests check this against the YAML files).
OPTIMIZER_TARGETS: dict[str, str] = {
    "adamw": "torch.optim.AdamW",
    "adam": "torch.optim.Adam",
    "sgd": "torch.optim.SGD",
    "adafactor": "transformers.optimization.Adafactor",
}
# lmlab's own optimizer keys (parameter groups), = lmlab.optim.GROUP_KEYS (which imports torch).
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
    if name not in TRAINER_ARGS:
        hint = suggest(name, TRAINER_ARGS, _TRAINER_RENAMED)
        raise LmlabError(
            f"trainer.{name} is not an argument of pytorch_lightning.Trainer{hint}."
            f" Every Trainer argument can be set as trainer.<arg>=...; they are listed in conf/trainer/default.yaml."
        )


def optimizer_keys(target: str) -> tuple[str, ...] | None:
    """The keys `optimizer.*` may hold for this `_target_` (None: not a shipped optimizer, nothing checked)."""
    args = OPTIMIZER_ARGS.get(target)
    return None if args is None else (*args, *OPTIMIZER_GROUP_KEYS)


def check_optimizer_arg(name: str, target: str | None) -> None:
    """Refuse an `optimizer.<name>` the optimizer class does not take (lmlab's group keys are allowed)."""
    if name == "_target_":
        return
    keys = optimizer_keys(target) if target else None
    if keys is None:  # the optimizer is not known here: only names no shipped optimizer has are refused
        keys = tuple(dict.fromkeys(a for args in OPTIMIZER_ARGS.values() for a in args)) + OPTIMIZER_GROUP_KEYS
        if name not in keys:
            raise LmlabError(
                f"optimizer.{name} is not an argument of any shipped optimizer"
                f"{suggest(name, keys, _OPTIMIZER_RENAMED)}."
            )
        return
    if name not in keys:
        args = ", ".join(OPTIMIZER_ARGS[target])
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
    check_optimizer = not custom and (chosen is None or chosen in OPTIMIZER_TARGETS)  # else: a user's own config
    if chosen is None and not any(a.startswith(("experiment=", "hparams_search=")) for a in args):
        chosen = "adamw"  # conf/train.yaml's default; an experiment may choose another
    target = OPTIMIZER_TARGETS.get(chosen or "")
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
