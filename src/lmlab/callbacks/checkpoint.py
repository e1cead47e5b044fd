"""ModelCheckpoint that keeps the best model across a resume into a new run dir, and the disk policy of checkpoints."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import ModelCheckpoint

from lmlab.config import check_checkpoint_policy, time_interval
from lmlab.rundir.files import CHECKPOINTS, LAST_CKPT

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
