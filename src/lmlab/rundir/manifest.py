"""`<run dir>/manifest.json`: what produced a run (code, command, environment, hardware, data), beside it the
installed packages (`pip_freeze.txt`) and, when the work tree is dirty, the uncommitted diff (`git.diff`).

Written when training starts (so a failed run has one too) and completed with the end time when it ends.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lmlab import rundir
from lmlab.rundir import lineage
from lmlab.rundir.lineage import parent_path

MANIFEST = rundir.MANIFEST
PIP_FREEZE = "pip_freeze.txt"
GIT_DIFF = "git.diff"
_PACKAGES = (
    "torch",
    "transformers",
    "pytorch-lightning",
    "lightning",
    "torchmetrics",
    "hydra-core",
    "omegaconf",
    "wandb",
    "optuna",
    "lmlab",
)


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_state() -> dict[str, Any]:
    """The commit of the lmlab code that runs (its repo, else the launch directory's), dirty flag and diff.

    Cached: every job of a sweep in one process runs the same code.
    """
    for where in (Path(__file__).resolve().parent, Path.cwd()):
        root = _git("rev-parse", "--show-toplevel", cwd=where)
        if root:
            root_path = Path(root.strip())
            commit = (_git("rev-parse", "HEAD", cwd=root_path) or "").strip() or None
            status = _git("status", "--porcelain", "--untracked-files=no", cwd=root_path) or ""
            diff = _git("diff", "HEAD", cwd=root_path) if status.strip() else ""
            return {"commit": commit, "dirty": bool(status.strip()), "root": str(root_path), "diff": diff or ""}
    return {"commit": None, "dirty": None, "root": None, "diff": ""}


def _name_version(dist: importlib.metadata.Distribution) -> tuple[str, str]:
    """Name and version from the metadata's header lines. `dist.metadata` runs the email parser over the whole
    file, long description included: ~0.2 s for a typical environment, on every run's path to its first step."""
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in ("Name", "Version") and key not in fields:
            fields[key] = value.strip()
    if len(fields) < 2:  # unusual metadata (folded headers...): let the real parser deal with it
        return dist.metadata["Name"] or "?", dist.version
    return fields["Name"], fields["Version"]


@functools.lru_cache(maxsize=1)
def pip_freeze() -> str:
    """`name==version` of every installed distribution — what `pip freeze` prints, without a pip subprocess
    per job."""
    names = dict(_name_version(d) for d in importlib.metadata.distributions())
    return "".join(f"{n}=={v}\n" for n, v in sorted(names.items(), key=lambda kv: kv[0].lower()))


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _hardware() -> dict[str, Any]:
    import torch

    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "gpu": gpus,
        "gpu_count": len(gpus),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def _torch_deterministic() -> bool:
    import torch

    return torch.are_deterministic_algorithms_enabled()


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # composed outside @hydra.main (tests, notebooks)
        return []


def write_start(run_dir: Path, cfg: DictConfig, datamodule: Any, trainer: Any, effective_batch_size: int) -> None:
    """manifest.json at the start of training, plus pip_freeze.txt and (dirty tree) git.diff."""
    run_dir = Path(run_dir)
    git = git_state()
    (run_dir / PIP_FREEZE).write_text(pip_freeze())
    if git["dirty"]:
        (run_dir / GIT_DIFF).write_text(git["diff"])
    splits = getattr(datamodule, "splits", {}) or {}
    hashes = lineage.write_example_hashes(run_dir, splits) if splits else None
    # An earlier attempt's branch checkpoints stay recorded (a resumed stable run of experiment=wsd_branches
    # does not save again those it passed before the kill).
    earlier = lineage.read_optional(run_dir / MANIFEST)
    kept = [e for e in earlier.get("branch_checkpoints") or [] if (run_dir / e.get("path", "")).is_file()]
    rundir.write_json(
        run_dir / MANIFEST,
        {
            "git": {
                "commit": git["commit"],
                "dirty": git["dirty"],
                "root": git["root"],
                "diff_file": GIT_DIFF if git["dirty"] else None,
            },
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "cwd": os.getcwd(),
            "overrides": _overrides(),
            "seed": cfg.get("seed"),
            "versions": _versions(),
            "pip_freeze_file": PIP_FREEZE,
            "hardware": _hardware(),
            "hostname": socket.gethostname(),
            # What was asked for, and what torch actually enforces (Lightning turns it on for deterministic=True).
            "deterministic": {"trainer": cfg.trainer.get("deterministic"), "torch_enforced": _torch_deterministic()},
            "precision": str(getattr(trainer, "precision", cfg.trainer.get("precision"))),
            "world_size": int(getattr(trainer, "world_size", 1)),
            "effective_batch_size": effective_batch_size,
            "data": {
                "fingerprint": getattr(datamodule, "data_fingerprint", None),
                "labels": list(getattr(datamodule, "labels", []) or []),
                "sizes": {name: len(split) for name, split in splits.items()},
                # exact and near-duplicate counts within/across splits (dataset.dedupe, near_duplicate_threshold)
                "duplicates": dict(getattr(datamodule, "duplicates", None) or {}),
                # dataset.val_tokens / test_tokens: documents and tokens of a split outside its budget (not scored)
                "held_out": dict(getattr(datamodule, "held_out", None) or {}),
                "example_hashes": hashes,
                # dataset=mixture: per source, its normalised weight, train blocks and tokens, blocks per epoch
                **({"mixture": mixture} if (mixture := getattr(datamodule, "mixture_info", None)) else {}),
            },
            # model.init_from or ckpt_path= another run's checkpoint: the parent run, its data, commit and
            # optimized_metric, test-set overlap (lmlab.lineage); the checkpoint's step and tokens
            "lineage": lineage.lineage(
                parent_path(cfg.model.get("init_from"), cfg.get("seed")) if cfg.get("model") else None,
                splits,
                ckpt_path=cfg.get("ckpt_path"),
                run_dir=run_dir,
            ),
            # callbacks.branch_checkpoints: complete checkpoints at stated token counts (record_branch_checkpoint)
            "branch_checkpoints": kept,
            "start_time": rundir.now(),
            "end_time": None,
        },
    )


def record_ranks(run_dir: Path, ranks: list[dict[str, Any]]) -> None:
    """Where each rank of a distributed run ran (hostname, SLURMD_NODENAME, SLURM_NODEID, ...), gathered to rank 0
    once the process group is up (lmlab.launch.nodes.ClusterCheck)."""
    path = Path(run_dir) / MANIFEST
    data = rundir.read_json(path) if path.is_file() else {}
    data["world_size"] = len(ranks)
    data["ranks"] = ranks
    rundir.write_json(path, data)


def record_branch_checkpoint(run_dir: Path, entry: dict[str, Any]) -> None:
    """A branch checkpoint written (lmlab.callbacks.checkpoint.BranchCheckpoints): `branch_checkpoints` lists the
    token count asked for, the optimizer step, the tokens trained by then, the lr and the file (run-dir relative)."""
    path = Path(run_dir) / MANIFEST
    data = rundir.read_json(path) if path.is_file() else {}
    entries = [e for e in data.get("branch_checkpoints") or [] if e.get("tokens") != entry["tokens"]]
    data["branch_checkpoints"] = sorted([*entries, entry], key=lambda e: e["tokens"])
    rundir.write_json(path, data)


def write_end(run_dir: Path) -> None:
    path = Path(run_dir) / MANIFEST
    if path.is_file():
        data = rundir.read_json(path)
        data["end_time"] = rundir.now()
        rundir.write_json(path, data)


def finish_run_dir(run_dir: Path, metrics: dict[str, Any]) -> None:
    """The last writes of a completed run, in this order: the manifest's end time, then metrics.json with the run
    dir's final size (after checkpoint compaction, which the caller did)."""
    write_end(run_dir)
    metrics["perf/disk_bytes"] = sum(p.stat().st_size for p in Path(run_dir).rglob("*") if p.is_file())
    rundir.write_json(Path(run_dir) / rundir.METRICS, metrics)
