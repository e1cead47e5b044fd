"""Optuna pruning inside a trial's job: report the task's validation monitor each epoch, stop when pruned.

optuna-integration's PyTorchLightningPruningCallback subclasses `lightning.pytorch` (lmlab uses
`pytorch_lightning`) and needs the live trial object, which a Hydra job (possibly on another node) does not
have. So the sweeper writes the trial's storage, study and id into `<trial dir>/optuna_trial.json` and names
that file in LMLAB_OPTUNA_TRIAL (hydra.job.env_set, set only when hydra.sweeper.pruner is on); this callback
opens the trial through the study's storage and reports to it. A pruned job raises optuna.TrialPruned, which
`lmlab.launch.job.run_task` records as status.json `pruned`; the sweeper then tells Optuna PRUNED.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from lmlab.errors import LmlabError

log = logging.getLogger("lmlab.sweep")


class OptunaPruning(pl.Callback):
    """Reports `monitor` after each validation (step = epoch) and raises TrialPruned when the pruner says so."""

    def __init__(self, trial_file: str | Path, monitor: str) -> None:
        self.trial_file = Path(trial_file)
        self.monitor = monitor
        self._trial: Any = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:  # one process talks to the storage; the decision is broadcast
            from lmlab.launch.optuna_search import load_trial

            self._trial, info = load_trial(self.trial_file)
            log.info(
                "Optuna trial %d: reporting %s each epoch to the %s pruner",
                info["number"],
                self.monitor,
                (info.get("pruner") or {}).get("_target_", "?").rsplit(".", 1)[-1],
            )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":  # not the final validate() of the best weights
            return
        epoch, prune, value = trainer.current_epoch, False, math.nan
        if trainer.is_global_zero:
            metric = trainer.callback_metrics.get(self.monitor)
            if metric is None:
                raise LmlabError(
                    f"pruning needs the task's monitor {self.monitor!r} after each validation, but it "
                    f"was not logged (logged: {sorted(trainer.callback_metrics)})."
                )
            value = float(metric)
            # A NaN report would be ignored by the pruner; NonFiniteLoss / check_finite fail such runs anyway.
            if math.isfinite(value):
                self._trial.report(value, step=epoch)
                prune = bool(self._trial.should_prune())
        if trainer.strategy.broadcast(prune):
            import optuna

            raise optuna.TrialPruned(f"pruned by Optuna at epoch {epoch}: {self.monitor}={value:.4f}")


def optuna_pruning(monitor: str) -> list[pl.Callback]:
    """The pruning callback when this job is an Optuna trial with pruning on (LMLAB_OPTUNA_TRIAL set), else []."""
    from lmlab.launch.optuna_search import TRIAL_ENV

    trial_file = os.environ.get(TRIAL_ENV)
    return [OptunaPruning(trial_file, monitor)] if trial_file else []
