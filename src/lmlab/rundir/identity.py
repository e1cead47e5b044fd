"""What makes two runs the same job: the result config, its digest, and whether a run dir may be (re)used."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError
from lmlab.rundir.files import CHECKPOINTS, METRICS, RESOLVED, STATUS, read_json, write_json
from lmlab.rundir.status import effective_status, read_status

log = logging.getLogger("lmlab.rundir")

# Keys that cannot change a result: where things are written, what is logged and shown, how data is fed. Two
# runs whose resolved configs differ only here are the same job (tests/test_integrity.py lists why each is safe).
NON_RESULT_KEYS = (
    "paths",
    "logger",
    "tags",
    "task_name",
    "ckpt_path",
    "export_model",
    "dataset.num_workers",
    "dataset.log_positions",  # a log of what was read, not what is read
    "dataset.cache_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.default_root_dir",
    "callbacks.progress_bar",
    "callbacks.model_summary",
    "callbacks.lr_monitor",
    "checkpoint_policy",
    "callbacks.model_checkpoint.policy",  # what is kept on disk, not what is learnt
    "callbacks.last_checkpoint.every_n_train_steps",  # how often last.ckpt is saved: resume is exact either way
    "callbacks.last_checkpoint.train_time_interval",
    "callbacks.branch_checkpoints",  # extra complete checkpoints (decay branch points): what is kept, not learnt
    "compare",  # the compare sweeper's plan (arms, seeds): each job's own overrides say what it runs
    "wsd_branches",  # the decay-branch sweeper's plan: likewise
)


# Result keys added after runs already existed, each with the value that reproduces those runs. A key at that
# value is left out of the result config, so an older run dir (which never recorded it) stays the same job and its
# resume and re-run checks still match; any other value is part of the run's identity like every key. Add a key
# here when a new config key's default keeps old results (tests/test_upgrade_fixtures.py retrains old runs).
ADDED_KEYS: dict[str, Any] = {
    "model.bpe_train_bytes": 100_000_000,
    # issue 23: classification's old scoring (causal LM's default is now `final`: a new result, not an old one),
    # no FLOP budget, no token eval schedule
    "task.score": "best_val",
    "task.max_flops": None,
    "task.eval_every_tokens": None,
    "scheduler.decay_steps": None,  # scheduler=wsd's decay in steps (decay branches); null = scheduler.decay as before
    "model.compile_mode": None,  # issue 25: torch.compile's mode; null = torch's default, as before
}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def result_config(cfg: Any) -> dict[str, Any]:
    """The run's resolved config (a DictConfig) without NON_RESULT_KEYS, flattened to dotted keys (JSON-able)."""
    from omegaconf import OmegaConf, open_dict

    # Where the run is written is not part of its identity; with placeholders, keys that interpolate it
    # (checkpoint dirpath) resolve the same for every dir, and before Hydra knows the job's dir.
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.pop("hydra", None)
        if cfg.get("paths") is not None:
            cfg.paths.output_dir, cfg.paths.log_dir = "<run dir>", "<log dir>"
    flat = _flatten(OmegaConf.to_container(cfg, resolve=True))
    return {
        k: json.loads(json.dumps(v, default=str))
        for k, v in sorted(flat.items())
        if not any(k == n or k.startswith(n + ".") for n in NON_RESULT_KEYS)
        and not (k in ADDED_KEYS and v == ADDED_KEYS[k])
    }


def digest(flat: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differing_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """`key: old -> new` for every key whose value differs: changed values first, then keys on one side only."""
    missing = "<unset>"
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k, missing) != new.get(k, missing)]
    keys.sort(key=lambda k: k not in old or k not in new)
    return [f"{k}: {old.get(k, missing)!r} -> {new.get(k, missing)!r}" for k in keys]


def write_resolved(run_dir: Path, flat: Mapping[str, Any]) -> str:
    value = digest(flat)
    write_json(Path(run_dir) / RESOLVED, {"digest": value, "config": dict(flat)})
    return value


def read_resolved(run_dir: Path) -> dict[str, Any] | None:
    try:
        return read_json(Path(run_dir) / RESOLVED)
    except (OSError, ValueError):
        return None


def config_changes(run_dir: Path, config: Mapping[str, Any]) -> list[str] | None:
    """How `config` differs from the result config `run_dir` recorded (`key: old -> new`): [] for the same run,
    None when the dir recorded none."""
    recorded = read_resolved(run_dir)
    if recorded is None:
        return None
    if recorded.get("digest") == digest(config):
        return []
    return differing_keys(recorded.get("config") or {}, config) or ["(config digest differs)"]


def holds_results(run_dir: Path) -> bool:
    """Whether a dir holds (part of) a run: its status, metrics or checkpoints."""
    run_dir = Path(run_dir)
    return any((run_dir / name).exists() for name in (STATUS, METRICS, RESOLVED)) or any(
        (run_dir / CHECKPOINTS).glob("*.ckpt")
    )


def check_run_dir(run_dir: Path, config: dict[str, Any]) -> None:
    """This run may write into `run_dir` only if the dir is new, or holds an unfinished attempt of this same run
    (same result config), which it then continues. A completed run, another config, or a live process: refused,
    before anything in the dir is touched."""
    if not holds_results(run_dir):
        return
    state = effective_status(read_status(run_dir))
    fix = "start it in a new dir (the default; or another hydra.run.dir / hydra.sweep.dir)"
    if state == "completed":
        raise LmlabError(
            f"{run_dir} already holds a completed run (its metrics.json, checkpoints and status "
            f"would be overwritten): {fix}; to evaluate it, `python eval.py ckpt_path={run_dir}`."
        )
    changes = config_changes(run_dir, config)
    if changes is None:
        raise LmlabError(f"{run_dir} holds files of another run whose config is not recorded: {fix}.")
    if changes:
        raise LmlabError(
            f"{run_dir} holds an unfinished run of a different configuration ({'; '.join(changes[:8])}): "
            f"{fix}; or resume that run with the same settings (`ckpt_path={run_dir}`)."
        )
    log.info("%s holds an unfinished attempt of this run (status %s): continuing it there", run_dir, state)


__all__ = [
    "NON_RESULT_KEYS",
    "result_config",
    "digest",
    "differing_keys",
    "write_resolved",
    "read_resolved",
    "config_changes",
    "holds_results",
    "check_run_dir",
]
