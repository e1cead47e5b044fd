"""DDP/FSDP under Hydra: one run dir for all ranks, rank-0-only outputs, and an unpadded single-device test.

How the processes start (chosen deliberately):
- Locally (`trainer=ddp`, `trainer=ddp_cpu`, `trainer=fsdp`) Lightning's subprocess launcher re-runs the Hydra
  main once per extra rank, with `hydra.run.dir=<rank 0's run dir>` so every rank composes the same config and
  writes into one dir. We keep that launcher rather than `ddp_spawn`: it is what GPU users get anyway, it needs no
  pickling of the datamodule/model, and ddp_cpu then exercises the same code path as GPU DDP. Its one trap is a
  multirun (Lightning #11300): the children would receive the whole `-m a=1,2` argv and the pattern of
  `hydra.run.dir` instead of the job's dir; `ddp_children_argv` rewrites both for the current job.
- Under SLURM (`hydra/launcher=slurm`, one task per device) SLURM starts the processes and Lightning launches none.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from omegaconf import DictConfig, ListConfig, open_dict, read_write

log = logging.getLogger("lmlab.distributed")

# Hydra's command-line flags that select the config; they must reach the children, `-m` must not.
_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
# Hydra overrides that only make sense for the parent multirun.
_PARENT_ONLY = (
    "hydra.mode",
    "hydra.sweep",
    "hydra.sweeper",
    "hydra/sweeper",
    "hydra.launcher",
    "hydra/launcher",
    "hydra.run.dir",
    "hydra.job.name",
    "hydra.output_subdir",
    "hydra.callbacks",
    "hydra/callbacks",
)


def env_rank() -> int:
    """This process's global rank from the launcher's environment (0 when not distributed)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(key, "").isdigit():
            if key == "LOCAL_RANK":  # Lightning's subprocess launcher sets NODE_RANK + LOCAL_RANK, not RANK
                return int(os.environ.get("NODE_RANK", "0") or 0) * 1_000 + int(os.environ[key])
            return int(os.environ[key])
    return 0


def is_primary_process() -> bool:
    return env_rank() == 0


