"""Interruptions — Ctrl-C, SIGTERM, SLURM pre-emption and time limits — with an exact resume.

Ctrl-C / SIGTERM (`Interrupts`, installed for the whole run by `lmlab.launch.job.run_task`): during `fit` the signal
only sets a flag; at the next batch boundary every rank saves `<run dir>/checkpoints/resume.ckpt` and the run
ends with `Interrupted` (status.json `interrupted`, the resume command printed, exit code 128 + signal: 130 for
Ctrl-C, 143 for SIGTERM — never 0, so `&&` chains and schedulers see it). Outside `fit` (data preparation, the
final val/test) it ends at once; the resume then starts from the last epoch's checkpoint. A second signal stops
at once. Lightning's own SIGTERM handling (it raises mid-validation and exits 0) is replaced during fit.

SLURM pre-emption and time limits:

Who owns the signal: submitit installs its USR2 handler before the job function runs (hydra/launcher=slurm sends
USR2 `signal_delay_s` before the limit, and `scancel --signal=USR2` does the same by hand). That handler would
requeue at once, mid-step, saving no model state. `RequeueOnSignal` takes the signal over during `fit`: it only
sets a flag, and at the next batch boundary every rank saves `<job dir>/checkpoints/requeue.ckpt` (a fixed path:
the requeued attempt runs in the same job dir), the job is marked `requeued` in status.json, and submitit's own
handler is then called to requeue (it keeps counting time-outs against `max_num_timeout`). Lightning's SLURM
auto-requeue stays off (`SLURMEnvironment(auto_requeue=False)`, see `lmlab.launch.ddp.trainer_plugins`), so
exactly one component requeues.

Exact resume: the checkpoint has weights, optimizer, scheduler and loop state (Lightning), plus what Lightning does
not store: every rank's global RNG states (dropout; each rank restores its own) and how many samples of the current
epoch were already trained on, so the training sampler (`ResumableRandomSampler`, or `LengthGroupedSampler` with
`dataset.group_by_length=true`) skips them (Lightning restarts a mid-epoch resume at the first batch of a
non-stateful loader). With a global-order sampler (task=causal_lm: `ElasticBlockSampler`) it stores the global
positions consumed in the epoch and the world size, and a resume on any number of ranks starts there.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from lmlab import rundir
from lmlab.callbacks.loggers import wandb_run_ids
from lmlab.errors import Interrupted, RequeueExit
from lmlab.rundir import requeue_checkpoint

log = logging.getLogger("lmlab.requeue")


class RequeueLimitError(RuntimeError):
    """The job timed out once more than `max_num_timeout` allows."""


class Interrupts:
    """SIGINT/SIGTERM handlers for one run (a context manager; main thread only)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.pending: int | None = None
        self.in_fit = False
        self._previous: dict[int, Any] = {}

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.pending is not None or not self.in_fit:
            raise Interrupted(signum)  # a second signal, or nothing to checkpoint mid-way: stop now
        self.pending = signum
        log.warning(
            "got %s: saving the current position at the end of this batch (send it again to stop now)",
            signal.Signals(signum).name,
        )

    def install(self) -> None:
        """(Re)install the handlers; also at train start, after Lightning registered its own SIGTERM handler."""
        for signum in self.SIGNALS:
            signal.signal(signum, self.handle)

    def __enter__(self) -> Interrupts:
        global ACTIVE
        self._previous = {s: signal.getsignal(s) for s in self.SIGNALS}
        self.install()
        ACTIVE = self
        return self

    def __exit__(self, *exc: Any) -> None:
        global ACTIVE
        ACTIVE = None
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


ACTIVE: Interrupts | None = None  # the run's handlers, which the callback below consults at batch boundaries

# Test hook (deterministic fault injection): `LMLAB_FAULT_SIGNAL=<step|val>:<n>:<SIGNAL>` sends this process
# SIGNAL after training step n (global step), or at validation batch n of the first validation during fit.
FAULT_ENV = "LMLAB_FAULT_SIGNAL"


def _fault(where: str, n: int) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if spec.count(":") == 2:
        kind, at, name = spec.split(":")
        if kind == where and int(at) == n:
            os.environ.pop(FAULT_ENV)  # once per process
            os.kill(os.getpid(), getattr(signal, name))


def _rng_states() -> dict[str, Any]:
    # Plain types and tensors only: checkpoints are loaded with torch.load(weights_only=True).
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def gather_rng_states(world_size: int) -> list[dict[str, Any]]:
    """Every rank's RNG states, in rank order (a collective: every rank saves a checkpoint together)."""
    states = _rng_states()
    if world_size == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [states]
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, states)
    return gathered


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _submitit_handler(signum: int) -> Any:
    """submitit's bound SignalHandler method when it owns `signum` in this process, else None."""
    handler = signal.getsignal(signum)
    owner = getattr(handler, "__self__", None)
    if owner is not None and type(owner).__module__.startswith("submitit."):
        return handler
    return None


