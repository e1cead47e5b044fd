"""`hydra/sweeper=optuna` (conf/hydra/sweeper/optuna.yaml; used by hparams_search=optuna): lmlab's Optuna sweeper.

Optuna's ask-and-tell API drives Hydra jobs (the logic is in `lmlab.optuna_search`):

- `n_trials` is the study's total. Each round asks up to `n_jobs` trials (under a lock on the sweep dir, so
  workers that share the study never overshoot), launches their jobs through the configured launcher and
  tells the results. A second command on the same `hydra.sweep.dir` (a continuation, or a parallel worker)
  joins the same study; trial dirs are named by Optuna's trial number (`trial_<n>`), unique per study.
- A job that fails (or returns NaN / no value) is told FAIL and the search goes on; a job that its pruner
  stopped (status.json `pruned`) is told PRUNED.
- `seeds_per_trial=k` runs each suggested configuration on k seeds (`trial_<n>/seed=<s>`) and tells the mean.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from lmlab.config.arglists import quote

log = logging.getLogger("lmlab.sweep")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        storage: str | None = None,
        study_name: str = "lmlab",
        direction: str = "maximize",
        n_trials: int = 20,
        n_jobs: int = 1,
        seeds_per_trial: int = 1,
        sampler: Any = None,
        pruner: Any = None,
        params: Any = None,
    ) -> None:
        self.storage_spec = None if storage is None else str(storage)
        self.study_name = str(study_name)
        self.direction = str(direction)
        self.n_trials, self.n_jobs, self.seeds_per_trial = int(n_trials), int(n_jobs), int(seeds_per_trial)
        self.sampler_config = dict(_plain(sampler) or {})
        self.pruner_spec = _plain(pruner)
        self.params = dict(_plain(params) or {})
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    # ------------------------------------------------------------ checks before any trial

    def _fixed_config(self, fixed: list[str], searched: set[str]) -> dict[str, Any]:
        """The study's fixed configuration: the config composed with the non-searched overrides, without the
        searched keys (they differ per trial by design), plus how a trial is evaluated (its seeds)."""
        from lmlab import rundir

        assert self.hydra_context is not None and self.config is not None
        # result_config drops the hydra node before resolving, so no per-job Hydra state is needed here (a
        # `${hydra:...}` elsewhere resolves against the sweep's config, which Hydra has set).
        flat = rundir.result_config(self.hydra_context.config_loader.load_sweep_config(self.config, fixed))
        if self.seeds_per_trial > 1:
            searched = searched | {"seed"}
        out = {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in searched)}
        if self.seeds_per_trial > 1:
            out["hydra.sweeper.seeds_per_trial"] = self._seeds()  # the seeds every trial runs
        return out

    def _check(self, space: dict[str, Any]) -> None:
        from lmlab.errors import LmlabError
        from lmlab.launch import optuna_search

        if self.n_trials < 1 or self.n_jobs < 1 or self.seeds_per_trial < 1:
            raise LmlabError(
                f"hydra.sweeper.n_trials={self.n_trials}, n_jobs={self.n_jobs} and seeds_per_trial="
                f"{self.seeds_per_trial} must all be >= 1."
            )
        if not space:
            raise LmlabError(
                "the Optuna search has nothing to search: give hydra.sweeper.params or a sweep "
                "override such as 'optimizer.lr=tag(log, interval(1e-5, 1e-3))'."
            )
        pruning = optuna_search.pruner_config(self.pruner_spec) is not None
        if pruning and optuna_search.storage_kind(self.storage_spec) == "memory":
            raise LmlabError(
                "hydra.sweeper.pruner needs a storage the jobs can reach (they report each epoch to "
                "their trial through it): set hydra.sweeper.storage to a journal file or an RDB URL "
                "(the default is <sweep dir>/optuna.journal), not null."
            )
        if pruning and self.seeds_per_trial > 1:
            raise LmlabError(
                f"hydra.sweeper.pruner with seeds_per_trial={self.seeds_per_trial} is not supported: a "
                f"trial's {self.seeds_per_trial} seed runs would report the same epochs to one Optuna "
                f"trial. Use seeds_per_trial=1 with pruning, or pruner=none with several seeds."
            )
        if self.seeds_per_trial > 1 and "seed" in space:
            raise LmlabError("seed is searched and seeds_per_trial > 1 sets it too: use one of the two.")

    # ------------------------------------------------------------ the search

    def sweep(self, arguments: list[str]) -> None:
        from lmlab.errors import LmlabError

        try:
            self._sweep(arguments)
        except LmlabError as err:
            log.error("%s", err)
            sys.exit(1)

    def _sweep(self, arguments: list[str]) -> None:
        from lmlab.launch import optuna_search, sweep

        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        space, fixed = optuna_search.search_space([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        self._check(space)
        if self.seeds_per_trial > 1:  # each job gets its own seed=<s>; the command's seed is the first of them
            fixed = [f for f in fixed if f.split("=", 1)[0].lstrip("+~") != "seed"]
        # A continued study or a second worker must search over the same fixed config.
        sweep.check_fixed_config(
            sweep_dir, self._fixed_config(fixed, set(space)), f"The Optuna study {self.study_name!r}"
        )
        pruner = optuna_search.pruner_config(self.pruner_spec)
        if optuna_search.storage_kind(self.storage_spec) == "journal":  # jobs (other cwd, other node) read it too
            self.storage_spec = str(Path(str(self.storage_spec)).expanduser().absolute())
        # Under the workers' lock: RDBStorage creates the schema with `create_all`, which two workers starting at
        # once on a new SQLite file race on ("table study_directions already exists"), and create_study too.
        with sweep.locked(sweep_dir, sweep.OPTUNA_LOCK):
            study = optuna_search.open_study(
                optuna_search.open_storage(self.storage_spec),
                self.study_name,
                self.direction,
                optuna_search.sampler_for(self.sampler_config, None),
                optuna_search.build(pruner),
            )
        existing = len(study.get_trials(deepcopy=False))
        if existing:
            log.info(
                "continuing Optuna study %r (%d trials so far) in %s; n_trials=%d is the study's total",
                self.study_name,
                existing,
                self.storage_spec,
                self.n_trials,
            )
        worker = optuna_search.worker_id()
        sweep.register_invocation(sweep_dir, [], set(), worker=worker, optuna_study=self.study_name)
        launched = 0
        while True:
            with sweep.locked(sweep_dir, sweep.OPTUNA_LOCK):
                optuna_search.fail_stale(study, sweep_dir)
                todo = min(self.n_jobs, self.n_trials - len(study.get_trials(deepcopy=False)))
                batch = [self._ask(study, space, sweep_dir, pruner, worker) for _ in range(max(todo, 0))]
            if not batch:
                break
            jobs = [
                (trial, seed, [*fixed, *overrides, *hydra]) for trial, runs in batch for seed, overrides, hydra in runs
            ]
            sweep.add_launched(
                sweep_dir,
                worker,
                [str(self._job_dir(sweep_dir, t.number, s).relative_to(sweep_dir)) for t, s, _ in jobs],
            )
            returns = self.launcher.launch([ov for _, _, ov in jobs], initial_job_idx=launched)
            launched += len(jobs)
            for trial, _runs in batch:
                mine = [(s, r) for (t, s, _), r in zip(jobs, returns) if t.number == trial.number]
                self._tell(study, trial, mine, sweep_dir)
        data = optuna_search.write_results(
            sweep_dir, study, {"storage": self.storage_spec, "seeds_per_trial": self.seeds_per_trial}
        )
        log.info(
            "Optuna study %r: %s; best value %s (trial %s) %s",
            self.study_name,
            data["states"],
            data["best_value"],
            data["best_trial"],
            data["best_params"],
        )

    def _seeds(self) -> list[int | None]:
        if self.seeds_per_trial == 1:
            return [None]
        base = int(OmegaConf.select(self.config, "seed", default=0) or 0)
        return [base + i for i in range(self.seeds_per_trial)]

    @staticmethod
    def _job_dir(sweep_dir: Path, number: int, seed: int | None) -> Path:
        return sweep_dir / f"trial_{number}" / ("" if seed is None else f"seed={seed}")

    def _ask(
        self, study: Any, space: dict[str, Any], sweep_dir: Path, pruner: dict[str, Any] | None, worker: dict[str, Any]
    ) -> tuple[Any, list[tuple[int | None, list[str], list[str]]]]:
        """A new trial and its jobs (seed, overrides, hydra overrides)."""
        from lmlab.launch import optuna_search

        trial = study.ask()
        trial.set_user_attr(optuna_search.WORKER_ATTR, worker)
        # Its own seed: the same trial number draws the same point whatever ran before or beside it.
        study.sampler = optuna_search.sampler_for(self.sampler_config, trial.number)
        overrides = optuna_search.suggest(trial, space)
        info = {
            "study_name": self.study_name,
            "storage": self.storage_spec,
            "trial_id": trial._trial_id,
            "number": trial.number,
            "params": trial.params,
            "pruner": pruner,
            "worker": worker,
        }
        trial_file = optuna_search.write_trial_file(sweep_dir / f"trial_{trial.number}", info)
        runs = []
        for seed in self._seeds():
            subdir = str(self._job_dir(sweep_dir, trial.number, seed).relative_to(sweep_dir))
            hydra = [f"hydra.sweep.subdir={quote(subdir)}"]
            if pruner is not None:
                hydra.append(f"++hydra.job.env_set.{optuna_search.TRIAL_ENV}={quote(str(trial_file))}")
            runs.append((seed, overrides + ([] if seed is None else [f"seed={seed}"]), hydra))
        log.info("trial %d: %s", trial.number, " ".join(overrides))
        return trial, runs

    def _tell(self, study: Any, trial: Any, returns: Sequence[tuple[int | None, JobReturn]], sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        from lmlab import rundir
        from lmlab.launch import optuna_search

        by_seed: dict[str, Any] = {}
        errors, pruned = [], False
        for seed, ret in returns:
            status = rundir.read_status(self._job_dir(sweep_dir, trial.number, seed)) or {}
            if status.get("status") == "pruned":
                pruned = True
            elif ret.status != JobStatus.COMPLETED:
                err = ret._return_value
                errors.append(status.get("error") or f"{type(err).__name__}: {err}")
            elif ret.return_value is None:
                errors.append("the job returned no value (optimized_metric missing or NaN)")
            else:
                by_seed[str(seed)] = ret.return_value
        values = list(by_seed.values())
        if self.seeds_per_trial > 1:
            trial.set_user_attr("seed_values", by_seed)
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
            log.info("trial %d pruned", trial.number)
            return
        value = None if errors else optuna_search.objective(values)
        if value is None:
            trial.set_user_attr("error", "; ".join(errors)[:2000])
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed (recorded as FAIL; the search goes on): %s", trial.number, "; ".join(errors))
            return
        study.tell(trial, value)
        log.info("trial %d: %s", trial.number, value if len(values) == 1 else f"{value} (mean of {values})")
