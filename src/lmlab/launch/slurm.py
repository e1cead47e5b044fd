"""`hydra/launcher=slurm`: hydra-submitit-launcher's SLURM launcher, with lmlab's bookkeeping of failures.

The stock launcher submits the sweep as one sbatch array and returns `[job.results()[0] for job in jobs]`: the first
job that died without a result (killed, out of memory, node failure) raises and the other jobs' outcomes are lost.
Here every job is waited for; a job that died before it could record itself gets `status.json` = failed with
SLURM's final state, and the sweep then fails (non-zero exit) like a local multirun with a failed job. A request
the cluster can never satisfy is refused by sbatch at submit time; that message is reported as is, each job dir
records it, and the multirun exits non-zero.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher

from lmlab.errors import LmlabError

log = logging.getLogger("lmlab.slurm")

# Keys the launcher turns into sbatch resources once per multirun (trainer.* via interpolation in slurm.yaml).
RESOURCE_KEYS = ("trainer.devices", "trainer.num_nodes", "trainer.accelerator", "hydra.launcher.")


def refuse_resource_sweeps(job_overrides: Sequence[Sequence[str]]) -> None:
    """One sbatch array has one set of resources: refuse a multirun whose jobs differ in them."""
    parser = OverridesParser.create()
    values: dict[str, set[str]] = {}
    for overrides in job_overrides:
        for override in parser.parse_overrides(list(overrides)):
            key = override.get_key_element()
            if key.startswith(RESOURCE_KEYS) or key in RESOURCE_KEYS:
                values.setdefault(key, set()).add(override.get_value_element_as_str())
    varying = {key: sorted(v) for key, v in values.items() if len(v) > 1}
    if varying:
        detail = ", ".join(f"{key} over {v}" for key, v in varying.items())
        raise LmlabError(
            f"hydra/launcher=slurm requests one set of resources per multirun (an sbatch array), but this sweep "
            f"varies {detail}. Run one multirun per value, e.g. `python train.py -m hydra/launcher=slurm "
            f"{next(iter(varying))}={next(iter(varying.values()))[0]} ...`."
        )


def _refresh_sweep_json(sweep_dir: Path) -> None:
    """Re-read every job's status.json into <sweep dir>/sweep.json (lmlab.sweep), when the sweep keeps one."""
    from lmlab.launch import sweep

    if (sweep_dir / sweep.SWEEP).is_file():
        sweep.summary(sweep_dir)


def check_allocation(launcher: Any, trainer: Any) -> None:
    """Refuse at submit a request whose SLURM tasks differ from the trainer's processes: `hydra.launcher.nodes x
    tasks_per_node` must equal `trainer.num_nodes x trainer.devices`, node for node (else Lightning trains on part
    of the allocation or waits for ranks that never start). The job checks it again (lmlab.launch.nodes)."""
    got_nodes, per_node = launcher.get("nodes"), launcher.get("tasks_per_node")
    nodes, devices = trainer.get("num_nodes", 1), trainer.get("devices")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (got_nodes, per_node, nodes, devices)):
        return
    if (got_nodes, per_node) != (nodes, devices):
        raise LmlabError(
            f"hydra.launcher requests {got_nodes} node(s) x {per_node} task(s) = {got_nodes * per_node} SLURM "
            f"task(s), but trainer.num_nodes x trainer.devices = {nodes} x {devices} = {nodes * devices}: DDP needs "
            f"one task per device on every node. Drop the hydra.launcher.nodes / tasks_per_node overrides (they "
            f"default to trainer.num_nodes and trainer.devices), or set the trainer to match. Nothing was submitted."
        )


