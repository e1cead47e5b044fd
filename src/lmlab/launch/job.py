"""One job's life in its run dir: the lock, the identity check, status.json, the heartbeat, and what an
interruption, a requeue, a pruned trial or a failure leave behind.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lmlab.config import validate
from lmlab.errors import LmlabError
from lmlab.rundir import check_run_dir

log = logging.getLogger("lmlab.train")


def resume_command(run_dir: Path) -> str:
    """The one command that resumes this interrupted run: the same command with ckpt_path=<run dir>."""
    import shlex

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return "re-issue the same command (the sweep skips completed jobs and resumes this one): " + " ".join(
            shlex.quote(a) for a in ["python", *sys.argv]
        )
    args = [a for a in sys.argv[1:] if not a.lstrip("+").startswith("ckpt_path=")]
    return " ".join(shlex.quote(a) for a in ["python", Path(sys.argv[0]).name, *args, f"ckpt_path={run_dir}"])


def _record_interruption(run_dir: Path, err: Any) -> None:
    """status.json `interrupted` + the resume command; exit 128 + the signal."""
    from lmlab import rundir

    command = resume_command(run_dir)
    rundir.update_status(
        run_dir,
        "interrupted",
        signal=str(err),
        error=None,
        checkpoint=str(err.checkpoint or rundir.resume_checkpoint(run_dir) or ""),
        resume=command,
    )
    log.error(
        "interrupted by %s; %s. Resume with:\n  %s",
        err,
        f"position saved in {err.checkpoint}" if err.checkpoint else "resumes from the last checkpoint",
        command,
    )
    sys.exit(err.exit_code)


def run_task(task: Any, cfg: DictConfig) -> dict[str, Any] | None:
    """Record the job's status around `task` (lock, identity check, heartbeat, signals); in a single run, show
    input errors without a traceback."""
    import signal
    import traceback

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from lmlab import rundir
    from lmlab.console import mark_job_start
    from lmlab.errors import Interrupted, RequeueExit
    from lmlab.launch.ddp import is_primary_process

    mark_job_start()  # perf/time_to_first_batch_s counts from here in the later jobs of a multirun
    run_dir = Path(cfg.paths.output_dir)
    single = not HydraConfig.initialized() or HydraConfig.get().mode == RunMode.RUN
    if not is_primary_process():  # DDP ranks > 0 share rank 0's dir; it alone keeps status.json and talks
        logging.getLogger("lmlab").setLevel(logging.ERROR)
        validate(cfg)
        from lmlab.launch.requeue import Interrupts

        with Interrupts():
            return task(cfg)
    try:  # refused before anything is written into the dir
        lock = rundir.lock_run_dir(run_dir)
        config = rundir.result_config(cfg)
        check_run_dir(run_dir, config)
    except LmlabError as err:
        if single:
            log.error("%s", err)
            sys.exit(1)
        raise
    with lock:
        rundir.update_status(run_dir, "running")
        rundir.write_resolved(run_dir, config)
        try:
            validate(cfg)  # before torch is imported (lmlab.requeue imports it): a bad config fails in ~1 s
            from lmlab.launch.requeue import Interrupts

            with rundir.Heartbeat(run_dir), Interrupts():
                result = task(cfg)
        except RequeueExit:  # status.json already says requeued
            raise
        except Interrupted as err:
            _record_interruption(run_dir, err)
        except BaseException as err:
            if type(err).__name__ == "TrialPruned":  # its Optuna pruner stopped it (lmlab.callbacks.pruning)
                rundir.update_status(run_dir, "pruned", error=None, pruned=str(err))
                log.info("%s", err)
                return None
            if type(err).__name__ == "SIGTERMException":  # Lightning's own handler was active (sanity check)
                _record_interruption(run_dir, Interrupted(signal.SIGTERM))
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            try:
                (run_dir / rundir.TRACEBACK).write_text(traceback.format_exc())
                rundir.update_status(
                    run_dir, "failed", error=f"{type(err).__name__}: {message}", traceback_file=rundir.TRACEBACK
                )
            except (OSError, LmlabError) as status_err:  # e.g. the disk is full: still say what went wrong
                log.error("could not record the failure in %s: %s", run_dir, status_err)
            from lmlab.launch.ddp import end_slurm_step_after_failure

            end_slurm_step_after_failure()  # several nodes: a hung peer must not hold the job until its limit
            if isinstance(err, LmlabError) and single:
                log.error("%s", err)
                sys.exit(1)
            raise
        rundir.update_status(run_dir, "completed")
    return result
