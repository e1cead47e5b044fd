"""What a run reports is the end of its budget, stated: the budget in steps, the evaluation schedule, curves.csv.

- **Budget.** `task.max_tokens` or `task.max_flops` (a task that knows its tokens per example sets them with
  `set_budget`) becomes `trainer.max_steps`, epochs unlimited. Tokens per optimizer step = mean real tokens of a
  training example x the global batch; model FLOPs per token = `flops_per_token` (6N + 12·L·d·T, the formula
  `perf/*` MFU uses and benchmarks/gpu_check.py checks against torch.utils.flop_counter) with T = the mean training
  example length. A budget smaller than one optimizer step is refused.
- **Schedule.** `task.eval_every_tokens` becomes `trainer.val_check_interval` in batches (counted across epochs,
  `check_val_every_n_epoch=None`).
- **A final evaluation at the end of the budget.** Lightning validates at epoch ends or every val_check_interval
  batches, never at `max_steps`: a run of max_steps=200 whose epoch ends at 168 would never evaluate (nor keep a
  checkpoint of) its last 32 steps. Here the fit loop also validates after the last optimizer step when no
  validation ran at that step, so the best checkpoint's candidates and curves.csv always end at the budget.
- **curves.csv** (rank 0): one row per validation during fit: step, tokens (real training tokens, summed over
  ranks), model FLOPs (tokens x FLOPs per token) and every `val/*` metric. A resumed run drops the rows after the
  step it resumed from (the killed attempt's), so each step appears once.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from lmlab.callbacks.throughput import flops_per_token, matmul_params
from lmlab.errors import LmlabError
from lmlab.rundir.files import CURVES, write_text

log = logging.getLogger("lmlab.budget")

FIXED = ("step", "tokens", "flops")


class EvalSchedule(pl.Callback):
    """Budget -> max_steps, eval_every_tokens -> val_check_interval, a validation at the budget's end, curves.csv.
    train.py attaches one to every run; `find` gives it to the task's `configure_trainer`."""

    @staticmethod
    def find(trainer: pl.Trainer) -> EvalSchedule:
        return next(c for c in trainer.callbacks if isinstance(c, EvalSchedule))

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.global_batch = 1
        self.max_tokens: int | None = None
        self.max_flops: float | None = None
        self.eval_every_tokens: int | None = None
        self.tokens_per_example: float | None = None
        self.tokens = 0.0  # real training tokens over all ranks up to the last validation (resumed from state)
        self._local: Any = 0  # this rank's tokens since then: a device tensor, summed without a sync per step
        self.seq_len: float | None = None
        self.flops_per_token: float | None = None
        self.last_val_step = -1
        self.info: dict[str, Any] = {}
        self.world_size = 1

    def set_budget(
        self,
        tokens_per_example: float,
        global_batch: int,
        max_tokens: int | None = None,
        max_flops: float | None = None,
        eval_every_tokens: int | None = None,
    ) -> None:
        """Called by the task before fit (it knows its tokens per training example)."""
        if max_tokens is not None and max_flops is not None:
            raise LmlabError(
                f"task.max_tokens={max_tokens} and task.max_flops={max_flops} are both set: a run has one budget. "
                f"Set one of them to null."
            )
        self.tokens_per_example, self.global_batch = float(tokens_per_example), int(global_batch)
        self.max_tokens, self.max_flops, self.eval_every_tokens = max_tokens, max_flops, eval_every_tokens

    @property
    def tokens_per_step(self) -> float | None:
        return None if self.tokens_per_example is None else self.tokens_per_example * self.global_batch

    # ---- before fit: the budget and the schedule (setup runs before configure_optimizers reads max_steps)
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.world_size = trainer.world_size
        config = getattr(getattr(pl_module, "backbone", pl_module), "config", None)
        if config is not None and self.tokens_per_example is not None:
            self.seq_len = self.tokens_per_example
            self.flops_per_token = flops_per_token(config, matmul_params(pl_module), self.seq_len)
        per_step = self.tokens_per_step
        if per_step is not None:
            self._apply_budget(trainer, per_step)
            if self.eval_every_tokens is not None:
                every = max(1, round(int(self.eval_every_tokens) / per_step))
                trainer.val_check_interval = every * trainer.accumulate_grad_batches  # Lightning counts batches
                trainer.check_val_every_n_epoch = None  # ...across epoch ends
                self.info["budget/eval_every_steps"] = every
                log.info(
                    "task.eval_every_tokens=%d -> a validation every %d optimizer steps (%.0f tokens)",
                    int(self.eval_every_tokens),
                    every,
                    every * per_step,
                )
        self._validate_at_the_end(trainer)

    def _apply_budget(self, trainer: pl.Trainer, per_step: float) -> None:
        self.info.update({"budget/tokens_per_step": per_step, "budget/flops_per_token": self.flops_per_token})
        if self.max_tokens is not None:
            budget, name, unit = float(self.max_tokens), "task.max_tokens", per_step
        elif self.max_flops is not None:
            if not self.flops_per_token:
                raise LmlabError(
                    f"task.max_flops={self.max_flops}: this model has no config to count FLOPs from "
                    f"(num_hidden_layers, hidden_size); budget it in tokens (task.max_tokens) instead."
                )
            budget, name, unit = float(self.max_flops), "task.max_flops", per_step * self.flops_per_token
        else:
            return
        if budget < unit:
            raise LmlabError(
                f"{name}={budget:g} is smaller than one optimizer step ({unit:g}: {self.global_batch} examples of "
                f"{self.tokens_per_example:.0f} tokens"
                + (f" x {self.flops_per_token:.4g} FLOPs per token" if name == "task.max_flops" else "")
                + f"). Raise {name} to at least {unit:g}, or lower dataset.batch_size."
            )
        steps = math.ceil(budget / unit)
        trainer.fit_loop.epoch_loop.max_steps = steps
        trainer.fit_loop.max_epochs = -1
        self.info.update({"budget/" + name.split(".")[1]: budget, "budget/max_steps": steps})
        log.info("%s=%g -> trainer.max_steps=%d (%.0f tokens per optimizer step)", name, budget, steps, per_step)

    def _validate_at_the_end(self, trainer: pl.Trainer) -> None:
        """Make the fit loop validate after its last optimizer step (see the module docstring). Lightning has no
        hook for this decision, so the epoch loop's own `_should_check_val_fx` is wrapped on this trainer."""
        loop = trainer.fit_loop.epoch_loop
        original = loop._should_check_val_fx

        def should_check_val(data_fetcher: Any) -> bool:
            if original(data_fetcher):
                return True
            if not trainer.enable_validation or loop._should_accumulate():
                return False
            at_max_steps = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
            last_epoch = trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
            at_end = at_max_steps or (loop.batch_progress.is_last_batch and last_epoch)
            return at_end and self.last_val_step != trainer.global_step

        loop._should_check_val_fx = should_check_val  # type: ignore[method-assign]

    # ---- during fit
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._local = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here, not at fit start: Lightning restores the loops (global_step) of a resumed run after on_fit_start.
        path = self.run_dir / CURVES
        if trainer.is_global_zero and path.is_file():  # a resumed attempt: drop what the killed one wrote later
            with path.open() as f:
                rows = list(csv.DictReader(f))
            kept = [r for r in rows if int(r["step"]) <= trainer.global_step]
            if len(kept) != len(rows):
                self._write(path, kept, list(rows[0].keys()) if rows else list(FIXED))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        if mask is not None:
            self._local = self._local + mask.sum()
            if self.seq_len is None or self.flops_per_token is None:  # no budget: FLOPs at the padded length seen
                self.seq_len = float(mask.shape[-1])

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        local = torch.as_tensor(self._local, dtype=torch.float64, device=pl_module.device)
        self.tokens += float(trainer.strategy.reduce(local, reduce_op="sum"))
        self._local = 0
        self.last_val_step = trainer.global_step
        if not trainer.is_global_zero:
            return
        fpt = self._flops_per_token(pl_module)
        metrics = {
            k: float(v)
            for k, v in sorted(trainer.callback_metrics.items())
            if k.startswith("val/") and not k.endswith("_bar") and v.numel() == 1
        }
        row = {"step": trainer.global_step, "tokens": int(self.tokens), "flops": self.tokens * fpt if fpt else ""}
        row.update({k: repr(v) for k, v in metrics.items()})
        path = self.run_dir / CURVES
        rows, fields = [], [*FIXED, *metrics]
        if path.is_file():
            with path.open() as f:
                reader = csv.DictReader(f)
                rows = [r for r in reader if int(r["step"]) < trainer.global_step]
                fields = list(dict.fromkeys([*(reader.fieldnames or []), *fields]))
        self._write(path, [*rows, row], fields)

    def _flops_per_token(self, pl_module: pl.LightningModule) -> float | None:
        if self.flops_per_token is None and self.seq_len is not None:
            config = getattr(getattr(pl_module, "backbone", pl_module), "config", None)
            if config is not None:
                self.flops_per_token = flops_per_token(config, matmul_params(pl_module), self.seq_len)
        return self.flops_per_token

    @staticmethod
    def _write(path: Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
        lines: list[str] = []

        class _Sink:
            def write(self, text: str) -> None:
                lines.append(text)

        writer = csv.DictWriter(_Sink(), fieldnames=fields, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(path, "".join(lines))

    def tokens_trained(self) -> float:
        """Real training tokens so far, all ranks. Those since the last validation are this rank's count x the world
        size: exact on one device and for packed LM blocks (ranks see equal batches), without a collective here
        (a checkpoint save, or the end of fit, whose process group may be torn down already)."""
        return self.tokens + float(self._local) * self.world_size

    # ---- resume: the token count travels with the checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens_trained(), "last_val_step": self.last_val_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tokens = float(state_dict.get("tokens", 0.0))
        self.last_val_step = int(state_dict.get("last_val_step", -1))

    # ---- for metrics.json
    def summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """budget/* (what the budget became), the tokens and model FLOPs trained, the final step."""
        tokens = self.tokens_trained()  # those after the last validation: none unless validation is off
        fpt = self._flops_per_token(pl_module)
        return {
            **self.info,
            "budget/steps_trained": trainer.global_step,
            "budget/tokens_trained": tokens,
            "perf/model_flops": tokens * fpt if fpt else None,
        }
