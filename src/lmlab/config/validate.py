"""Where the configs live, the resolvers they use, and the checks that run before any heavy import.

Kept free of torch/transformers/lightning imports so that a bad config fails in about a second.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lmlab.errors import LmlabError

log = logging.getLogger("lmlab.config")


def check_accelerator(accelerator: Any, key: str = "trainer.accelerator") -> None:
    """A GPU accelerator on a machine whose torch sees none: refused in the process that trains (a SLURM login node
    that submits has no GPU, its jobs do), before the data is prepared, instead of Lightning's error later."""
    if str(accelerator).lower() not in ("gpu", "cuda", "mps"):
        return
    import torch

    mps = getattr(torch.backends, "mps", None)
    if str(accelerator).lower() != "cuda" and mps is not None and mps.is_available():
        return
    if torch.cuda.is_available():
        return
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU-only build)"
    raise LmlabError(
        f"{key}={accelerator} (e.g. trainer=gpu), but this machine has no GPU that torch can use "
        f"(torch {torch.__version__}, built with {build}; torch.cuda.is_available() is False). "
        f"Use trainer=cpu here, or run on a GPU node (hydra/launcher=slurm; the check runs in the job)."
    )


# What the libraries accept, or what makes sense (a bound the library does not check but that would silently do
# nothing), by what a value is called: (type, lower bound, upper bound, which ends are open; "[)" = lower bound
# included, upper excluded). A key is checked wherever it is in the composed config when its dotted path ends with
# one of these names (`lr`: optimizer.lr, whichever optimizer; `batch_size`: dataset.batch_size, a sub-task's,
# eval.py's; `patience`: scheduler.patience and callbacks.early_stopping.patience). So this is a table of
# quantities, not a second list of config paths: the YAML files say where each one lives, a new optimizer's or
# dataset's lr / weight_decay / momentum / eps / batch_size is range-checked with no change here, and
# tests/test_arglists.py checks that each name here is a key of the shipped configs.
INF = math.inf
RANGES: dict[str, tuple[type, float, float, str]] = {
    # optimizer.* (any optimizer) and lmlab's parameter groups
    "lr": (float, 0.0, INF, "()"),
    "weight_decay": (float, 0.0, INF, "[)"),
    "momentum": (float, 0.0, 1.0, "[)"),
    "eps": (float, 0.0, INF, "()"),  # a list is checked number by number (Adafactor's two regularizers)
    "head_lr": (float, 0.0, INF, "()"),
    "layerwise_lr_decay": (float, 0.0, 1.0, "(]"),
    # scheduler.*, callbacks.early_stopping.patience
    "warmup": (float, 0.0, INF, "[)"),
    "factor": (float, 0.0, 1.0, "()"),
    "patience": (int, 0, INF, "[)"),
    # dataset.* (each sub-task's too); eval.py's batch_size
    "batch_size": (int, 0, INF, "()"),
    "eval_batch_size": (int, 0, INF, "()"),
    "max_length": (int, 1, INF, "()"),
    "num_workers": (int, 0, INF, "[)"),
    "pad_to_multiple_of": (int, 0, INF, "()"),
    "max_samples.train": (int, 0, INF, "[)"),  # 0 = an empty split, refused with its own message
    "max_samples.val": (int, 0, INF, "[)"),
    "max_samples.test": (int, 0, INF, "[)"),
    # model.*, peft.dropout, task.max_tokens / max_flops / eval_every_tokens
    "bpe_vocab_size": (int, 0, INF, "()"),
    "bpe_train_bytes": (int, 0, INF, "()"),
    "threshold": (float, 0.0, 1.0, "()"),
    "dropout": (float, 0.0, 1.0, "[)"),
    "freeze_layers": (int, 0, INF, "[)"),
    "max_tokens": (int, 0, INF, "()"),
    "max_flops": (float, 0.0, INF, "()"),
    "eval_every_tokens": (int, 0, INF, "()"),
    # trainer.*
    "accumulate_grad_batches": (int, 0, INF, "()"),
    "gradient_clip_val": (float, 0.0, INF, "[)"),
    "val_check_interval": (float, 0.0, INF, "()"),
    "check_val_every_n_epoch": (int, 0, INF, "()"),
    "log_every_n_steps": (int, 0, INF, "()"),
    "num_sanity_val_steps": (int, -1, INF, "[)"),
    "limit_train_batches": (float, 0.0, INF, "()"),
    "limit_val_batches": (float, 0.0, INF, "[)"),
    "limit_test_batches": (float, 0.0, INF, "()"),
    # callbacks.last_checkpoint.* (and any checkpoint callback's)
    "every_n_train_steps": (int, 0, INF, "()"),
    # seeds: what seed_everything accepts
    "seed": (int, 0, 2**32, "[)"),
    "split_seed": (int, 0, 2**32, "[)"),
}
# -1 = no limit; 0 would train nothing and score the random-init model as if it were a result (trainer.*).
LIMITS = ("max_epochs", "max_steps")