def end_slurm_step_after_failure() -> None:
    """Rank 0 of a multi-task SLURM step, after recording a failure: cancel the step. srun waits for every task,
    and a peer that hangs (a frozen node, a rank stopped in a collective) would otherwise hold the job until its
    time limit although rank 0 gave up after the process group's timeout. A no-op outside such a step."""
    import subprocess

    job, step = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID")
    if not job or not step or int(os.environ.get("SLURM_NTASKS", "1") or 1) <= 1 or env_rank() != 0:
        return
    log.error("ending SLURM step %s.%s: its other tasks may be stuck waiting for this one", job, step)
    for handler in logging.getLogger().handlers:  # the KILL below ends this process too
        handler.flush()
    # Detached (`setsid --fork`: reparented away from this task): the KILL reaches this process first, and a
    # scancel killed with it mid-request left the other node's task running (seen on the test cluster).
    try:
        subprocess.run(
            ["setsid", "--fork", "scancel", "--signal=KILL", f"{job}.{step}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )
        time.sleep(30)  # the KILL ends this process; give up waiting after that long
    except (OSError, subprocess.TimeoutExpired) as err:
        log.error("could not cancel the SLURM step: %s", err)


def rank_overrides(rank: int) -> list[str]:
    """Hydra overrides for a rank > 0 that SLURM or torchrun started: its log goes to
    `train_ddp_process_<rank>.log` (not rank 0's train.log) and it writes no `.hydra/` (rank 0's stays) --
    what Lightning's own subprocess launcher passes its children."""
    return [f"hydra.job.name=train_ddp_process_{rank}", "hydra.output_subdir=null"] if rank > 0 else []


def _config_flags(argv: list[str]) -> list[str]:
    kept: list[str] = []
    args = iter(argv)
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in _CONFIG_FLAGS:
            kept.append(arg)
            if "=" not in arg:
                kept.append(next(args, ""))
    return kept


@contextmanager
def ddp_children_argv(cfg: DictConfig, trainer: Any) -> Iterator[None]:
    """Around `fit` in a multirun job: make Lightning's DDP children re-run *this job* in *this job's dir*
    (Lightning #11300).

    Lightning builds the child command from `sys.argv[1:]` + `hydra.run.dir=<HydraConfig run.dir>`. For the
    duration of the launch, argv becomes this job's own overrides (no `-m`) and the run dir the job's output dir;
    argv is restored afterwards (the manifest and the next job see the real command line). Only a multirun
    parent that launches children is touched; the children themselves are plain single runs.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launches = isinstance(getattr(trainer.strategy, "launcher", None), _SubprocessScriptLauncher)
    if not launches or not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        yield
        return
    hydra_cfg = HydraConfig.get()
    hydra_overrides = [o for o in hydra_cfg.overrides.hydra if not o.lstrip("~+").startswith(_PARENT_ONLY)]
    saved = list(sys.argv)
    sys.argv = [sys.argv[0], *_config_flags(sys.argv[1:]), *hydra_overrides, *hydra_cfg.overrides.task]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = str(cfg.paths.output_dir)
    try:
        yield
    finally:
        sys.argv = saved


def trainer_plugins(trainer_cfg: DictConfig) -> dict[str, Any]:
    """Extra Trainer kwargs: atomic checkpoint writes (`lmlab.checkpoint_io`), and under submitit Lightning's SLURM
    auto-requeue off (submitit owns the signal).

    Lightning hands a CheckpointIO plugin to whatever strategy it builds: single device and DDP save through it on
    rank 0; FSDP does with `state_dict_type: full` (our `trainer=fsdp`), while a sharded FSDP checkpoint is a
    directory written by torch.distributed.checkpoint, which no CheckpointIO sees (not atomic). A config that
    brings its own CheckpointIO (in `trainer.plugins` or its strategy's `checkpoint_io`) keeps it: Lightning
    refuses two.
    """
    from lmlab.rundir.atomic import AtomicCheckpointIO

    plugins = trainer_cfg.get("plugins") or []
    plugins = list(plugins) if isinstance(plugins, (list, ListConfig)) else [plugins]
    extra: list[Any] = []
    if not _has_checkpoint_io(trainer_cfg, plugins):
        extra.append(AtomicCheckpointIO())
    if "SUBMITIT_FOLDER" in os.environ or "SUBMITIT_EXECUTOR" in os.environ:
        from pytorch_lightning.plugins.environments import SLURMEnvironment

        if SLURMEnvironment.detect():
            extra.append(SLURMEnvironment(auto_requeue=False))
    return {"plugins": [*plugins, *extra]} if extra else {}


def _has_checkpoint_io(trainer_cfg: DictConfig, plugins: list[Any]) -> bool:
    from hydra.utils import get_class
    from lightning_fabric.plugins import CheckpointIO

    strategy = trainer_cfg.get("strategy")
    if isinstance(strategy, DictConfig) and strategy.get("checkpoint_io"):
        return True
    for plugin in plugins:
        if isinstance(plugin, CheckpointIO):
            return True
        target = plugin.get("_target_") if isinstance(plugin, DictConfig) else None
        if target and isinstance(cls := get_class(target), type) and issubclass(cls, CheckpointIO):
            return True
    return False


def eval_trainer(cfg: DictConfig, trainer: Any) -> Any:
    """The trainer that runs the final val/test: `trainer` itself on one device; after a distributed fit, a fresh
    single-device trainer on rank 0 (None on the other ranks).

    A DistributedSampler pads the last batch by repeating examples, which would skew test metrics and break
    `eval.py` reproducing them; one device sees every example exactly once.
    """
    if trainer.world_size == 1:
        return trainer
    import torch.distributed as dist
    from hydra.utils import instantiate
    from pytorch_lightning.plugins.environments import LightningEnvironment
    from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    is_zero = trainer.is_global_zero
    if isinstance(getattr(trainer.strategy, "launcher", None), _SubprocessScriptLauncher):
        # This process started the children and exported their rendezvous variables into its own environment;
        # the next job of a multirun would take LOCAL_RANK as "processes are created externally" and wait
        # forever for ranks nobody starts.
        for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(key, None)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()  # or torchmetrics would try to sync with ranks that are gone
    if not is_zero:
        return None
    # One process, no cluster environment (under SLURM the job still says ntasks>1).
    return instantiate(
        cfg.trainer,
        devices=1,
        num_nodes=1,
        strategy="auto",
        plugins=[LightningEnvironment()],
        callbacks=[],
        logger=trainer.loggers or False,
        enable_progress_bar=False,
    )