class SlurmLauncher(_SubmititSlurmLauncher):
    """Same submission as hydra-submitit-launcher's (its `checkpoint` runs each job); `launch` differs in refusing
    resource sweeps and mismatched allocations and in how submission errors and dead jobs are reported;
    `__call__` gives the ranks > 0 of a multi-task job their own log file."""

    def __call__(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> JobReturn:
        import os

        from lmlab.launch.ddp import rank_overrides

        rank = int(os.environ.get("SLURM_PROCID", "0") or 0)
        return super().__call__([*sweep_overrides, *rank_overrides(rank)], *args, **kwargs)

    def _executor(self) -> Any:
        """The stock launcher's executor set-up: init-only keys to the constructor, the rest as parameters."""
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        params = dict(self.params)
        executor = submitit.AutoExecutor(
            folder=params.pop("submitit_folder"),
            cluster=self._EXECUTOR,
            slurm_max_num_timeout=params.pop("max_num_timeout"),
        )
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in params.items()})
        return executor

    def _job_dir(self, overrides: Sequence[str], job_num: int) -> Path | None:
        """The dir Hydra gives job `job_num` (composed like the job itself does), for jobs that never wrote."""
        from omegaconf import open_dict

        try:
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config.hydra.job):
                sweep_config.hydra.job.num = job_num
            return Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        except Exception as err:  # the status is a courtesy; never hide the job's own failure behind it
            log.warning("could not compute the dir of job %d (%s): %s", job_num, overrides, err)
            return None

    def _record_failure(self, overrides: Sequence[str], job_num: int, error: str) -> None:
        from lmlab import rundir

        job_dir = self._job_dir(overrides, job_num)
        if job_dir is None:
            return
        status_path = job_dir / rundir.STATUS
        current = rundir.read_json(status_path) if status_path.exists() else {}
        if current.get("status") in ("completed", "failed"):
            return  # the job recorded its own outcome
        rundir.update_status(job_dir, "failed", error=error, attempts=current.get("attempts", 0))

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit
        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides

        assert self.config is not None
        refuse_resource_sweeps(job_overrides)
        if job_overrides:  # resources are the same for every job (just checked): the first job's config says them
            first = self.hydra_context.config_loader.load_sweep_config(self.config, list(job_overrides[0]))
            check_allocation(first.hydra.launcher, first.trainer)
        executor = self._executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Submitit 'slurm' sweep output dir : %s", sweep_dir)
        numbered = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        for num, overrides in numbered:
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
        params = [
            (overrides, "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state())
            for num, overrides in numbered
        ]
        try:
            jobs = executor.map_array(self, *zip(*params))
        except submitit.core.utils.FailedJobError as err:
            # submitit's message ends with sbatch's own ("Batch job submission failed: ...").
            message = str(err).strip().splitlines()
            sbatch = next(
                (line for line in reversed(message) if "sbatch" in line or "error" in line.lower()),
                message[-1] if message else "sbatch failed",
            )
            for num, overrides in numbered:
                self._record_failure(overrides, num, f"SLURM refused the job at submit: {sbatch}")
            _refresh_sweep_json(sweep_dir)
            raise LmlabError(
                f"SLURM refused the sweep's {len(numbered)} job(s) at submit: {sbatch}\n"
                f"Fix the request (hydra.launcher.partition / timeout_min / cpus_per_task / mem_gb / gpus_per_node "
                f"/ nodes; see `sinfo -o '%P %l %c %m %G'`). Nothing ran; each job dir's status.json says so."
            ) from None

        returns: list[JobReturn] = []
        for (num, overrides), job in zip(numbered, jobs):
            try:
                returns.append(job.results()[0])
            except Exception as err:  # died without a result: killed, OOM, node failure, requeue limit
                state = job.state
                error = f"SLURM job {job.job_id} ended {state} without a result: {str(err).strip().splitlines()[0]}"
                log.error("job #%d (%s): %s", num, " ".join(overrides), error)
                self._record_failure(overrides, num, error)
                ret = JobReturn(
                    overrides=overrides,
                    status=JobStatus.FAILED,
                    _return_value=RuntimeError(error),
                    task_name=str(self.config.hydra.job.name),
                )
                ret.working_dir = str(self._job_dir(overrides, num) or "")
                returns.append(ret)
        if any(ret.status == JobStatus.FAILED for ret in returns):
            _refresh_sweep_json(sweep_dir)  # the jobs' own callbacks could not record a death
        for (num, overrides), ret in zip(numbered, returns):
            log.info("job #%d %s: %s", num, ret.status.name.lower(), " ".join(filter_overrides(overrides)))
        return returns