def ranged_keys(cfg: DictConfig) -> list[tuple[str, tuple[type, float, float, str] | None]]:
    """The dotted keys of `cfg` (hydra's own excepted) that RANGES or LIMITS name, with their range (None: a
    limit), in config order."""
    out: list[tuple[str, tuple[type, float, float, str] | None]] = []

    def walk(node: Any, parts: tuple[str, ...]) -> None:
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            path = (*parts, str(key))
            if path in (("hydra",), ("compare",)):  # compare: the sweeper's plan (grids as text), not a run's values
                continue
            rule = RANGES.get(".".join(path[-2:])) or RANGES.get(path[-1])
            if rule is not None or (path[-1] in LIMITS and path[:-1] == ("trainer",)):
                out.append((".".join(path), rule))
            walk(value, path)

    walk(OmegaConf.to_container(cfg, resolve=False), ())
    return out


def check_mode(mode: Any) -> None:
    """A task's mode, the direction its monitor improves in (checkpointing, early stopping, sweeps, the report)."""
    if mode not in ("min", "max"):
        raise LmlabError(f"task.mode={mode!r} must be 'min' or 'max'.")


CHECKPOINT_POLICIES = ("compact", "keep")


def check_checkpoint_policy(policy: Any) -> None:
    """`checkpoint_policy` (conf/train.yaml), also as the checkpoint callback's `policy`."""
    if policy not in CHECKPOINT_POLICIES:
        raise LmlabError(
            f"checkpoint_policy={policy!r} is not one of {list(CHECKPOINT_POLICIES)} (compact: optimizer state "
            f"only in last.ckpt, removed when the run completes; keep: every checkpoint complete)."
        )


def token_counts(value: Any, key: str) -> list[int]:
    """A list of training token counts (decay branch points), each a positive integer, none twice; [] for null."""
    if value is None:
        return []
    counts = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    bad = [c for c in counts if isinstance(c, bool) or not isinstance(c, int) or c <= 0]
    if bad or not counts:
        raise LmlabError(
            f"{key}={list(counts)!r}: {'an empty list' if not counts else f'{bad[0]!r} is not a positive integer'}. "
            f"Give positive whole token counts, e.g. {key}=[100000,200000,400000] (null for none)."
        )
    if len(set(counts)) != len(counts):
        raise LmlabError(f"{key}={list(counts)} lists a count twice: give each branch point once.")
    return sorted(counts)


def time_interval(value: Any, key: str) -> timedelta | None:
    """A checkpoint interval: "HH:MM:SS" or "DD:HH:MM:SS" (as trainer.max_time), or a number of minutes."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return timedelta(minutes=float(value))
    parts = str(value).split(":")
    if isinstance(value, str) and len(parts) in (3, 4) and all(p.isdigit() for p in parts):
        days, hours, minutes, seconds = ([0] * (4 - len(parts))) + [int(p) for p in parts]
        interval = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        if interval.total_seconds() > 0:
            return interval
    raise LmlabError(
        f'{key}={value!r} is not a time interval: give "HH:MM:SS" or "DD:HH:MM:SS" (e.g. {key}=00:30:00) or a '
        f"positive number of minutes, or null for none."
    )


def _check_number(key: str, value: Any, kind: type, low: float, high: float = INF, ends: str = "[)") -> None:
    if value is None:
        return
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int and ok_type and (not math.isfinite(float(value)) or float(value) != int(value)):
        ok_type = False
    if not ok_type or (isinstance(value, float) and math.isnan(value)):
        example = "3e-5" if kind is float else "32"
        raise LmlabError(
            f"{key}={value!r} is not a{'n integer' if kind is int else ' number'}; set it like `{key}={example}`."
        )
    too_low = value <= low if ends[0] == "(" else value < low
    too_high = value >= high if ends[1] == ")" else value > high
    if too_low or too_high or not math.isfinite(value):
        lo = f"{'>' if ends[0] == '(' else '>='} {low:g}"
        hi = f" and {'<' if ends[1] == ')' else '<='} {high:g}" if math.isfinite(high) else ""
        raise LmlabError(f"{key}={value} is out of range; it must be {lo}{hi} (and finite).")


def _check_limit(key: str, value: Any) -> None:
    if value is None:
        return
    _check_number(key, value, int, -1, INF, "[)")
    if value == 0:
        raise LmlabError(
            f"{key}=0 trains nothing: the run would score the untrained model as its result. Use "
            f"{key}=1 or more (or -1 for no limit, with the other of trainer.max_epochs/max_steps set)."
        )


def command_line_keys() -> list[str]:
    """The keys set by this run's command-line overrides (`a.b=1`, `+a.b=1`, `~a.b`), empty outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    overrides = HydraConfig.get().overrides.task
    return [o.split("=", 1)[0].lstrip("+~") for o in overrides]


