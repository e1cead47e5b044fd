"""ModelCheckpoint that keeps the best model across a resume into a new run dir, the disk policy of checkpoints, and
the complete checkpoints decay branches start from (`callbacks.branch_checkpoints`)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from lmlab.callbacks.eval_schedule import EvalSchedule
from lmlab.config import check_checkpoint_policy, time_interval, token_counts
from lmlab.errors import LmlabError
from lmlab.rundir import manifest
from lmlab.rundir.files import BRANCH_CKPT, CHECKPOINTS, LAST_CKPT

log = logging.getLogger("lmlab.checkpoint")


@contextlib.contextmanager
def without_optimizer_state(trainer: Any) -> Iterator[None]:
    """Checkpoints saved inside hold the weights, loops and callback states, but no optimizer or scheduler state.

    Not Lightning's save_weights_only: it also skips the callbacks' on_save_checkpoint, which store the run's
    identity (RunInfo) that eval and resume read. The full dict, minus the optimizer and scheduler states."""
    connector = trainer._checkpoint_connector
    dump = connector.dump_checkpoint

    def without_optimizer(weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = dump(weights_only=False)
        checkpoint.pop("optimizer_states", None)
        checkpoint.pop("lr_schedulers", None)
        return checkpoint

    connector.dump_checkpoint = without_optimizer
    try:
        yield
    finally:
        del connector.dump_checkpoint  # the class's method again


def scored_checkpoint(
    trainer: Any, run_dir: Path, score: str, policy: str, best_path: str | None, best: dict[str, Any]
) -> tuple[str | None, dict[str, Any]]:
    """The checkpoint train.py evaluates on val and test, by `task.score`. best_val: the monitored best (as
    `rundir.after_fit` found it). final: the weights at the end of the budget, written to last.ckpt now (the
    fit loop validated there; with checkpoint_policy=compact without optimizer state), so eval.py ckpt_path=<run
    dir> reads the same weights. Every rank calls this (a distributed save is collective)."""
    import torch

    if score == "final":
        path = Path(run_dir) / CHECKPOINTS / LAST_CKPT
        with without_optimizer_state(trainer) if policy == "compact" else contextlib.nullcontext():
            trainer.save_checkpoint(path)
        best = {
            **best,
            "best/epoch": max(trainer.current_epoch - 1, 0),
            "best/ckpt_path": os.path.relpath(path, run_dir),
        }
        return str(path), {**best, "best/step": trainer.global_step}
    step = None
    if best_path:
        step = torch.load(best_path, map_location="cpu", mmap=True, weights_only=False).get("global_step")
    return best_path, {**best, "best/step": step if best_path else trainer.global_step}


class ResumableCheckpoint(ModelCheckpoint):
    """`policy=compact` (the default, `checkpoint_policy`): a checkpoint on a monitor (the best) holds no optimizer
    or scheduler state (2/3 of an AdamW checkpoint): resuming reads `last.ckpt` / `resume.ckpt`, which keep it.
    `policy=keep`: every checkpoint is complete.

    Lightning forgets the best score and top-k when a run resumes into another dir ("dirpath has changed ...
    best_model_score won't be reloaded"), so the resumed run would call its first new checkpoint the best. Here the
    earlier run's top-k checkpoints are copied into the new dir and the state is reloaded as if it had been
    written there: the new run dir is complete on its own (eval.py ckpt_path=<new dir> finds its best).

    `every_n_train_steps` / `train_time_interval` ("HH:MM:SS", "DD:HH:MM:SS" or minutes) on a checkpoint without a
    monitor (`last.ckpt`) save it that often *as well as* at every epoch end (Lightning's ModelCheckpoint would stop
    the epoch-end saves): a long epoch killed mid-way loses at most that much."""

    def __init__(
        self,
        *args: Any,
        policy: str = "keep",
        every_n_train_steps: int | None = None,
        train_time_interval: Any = None,
        **kwargs: Any,
    ) -> None:
        check_checkpoint_policy(policy)
        interval = time_interval(train_time_interval, "train_time_interval")
        super().__init__(*args, **kwargs)
        # Set after ModelCheckpoint's check that its three triggers exclude each other: here they add up (steps
        # and/or time, and the epoch trigger it chose). A step saved twice over is saved once (it skips a step
        # it has saved).
        self._every_n_train_steps = int(every_n_train_steps or 0)
        self._train_time_interval = interval
        self.policy = policy

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        if self.policy == "keep" or self.monitor is None:
            return super()._save_checkpoint(trainer, filepath)
        with without_optimizer_state(trainer):
            super()._save_checkpoint(trainer, filepath)

    def _save_topk_checkpoint(self, trainer: Any, monitor_candidates: dict[str, Any]) -> None:
        # A run that trainer.max_steps (or limit_val_batches=0) ends before its first validation reaches the epoch
        # end without the monitored key. Lightning then warns "could not find the monitored key ... Did you call
        # log(...)?", which is wrong here: the task logs it at every validation, none ran. Lightning saves nothing in
        # that case either; say what happens instead (train evaluates the final weights).
        if (
            self.monitor is not None
            and self.monitor not in monitor_candidates
            and not trainer.fit_loop.epoch_loop.val_loop._has_run
        ):
            if not getattr(self, "_said_no_validation", False):
                self._said_no_validation = True
                log.info(
                    "no validation ran before step %d (trainer.max_steps=%s, limit_val_batches=%s): no %s to keep a "
                    "best checkpoint by; the final weights are evaluated",
                    trainer.global_step,
                    trainer.max_steps,
                    trainer.limit_val_batches,
                    self.monitor,
                )
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old is None or self.dirpath is None or Path(old) == Path(self.dirpath):
            return super().load_state_dict(state_dict)
        if self.monitor is None:  # last.ckpt: nothing to keep, it is rewritten at the next epoch end
            return super().load_state_dict(
                {
                    **state_dict,
                    "dirpath": str(self.dirpath),
                    "best_model_path": "",
                    "best_k_models": {},
                    "kth_best_model_path": "",
                    "last_model_path": "",
                }
            )
        new_dir = Path(self.dirpath)
        new_dir.mkdir(parents=True, exist_ok=True)

        def moved(path: str | None) -> str | None:
            if not path or not Path(path).is_file():
                return path if not path else None
            target = new_dir / Path(path).name
            if not target.exists():
                shutil.copy2(path, target)
            return str(target)

        state = dict(state_dict, dirpath=str(self.dirpath))
        kept = {moved(p): v for p, v in (state_dict.get("best_k_models") or {}).items()}
        state["best_k_models"] = {p: v for p, v in kept.items() if p is not None}
        for key in ("best_model_path", "kth_best_model_path"):
            state[key] = moved(state_dict.get(key)) or ""
        state["last_model_path"] = ""
        if state["best_model_path"]:
            log.info(
                "resumed into %s: kept the earlier best checkpoint (%s = %s), copied from %s",
                new_dir,
                self.monitor,
                state_dict.get("best_model_score"),
                old,
            )
        super().load_state_dict(state)


class BranchCheckpoints(pl.Callback):
    """`callbacks.branch_checkpoints.at_tokens: [N, ...]`: a complete checkpoint (weights, optimizer and scheduler
    state, loops, sampler position, RNG: what an exact resume needs) when the run's training tokens first reach
    each N, as `checkpoints/branch-tokens<N>.ckpt`, kept whatever `checkpoint_policy` says. Decay branches start
    from them (experiment=wsd_branches, docs/experiments.md "Decay branches").

    Tokens count as `task.max_tokens` counts them (EvalSchedule: real tokens per optimizer step x steps), so the
    checkpoint of N is saved after optimizer step ceil(N / tokens per step). Refused before the first step: a count
    past the run's budget (never reached) or one whose step is not in the stable phase of the lr schedule (in the
    warmup or the decay: a branch must start from the stable lr). Each save is listed in manifest.json
    `branch_checkpoints` (N, step, tokens trained by then, the lr, the file)."""

    def __init__(self, dirpath: str | Path, at_tokens: Any = None) -> None:
        self.dirpath = Path(dirpath)
        self.at_tokens = token_counts(at_tokens, "callbacks.branch_checkpoints.at_tokens")
        self.steps: dict[int, list[int]] = {}  # optimizer step -> the token counts saved after it
        self._saved: set[int] = set()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here: the budget has become max_steps (EvalSchedule.setup) and the lr scheduler exists.
        if not self.at_tokens:
            return
        key = "callbacks.branch_checkpoints.at_tokens"
        per_step = EvalSchedule.find(trainer).tokens_per_step
        if per_step is None:
            raise LmlabError(
                f"{key}={self.at_tokens}: this task does not count training tokens per optimizer step; branch "
                f"checkpoints need a task that does (task=causal_lm)."
            )
        self.steps = {}
        for tokens in self.at_tokens:
            self.steps.setdefault(math.ceil(tokens / per_step), []).append(tokens)
        last = max(self.steps)
        if 0 < trainer.max_steps < last:
            raise LmlabError(
                f"{key}={self.at_tokens}: {max(self.at_tokens)} tokens is optimizer step {last} ({per_step:g} tokens "
                f"per step), past this run's budget of {trainer.max_steps} steps ({trainer.max_steps * per_step:g} "
                f"tokens): that checkpoint would never be written. Give counts up to the budget, or raise "
                f"task.max_tokens."
            )
        factors = {step: _lr_factors(trainer, step) for step in self.steps}
        off = {step: f for step, f in factors.items() if any(x != 1.0 for x in f)}
        if off:
            step, f = min(off.items())
            raise LmlabError(
                f"{key}: {self.steps[step][0]} tokens is optimizer step {step}, where the lr schedule is at "
                f"{min(f):g} x optimizer.lr (in its warmup or decay, not the stable phase): a decay branch starts "
                f"from the stable lr. Branch after the warmup (scheduler.warmup) and before any decay "
                f"(scheduler=wsd scheduler.decay_steps=0: no decay in this run)."
            )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step not in self.steps or step in self._saved or trainer.fit_loop.epoch_loop._should_accumulate():
            return
        self._saved.add(step)  # once per step, also when several counts share it or a resume passes it again
        tokens_trained = EvalSchedule.find(trainer).tokens_trained()
        lrs = [float(g["lr"]) for g in trainer.optimizers[0].param_groups] if trainer.optimizers else []
        for tokens in self.steps[step]:
            path = self.dirpath / BRANCH_CKPT.format(tokens=tokens)
            trainer.save_checkpoint(path)  # every rank: a distributed save is collective
            if trainer.is_global_zero:
                run_dir = self.dirpath.parent
                entry = {
                    "tokens": tokens,
                    "step": step,
                    "tokens_trained": tokens_trained,
                    "lr": lrs,
                    "path": os.path.relpath(path, run_dir),
                }
                manifest.record_branch_checkpoint(run_dir, entry)
                log.info("branch checkpoint at %d tokens (step %d, %.0f tokens trained): %s", tokens, step,
                         tokens_trained, path)  # fmt: skip


def _lr_factors(trainer: pl.Trainer, step: int) -> list[float]:
    """The lr multipliers the run's step-wise schedule gives the step after optimizer step `step` (what a branch
    from there starts with); [] without one (a constant lr, or a schedule that is not a LambdaLR)."""
    import torch

    out: list[float] = []
    for config in trainer.lr_scheduler_configs:
        if isinstance(config.scheduler, torch.optim.lr_scheduler.LambdaLR):
            out.extend(float(f(step)) for f in config.scheduler.lr_lambdas)
    return out
