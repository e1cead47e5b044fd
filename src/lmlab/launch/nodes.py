"""Several nodes: the allocation checked against the trainer, the rendezvous address under SLURM, one shared run
dir, and where each rank ran (manifest.json `ranks`).

SLURM (`hydra/launcher=slurm trainer.num_nodes=2`) or torchrun (`--nnodes 2`) start the processes, one per device
on every node; Lightning launches none. Every rank composes the same config and runs in the same run dir, which must
be on a filesystem all nodes share: rank 0 writes a marker file there at the start of `fit` and every other rank
must see it within `LMLAB_SHARED_DIR_WAIT_S` seconds (default 30), else the run stops with an error naming the dir
(a node-local /tmp would otherwise give each node its own checkpoints and a resume that silently starts over).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from lmlab.errors import LmlabError
from lmlab.rundir import manifest

log = logging.getLogger("lmlab.distributed")


# How long ranks > 0 wait to see rank 0's marker file in the run dir before calling it "not shared" (a network
# filesystem may show a new file a few seconds late). Below the process group's timeout (trainer=ddp: 600 s).
SHARED_DIR_WAIT_ENV = "LMLAB_SHARED_DIR_WAIT_S"
SHARED_DIR_WAIT_S = 30.0
SHARED_DIR_MARKER = ".shared_dir_check"


def _slurm_job() -> bool:
    """Lightning's own test for running its processes under SLURM (SLURMEnvironment.detect)."""
    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def _torchrun() -> bool:
    """torchrun (torch elastic) started this process (Lightning's TorchElasticEnvironment.detect)."""
    return all(k in os.environ for k in ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"))


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    return None


def check_allocation(trainer_cfg: DictConfig) -> None:
    """Refuse, before anything is built or trained, processes started by SLURM or torchrun that do not match
    `trainer.num_nodes x trainer.devices` (Lightning would otherwise train on part of the allocation, or wait
    for ranks that never come: Lightning-AI/pytorch-lightning#20391)."""
    nodes, devices = _int(trainer_cfg.get("num_nodes", 1)), _int(trainer_cfg.get("devices"))
    if nodes is None or devices is None:  # devices=auto / a list: Lightning decides, nothing to compare
        return
    if _slurm_job():
        world, got_nodes = int(os.environ["SLURM_NTASKS"]), _int(os.environ.get("SLURM_NNODES", ""))
        source, fix = (
            "the SLURM job",
            "With hydra/launcher=slurm leave hydra.launcher.nodes / tasks_per_node at their defaults (they follow "
            "the trainer); in your own sbatch script use --nodes=<trainer.num_nodes> "
            "--ntasks-per-node=<trainer.devices>",
        )
    elif _torchrun():
        world, got_nodes = int(os.environ.get("WORLD_SIZE", "1")), _int(os.environ.get("GROUP_WORLD_SIZE", ""))
        source, fix = "torchrun", "Use torchrun --nnodes=<trainer.num_nodes> --nproc-per-node=<trainer.devices>"
    else:
        return
    expected = nodes * devices
    if world != expected or (got_nodes is not None and got_nodes != nodes):
        raise LmlabError(
            f"{source} runs {world} process(es) on {got_nodes if got_nodes is not None else '?'} node(s), but "
            f"trainer.num_nodes x trainer.devices = {nodes} x {devices} = {expected}: the two must match (one "
            f"process per device on every node). {fix}, or set trainer.num_nodes / trainer.devices to the "
            f"allocation."
        )


def slurm_main_address() -> None:
    """Under a multi-node SLURM job, point MASTER_ADDR at the first node's address when its node *name* does not
    resolve (Lightning connects to the name from SLURM_NODELIST; a cluster whose NodeName differs from a resolvable
    host name, like the test cluster's n1/n2 on one host, would wait forever). Kept as is when set or resolvable."""
    import socket
    import subprocess

    if "MASTER_ADDR" in os.environ or not _slurm_job() or (_int(os.environ.get("SLURM_NNODES", "1")) or 1) <= 1:
        return
    from lightning_fabric.plugins.environments import SLURMEnvironment

    first = SLURMEnvironment.resolve_root_node_address(os.environ.get("SLURM_NODELIST", ""))
    try:
        socket.getaddrinfo(first, None)
        return
    except OSError:
        pass
    try:
        shown = subprocess.run(
            ["scontrol", "show", "node", first, "--oneliner"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        shown = ""
    addr = next((f.split("=", 1)[1] for f in shown.split() if f.startswith("NodeAddr=")), None)
    if addr is None:
        raise LmlabError(
            f"the first node of this SLURM job, {first!r}, has no resolvable address (DNS and `scontrol show node` "
            f"failed): export MASTER_ADDR=<its address> in the job script."
        )
    os.environ["MASTER_ADDR"] = addr
    log.info("MASTER_ADDR=%s (NodeAddr of %s, whose name does not resolve)", addr, first)


def rank_identity() -> dict[str, Any]:
    """Where this process runs, as the manifest records it per rank."""
    import socket

    return {
        "hostname": socket.gethostname(),
        "slurmd_nodename": os.environ.get("SLURMD_NODENAME"),
        "slurm_nodeid": _int(os.environ.get("SLURM_NODEID", "")),
        "slurm_procid": _int(os.environ.get("SLURM_PROCID", "")),
        "torchrun_group_rank": _int(os.environ.get("GROUP_RANK", "")),
    }


def shared_dir_wait_s() -> float:
    raw = os.environ.get(SHARED_DIR_WAIT_ENV, "")
    try:
        return float(raw) if raw else SHARED_DIR_WAIT_S
    except ValueError:
        raise LmlabError(
            f"{SHARED_DIR_WAIT_ENV}={raw!r} is not a number of seconds, e.g. {SHARED_DIR_WAIT_ENV}=60"
        ) from None


class ClusterCheck(pl.Callback):
    """At the start of a distributed `fit` (the process group is up): check that every rank sees the run dir rank
    0 writes into, and record each rank's node in manifest.json (`ranks`)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.world_size == 1:
            return
        import torch.distributed as dist

        marker = self.run_dir / SHARED_DIR_MARKER
        token = uuid.uuid4().hex if trainer.is_global_zero else None
        if token is not None:
            marker.write_text(token)
        token = trainer.strategy.broadcast(token, src=0)
        wait_s = shared_dir_wait_s()
        deadline = time.monotonic() + wait_s
        while True:
            try:
                seen = marker.read_text() == token
            except OSError:
                seen = False
            if seen or trainer.is_global_zero or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        mine = {"rank": trainer.global_rank, "node_rank": trainer.node_rank, **rank_identity(), "sees_run_dir": seen}
        ranks: list[Any] = [None] * trainer.world_size
        dist.all_gather_object(ranks, mine)
        blind = [r for r in ranks if not r["sees_run_dir"]]
        if blind:
            where = ", ".join(
                f"rank {r['rank']} on {r['slurmd_nodename'] or r['hostname']} (node {r['node_rank']})" for r in blind
            )
            raise LmlabError(
                f"the run dir {self.run_dir} is not shared across nodes: {where} did not see rank 0's marker file "
                f"{marker} within {wait_s:g} s. Put the run on a filesystem every node mounts (paths.log_dir=..., or "
                f"hydra.sweep.dir= / hydra.run.dir=), or for a slow network filesystem raise {SHARED_DIR_WAIT_ENV}."
            )
        if trainer.is_global_zero:
            marker.unlink(missing_ok=True)
            manifest.record_ranks(self.run_dir, ranks)