def check_task_keys(cfg: DictConfig, keys: list[str]) -> None:
    """Refuse an explicit override of another task's setting (e.g. model.class_weights with task=causal_lm): it
    would silently do nothing. Defaults and presets never trigger this, only what the user typed."""
    task = cfg.get("task")
    if task is None:
        return
    from lmlab.config.arglists import tasks_using

    for key in keys:
        for ignored in task.get("ignores") or []:
            if key == ignored or key.startswith(ignored + "."):
                users = ", ".join(f"task={t}" for t in tasks_using(key) if t != task.get("name"))
                raise LmlabError(
                    f"{key} is not used by task={task.get('name')}: it is a setting of another task and would "
                    f"silently do nothing here. Remove {key}=... from the command line, or pick a task that "
                    f"uses it{f' ({users})' if users else ''}."
                )


def check_argument_names(cfg: DictConfig) -> None:
    """Every trainer.* key must be a pytorch_lightning.Trainer argument and every optimizer.* key an argument of
    the optimizer class (as conf/trainer/default.yaml and conf/optimizer/*.yaml list them, `lmlab.config.arglists`):
    also what an experiment file or a preset sets."""
    from lmlab.config import arglists

    trainer = cfg.get("trainer")
    if isinstance(trainer, DictConfig) and trainer.get("_target_") in (
        "pytorch_lightning.Trainer",
        "lightning.pytorch.Trainer",
    ):
        for name in trainer:
            if name != "_target_":
                arglists.check_trainer_arg(str(name))
    optimizer = cfg.get("optimizer")
    if isinstance(optimizer, DictConfig) and arglists.optimizer_keys(str(optimizer.get("_target_"))) is not None:
        for name in optimizer:
            arglists.check_optimizer_arg(str(name), str(optimizer.get("_target_")))


def check_model_sources(model: DictConfig) -> None:
    """The model and tokenizer can be read locally or downloaded (a missing dir, offline): fails in seconds."""
    from lmlab.config.hub import check_loadable

    name = model.get("name_or_path")
    if isinstance(name, str):
        check_loadable(name, "model.name_or_path")
    tokenizer = model.get("tokenizer")
    if isinstance(tokenizer, str) and tokenizer not in ("bpe", name):
        check_loadable(tokenizer, "model.tokenizer")


def warn_muon_on_pretrained(cfg: DictConfig) -> None:
    """Muon is lmlab's from-scratch recipe (task=causal_lm's default). Fine-tuning weights that were pre-trained with
    AdamW is a valid experiment, so it is not refused, but a user who only passed `model=smollm2` may not know Muon
    is in use."""
    target = str(OmegaConf.select(cfg, "optimizer._target_", default="") or "")
    model = cfg.get("model")
    if cfg.get("task_name") != "train" or not target.endswith("MuonWithAdamW") or not isinstance(model, DictConfig):
        return
    source = next((f"model.{k}={model[k]}" for k in ("init_from", "name_or_path") if model.get(k)), None)
    if source is not None:
        log.warning(
            "optimizer=muon (lr %s) fine-tunes pre-trained weights (%s): Muon is the from-scratch recipe "
            "(task=causal_lm's default). To fine-tune as the docs measure it, pass optimizer=adamw.",
            OmegaConf.select(cfg, "optimizer.lr", default="?"),
            source,
        )


