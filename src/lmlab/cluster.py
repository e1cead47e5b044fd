"""Resolvers that tie the SLURM launcher to the trainer, and a run-dir stamp that survives a requeue.

Kept free of heavy imports: these run while Hydra composes, before anything is submitted.
"""

from __future__ import annotations

import os
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

from lmlab.config import LmlabError


class RequeueExit(SystemExit):
    """Raised after the job was requeued: the attempt ends, but the job did not fail (status.json: requeued)."""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM ended the run; `checkpoint` is where it can resume from (None: the last epoch's).

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way can swallow it. Here, beside
    RequeueExit, so that run_task can catch it before lmlab.requeue (torch) is imported."""

    def __init__(self, signum: int, checkpoint: Path | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.checkpoint = signum, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


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
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
