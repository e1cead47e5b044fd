"""Where the configs live and the OmegaConf resolvers they use.

Kept free of heavy imports: these run while Hydra composes, before anything is submitted.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lmlab.config.paths import package_path
from lmlab.errors import LmlabError


def gpu_precision() -> str:
    """bf16 autocast where the GPU has bf16 units (Ampere and newer), else fp16 with loss scaling."""
    import torch

    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"


def _job_dir(override_dirname: str) -> str:
    return job_dirname(override_dirname)


def _sqlite(path: str) -> str:
    return sqlite_url(path)


def optuna_direction(mode: str) -> str:
    """A task's mode (min | max) as Optuna's study direction."""
    from lmlab.config.validate import check_mode

    check_mode(mode)
    return "maximize" if mode == "max" else "minimize"


def register_resolvers() -> None:

    for name, resolver, cache in (
        ("pkg_path", package_path, False),
        ("lmlab_gpu_precision", gpu_precision, False),
        ("lmlab_slurm_tasks", slurm_tasks, False),
        ("lmlab_slurm_gpus", slurm_gpus, False),
        ("lmlab_run_stamp", run_stamp, True),  # cached like ${now:}: one value per process
        ("lmlab_job_dir", _job_dir, False),
        ("lmlab_sqlite", _sqlite, False),
        ("lmlab_direction", optuna_direction, False),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver, use_cache=cache)


def slurm_tasks(devices: Any) -> int:
    """tasks_per_node: one SLURM task per device, so SLURM (not Lightning) starts the DDP processes."""
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.isdigit() and int(devices) > 0:
        return int(devices)
    raise LmlabError(
        f"trainer.devices={devices!r}: with hydra/launcher=slurm give the number of devices per node "
        f"(one SLURM task each), e.g. trainer.devices=4."
    )


def slurm_gpus(accelerator: Any, devices: Any) -> int | None:
    """gpus_per_node: the trainer's devices on a GPU accelerator, else none. `accelerator=auto` (the default
    trainer) requests no GPUs: a GPU-less partition rejects any GPU request at submit; use trainer=gpu or ddp."""
    if str(accelerator) not in ("gpu", "cuda"):
        return None
    return slurm_tasks(devices)


def run_stamp() -> str:
    """The single-run dir name: date and time, or the SLURM job (+ step) id inside a batch job, so a requeued
    job (same id) finds the dir and checkpoint of its earlier attempt, and all srun tasks share one dir."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    interactive = os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive")
    if job and not interactive:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        step = os.environ.get("SLURM_STEP_ID")
        return "slurm-" + "_".join(x for x in (job, task, f"step{step}" if step else None) if x)
    if "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # torchrun: every process (on every node) must land in one dir, and only the rendezvous id is shared.
        run_id = os.environ["TORCHELASTIC_RUN_ID"]
        if run_id in ("", "none"):  # torchrun's default when --rdzv-id is not given
            raise LmlabError(
                "under torchrun the run dir is named by the rendezvous id, and none was given: add "
                "--rdzv-id=<a name unique to this run> to torchrun (or --standalone on one machine), or set "
                "hydra.run.dir=<a dir every node sees> on every node."
            )
        return "torchrun-" + re.sub(r"[^\w.\-]", "_", run_id)
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")


MAX_DIRNAME = 80  # longer override strings get a readable prefix + a short hash of the whole string


def job_dirname(override_dirname: str) -> str:
    """A job's subdir from its overrides, e.g. `optimizer.lr=3e-5,seed=2`; long ones end in a short hash.

    Resolver `lmlab_job_dir` (hydra.sweep.subdir). The hash is over the full string, so two long override
    strings that share a prefix still get different dirs.
    """
    if not override_dirname:
        return "default"
    name = re.sub(r"[^\w.,=+\-]", "_", override_dirname)
    if len(name) > MAX_DIRNAME:
        digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:8]
        name = f"{name[: MAX_DIRNAME - 9].rstrip('_,')}_{digest}"
    return name


def sqlite_url(path: str) -> str:
    """Resolver `lmlab_sqlite`: `sqlite:///<abs path>`, creating the folder first.

    The Optuna sweeper opens its storage before any job dir (or the sweep dir) exists, and SQLite cannot
    create a missing folder.
    """
    file = Path(path).expanduser().absolute()
    file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{file}"