def validate(cfg: DictConfig) -> None:
    """Fail fast, before heavy imports, on values that would otherwise fail minutes into a run."""
    check_task_keys(cfg, command_line_keys())
    check_argument_names(cfg)
    for key, rule in ranged_keys(cfg):
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if rule is None:
            _check_limit(key, value)
        elif key.endswith("eps") and isinstance(value, ListConfig):  # Adafactor's two regularizers
            for i, eps in enumerate(value):
                _check_number(f"{key}[{i}]", eps, *rule)
        else:
            _check_number(key, value, *rule)
    betas = OmegaConf.select(cfg, "optimizer.betas", default=None)
    if betas is not None:
        if not isinstance(betas, ListConfig) or len(betas) != 2:
            raise LmlabError(f"optimizer.betas={betas} must be two numbers, e.g. optimizer.betas=[0.9,0.999].")
        for i, beta in enumerate(betas):
            _check_number(f"optimizer.betas[{i}]", beta, float, 0.0, 1.0, "[)")
    if cfg.get("checkpoint_policy") is not None:
        check_checkpoint_policy(cfg.checkpoint_policy)
    for name, callback in (cfg.get("callbacks") or {}).items():
        if isinstance(callback, DictConfig) and callback.get("train_time_interval") is not None:
            time_interval(callback.train_time_interval, f"callbacks.{name}.train_time_interval")
        if isinstance(callback, DictConfig) and callback.get("at_tokens") is not None:  # branch_checkpoints
            token_counts(callback.at_tokens, f"callbacks.{name}.at_tokens")
    if isinstance(cfg.get("task"), DictConfig) and "mode" in cfg.task:
        check_mode(cfg.task.mode)  # also Task.__init__ and the Optuna direction: here before torch is imported
    trainer = cfg.get("trainer")
    if (
        trainer is not None
        and trainer.get("max_epochs") == -1
        and trainer.get("max_steps", -1) == -1
        and not trainer.get("max_time")
        and not (isinstance(cfg.get("task"), DictConfig) and (cfg.task.get("max_tokens") or cfg.task.get("max_flops")))
    ):
        raise LmlabError(
            "trainer.max_epochs=-1 with trainer.max_steps=-1 never ends; set one of them (e.g. trainer.max_steps=1000) "
            "or a budget (task.max_tokens, task.max_flops)."
        )
    if trainer is not None and trainer.get("precision") is not None:
        known = (
            "64-true",
            "32-true",
            "16-mixed",
            "bf16-mixed",
            "16-true",
            "bf16-true",
            "transformer-engine",
            "64",
            "32",
            "16",
            "bf16",
        )
        if str(trainer.precision) not in known:
            raise LmlabError(
                f"trainer.precision={trainer.precision!r} is not one of {list(known[:6])}; "
                f"e.g. trainer.precision=bf16-mixed."
            )

    dataset = cfg.get("dataset")
    if dataset is not None and dataset.get("fractions") is not None:
        fractions = dataset.fractions
        names = {"train", "val", "test"}
        if not isinstance(fractions, DictConfig) or set(fractions) != names:
            raise LmlabError(f"dataset.fractions must have keys {sorted(names)}, got {fractions}.")
        for split, value in fractions.items():
            _check_number(f"dataset.fractions.{split}", value, float, 0.0, 1.0, "()")
        total = sum(float(v) for v in fractions.values())
        if abs(total - 1.0) > 1e-6:
            raise LmlabError(f"dataset.fractions must sum to 1, got {total:g} ({OmegaConf.to_yaml(fractions)}).")

    model = cfg.get("model")
    if model is not None:
        check_model_sources(model)
        warn_muon_on_pretrained(cfg)
        problem = model.get("problem_type")
        valid = ("single_label", "binary", "multi_label")
        if problem is not None and problem not in valid:
            raise LmlabError(f"model.problem_type={problem!r} is not one of {list(valid)}.")
        pooling = model.get("pooling")
        if pooling is not None and pooling not in ("native", "cls", "mean", "last"):
            raise LmlabError(f"model.pooling={pooling!r} is not one of ['native', 'cls', 'mean', 'last'].")
        weights = model.get("class_weights")
        if weights is not None and weights != "auto" and not isinstance(weights, ListConfig):
            raise LmlabError(f"model.class_weights={weights!r} must be null, 'auto' or a list of numbers.")