class RequeueOnSignal(pl.Callback):
    """Save RNG + epoch position in every checkpoint; under submitit, requeue at a batch boundary on its signal."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._signum = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
        self._submitit: Any = None
        self._pending = False
        self._in_fit = False
        self._restore_rng: dict[str, Any] | None = None

    # ---- signal ownership
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self._submitit is not None:
            return
        self._submitit = _submitit_handler(self._signum)
        if self._submitit is not None:
            signal.signal(self._signum, self._on_signal)
            log.info(
                "requeue: %s deferred to the next batch boundary (checkpoint %s)",
                signal.Signals(self._signum).name,
                requeue_checkpoint(self.run_dir),
            )

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._in_fit:
            log.warning("requeue: got %s; checkpointing at the end of the current batch", signal.Signals(signum).name)
            self._pending = True
        else:  # before or after training: nothing new to save, requeue now and resume from what exists
            self._requeue(trainer=None)

    def _requeue(self, trainer: pl.Trainer | None) -> None:
        handler = self._submitit
        owner = handler.__self__
        rank = int(getattr(owner.env, "global_rank", 0))
        if rank == 0:
            # Same rule submitit applies inside the handler we call below (private attributes, submitit 1.5).
            timed_out = owner.has_timed_out()
            countdown = owner._delayed._timeout_countdown - int(timed_out)
            ckpt = requeue_checkpoint(self.run_dir)
            resume = str(ckpt) if trainer is not None else "the last checkpoint"
            if countdown < 0:
                raise RequeueLimitError(
                    f"the job timed out and its max_num_timeout requeues are used up; its state is saved in "
                    f"{resume}: resume it with ckpt_path={self.run_dir} (or raise hydra.launcher.timeout_min / "
                    f"hydra.launcher.max_num_timeout)"
                )
            rundir.update_status(
                self.run_dir,
                "requeued",
                reason="timeout" if timed_out else "preempted",
                checkpoint=resume,
                requeues_left=countdown,
                **wandb_run_ids(trainer),
            )
            try:
                handler(self._signum, None)  # dumps the resubmission, `scontrol requeue`, sys.exit(-1)
            except SystemExit:
                pass
        raise RequeueExit(-1)  # other ranks: the requeue ends the whole job; stop before the next collective

    # ---- batch boundary
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if ACTIVE is not None:
            ACTIVE.in_fit = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if ACTIVE is not None:
            ACTIVE.in_fit = False

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if ACTIVE is not None:
            ACTIVE.in_fit = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._in_fit = True
        if ACTIVE is not None:
            # Over Lightning's SIGTERM handler, which it registers after on_fit_start: it would raise
            # SIGTERMException (a SystemExit without a code: exit 0) at the next epoch end.
            ACTIVE.install()
        if self._restore_rng is not None:
            # After the loaders were iterated (they use their own generators): the RNG as it was at the save.
            _set_rng_states(self._restore_rng)
            self._restore_rng = None

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.state.fn == "fit":
            _fault("val", batch_idx)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        _fault("step", trainer.global_step)
        interrupted = ACTIVE is not None and ACTIVE.pending is not None
        if self._submitit is None and ACTIVE is None:
            return
        # All ranks must agree, or one would wait in save_checkpoint's barrier for the others.
        if trainer.strategy.reduce_boolean_decision(self._pending or interrupted, all=False):
            trainer.save_checkpoint(requeue_checkpoint(self.run_dir))
            if self._pending and self._submitit is not None:
                self._requeue(trainer)
            raise Interrupted(
                ACTIVE.pending if ACTIVE and ACTIVE.pending else signal.SIGTERM, requeue_checkpoint(self.run_dir)
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._in_fit = False
        if self._pending:  # the signal came during the final validation: requeue now, resume from last.ckpt
            self._requeue(trainer=None)
        if ACTIVE is not None and ACTIVE.pending is not None:  # likewise for Ctrl-C / SIGTERM
            raise Interrupted(ACTIVE.pending)

    # ---- what Lightning's checkpoint lacks
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # `processed` counts this epoch's batches whose step is done, whichever hook saves (batch or epoch end).
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        ranks = gather_rng_states(trainer.world_size)
        state = {"rng": ranks[0], "rng_ranks": ranks, "epoch": trainer.current_epoch, "batches_done": done}
        positions = getattr(trainer.datamodule, "train_positions", lambda done: None)(done)
        if positions is not None:  # a global order: where this epoch stands, whatever the world size
            state.update(positions=positions, world_size=trainer.world_size)
        checkpoint["lmlab_resume"] = state

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = checkpoint.get("lmlab_resume")
        if not state or trainer.state.fn != "fit":
            return
        # This rank's own states (rank 0's in a checkpoint from before they were gathered, or for a rank the saving
        # run did not have: a resume on more ranks).
        ranks = state.get("rng_ranks") or [state["rng"]]
        self._restore_rng = ranks[trainer.global_rank] if trainer.global_rank < len(ranks) else ranks[0]
        resume = getattr(trainer.datamodule, "resume_train_sampler", None)
        if resume is not None:
            extra = {"positions": state["positions"]} if "positions" in state else {}
            resume(state["epoch"], state["batches_done"], **extra)
