"""lmlab's Optuna search (`hparams_search=optuna`): Optuna's ask-and-tell API over Hydra jobs.

The Hydra side (hydra_plugins.lmlab_plugins.optuna_sweeper) asks for trials, launches them as jobs and tells
the results; this module holds what does not depend on Hydra's plugin classes:

- the search space from Hydra's sweep syntax (`tag(log, interval(1e-5, 1e-3))`, `choice(...)`, `range(...)`),
  mapped to Optuna distributions the way hydra-optuna-sweeper did;
- the storage: an RDB URL (`sqlite:///...`, `postgresql://...`) or a journal file (any other value, the
  default `<sweep dir>/optuna.journal`), shared by every worker started on the same sweep dir;
- the per-trial sampler seed (reproducible per trial number, different across workers);
- which RUNNING trials were left behind by a worker that is gone (recorded as FAIL);
- the file a pruned job reads to reach its trial (`optuna_trial.json`, named by LMLAB_OPTUNA_TRIAL).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmlab import rundir
from lmlab.errors import LmlabError

log = logging.getLogger("lmlab.sweep")

TRIAL_FILE = "optuna_trial.json"
TRIAL_ENV = "LMLAB_OPTUNA_TRIAL"  # path of the trial file; set for a job only when pruning is on
RESULTS = "optimization_results.yaml"
WORKER_ATTR = "lmlab_worker"
PRUNERS = {  # shorthands for hydra.sweeper.pruner; a dict with _target_ selects any other Optuna pruner
    "median": "optuna.pruners.MedianPruner",
    "hyperband": "optuna.pruners.HyperbandPruner",
    "successive_halving": "optuna.pruners.SuccessiveHalvingPruner",
}


# ---------------------------------------------------------------- search space


def search_space(overrides: Sequence[str]) -> tuple[dict[str, tuple[str, Any]], list[str]]:
    """Split sweep overrides into the searched keys (key -> (override key as written, Optuna distribution)) and
    the fixed overrides every trial gets. A later override of a key wins (the command line over `params:`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    space: dict[str, tuple[str, Any]] = {}
    fixed: dict[str, str] = {}
    for override in parsed:
        key = override.key_or_group
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = (override.get_key_element(), distribution(override))
        else:
            fixed[key] = str(override.input_line)
    return space, list(fixed.values())


def distribution(override: Any) -> Any:
    """An Optuna distribution for one sweep override, as hydra-optuna-sweeper mapped them: choice ->
    categorical; range(start, stop, step) -> int/float with that step (both ends included, Optuna's way);
    interval -> int/float, log scale with tag(log, ...)."""
    import optuna.distributions as d
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep, Transformer

    value = override.value()
    where = f"{override.input_line!r}"
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        bad = [c for c in choices if not isinstance(c, (str, int, float, bool, type(None)))]
        if bad:
            raise LmlabError(f"{where}: Optuna can only choose among str/int/float/bool/null values, not {bad}.")
        return d.CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        if any(isinstance(x, float) for x in (value.start, value.stop, value.step)):
            return d.FloatDistribution(float(value.start), float(value.stop), step=float(value.step))
        return d.IntDistribution(int(value.start), int(value.stop), step=int(value.step))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return d.IntDistribution(value.start, value.end, log=log_scale)
        return d.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise LmlabError(
        f"{where}: the Optuna search understands choice(...), range(...), interval(...) and "
        f"tag(log, interval(...)), not this sweep (glob?)."
    )


def suggest(trial: Any, space: Mapping[str, tuple[str, Any]]) -> list[str]:
    """Draw every searched key for `trial`; returns the job overrides (`key=value`)."""
    import optuna.distributions as d
    from hydra.core.override_parser.types import Override

    overrides = []
    for name, (key, dist) in space.items():
        if isinstance(dist, d.CategoricalDistribution):
            value = trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, d.IntDistribution):
            value = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            value = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
        overrides.append(f"{key}={Override._get_value_element_as_str(value)}")
    return overrides


# ---------------------------------------------------------------- storage, sampler, pruner, study


def storage_kind(spec: str | None) -> str:
    """`memory` (null), `rdb` (a SQLAlchemy URL) or `journal` (a file path)."""
    if spec is None or str(spec).strip() in ("", "memory", "null"):
        return "memory"
    return "rdb" if "://" in str(spec) else "journal"


def open_storage(spec: str | None) -> Any:
    """The Optuna storage for `hydra.sweeper.storage` (None = in memory)."""
    import optuna

    kind = storage_kind(spec)
    if kind == "memory":
        return None
    if kind == "rdb":
        url = str(spec)
        if url.startswith("sqlite:///"):
            # SQLite cannot create a missing folder; and a second worker waits for the lock instead of
            # failing at once with "database is locked".
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        return optuna.storages.RDBStorage(url)
    from optuna.storages.journal import JournalFileBackend

    path = Path(str(spec)).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def pruner_config(pruner: Any) -> dict[str, Any] | None:
    """hydra.sweeper.pruner as an instantiable dict: null/none -> None, a shorthand (median, hyperband,
    successive_halving) or a dict with `_target_`."""
    if pruner is None or (isinstance(pruner, str) and pruner.lower() in ("", "none", "null")):
        return None
    if isinstance(pruner, str):
        if pruner not in PRUNERS:
            raise LmlabError(
                f"hydra.sweeper.pruner={pruner!r} is not known: use one of {sorted(PRUNERS)}, none, or "
                f"a dict with _target_ (e.g. {{_target_: optuna.pruners.PercentilePruner, "
                f"percentile: 25.0}})."
            )
        return {"_target_": PRUNERS[pruner]}
    config = dict(pruner)
    if "_target_" not in config:
        raise LmlabError(
            f"hydra.sweeper.pruner={config} needs a _target_ (an optuna.pruners class) or a "
            f"shorthand: {sorted(PRUNERS)}."
        )
    return config


def build(config: Mapping[str, Any] | None, **overrides: Any) -> Any:
    from hydra.utils import instantiate

    return None if config is None else instantiate({**config, **overrides})


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial `number`: reproducible per trial, different for every trial (two workers with
    the same hydra.sweeper.sampler.seed would otherwise draw the same start-up points)."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(number)]).generate_state(1)[0])


def sampler_for(config: Mapping[str, Any], number: int | None) -> Any:
    """The sampler (default TPE) from hydra.sweeper.sampler, its `seed` replaced by the trial's own."""
    config = {"_target_": "optuna.samplers.TPESampler", **dict(config or {})}
    if config.get("seed") is not None and number is not None:
        config["seed"] = trial_seed(config["seed"], number)
    return build(config)


def open_study(storage: Any, study_name: str, direction: str, sampler: Any, pruner: Any) -> Any:
    """Create the study or load it (a continuation, or another worker); a direction that differs is refused."""
    import optuna

    study = optuna.create_study(
        storage=storage, study_name=study_name, direction=direction, sampler=sampler, pruner=pruner, load_if_exists=True
    )
    if study.direction.name.lower() != direction:
        raise LmlabError(
            f"the Optuna study {study_name!r} was created to {study.direction.name.lower()} and this "
            f"command asks to {direction} (another task or task.mode?): use a new hydra.sweep.dir."
        )
    return study


def counts(study: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        out[trial.state.name] = out.get(trial.state.name, 0) + 1
    return out


# ---------------------------------------------------------------- workers


def worker_id() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _trial_dirs(sweep_dir: Path, number: int) -> list[Path]:
    base = Path(sweep_dir) / f"trial_{number}"
    return [p.parent for p in base.glob("**/" + rundir.STATUS)] or [base]


def worker_gone(trial: Any, sweep_dir: Path) -> bool:
    """A RUNNING trial whose worker is gone: a dead pid on this host, or (another host) every job of the trial
    dead by its status.json heartbeat. A trial of another host that never got to write a status.json can't be
    told apart from a live one; it stays RUNNING."""
    worker = trial.user_attrs.get(WORKER_ATTR) or {}
    if worker.get("host") == socket.gethostname() and worker.get("pid"):
        return not rundir.pid_alive(int(worker["pid"]))
    states = [rundir.effective_status(rundir.read_status(d) or {}) for d in _trial_dirs(sweep_dir, trial.number)]
    return bool(states) and all(s == "dead" for s in states)


def fail_stale(study: Any, sweep_dir: Path) -> list[int]:
    """Record as FAIL the RUNNING trials whose worker is gone (killed), so they neither block n_trials nor look
    alive. Called under the sweep dir's Optuna lock, between batches."""
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker_gone(trial, sweep_dir):
            study.tell(trial.number, state=TrialState.FAIL)
            failed.append(trial.number)
    if failed:
        log.warning("trials %s were left RUNNING by a worker that is gone: recorded as FAIL", failed)
    return failed


def write_trial_file(trial_dir: Path, info: Mapping[str, Any]) -> Path:
    trial_dir.mkdir(parents=True, exist_ok=True)
    path = trial_dir / TRIAL_FILE
    rundir.write_json(path, dict(info))
    return path


def load_trial(path: Path) -> tuple[Any, dict[str, Any]]:
    """In a job: the live Optuna trial named by its trial file (through the study's storage, by trial id)."""
    import optuna

    info = json.loads(Path(path).read_text())
    study = optuna.load_study(
        study_name=info["study_name"],
        storage=open_storage(info["storage"]),
        sampler=optuna.samplers.RandomSampler(),
        pruner=build(info.get("pruner")),
    )
    return optuna.trial.Trial(study, int(info["trial_id"])), info


def objective(values: Sequence[float | None]) -> float | None:
    """What Optuna is told for a trial: the mean over its seeds; None when any is missing or not finite."""
    if not values or any(v is None or not math.isfinite(float(v)) for v in values):
        return None
    return float(sum(float(v) for v in values) / len(values))


def write_results(sweep_dir: Path, study: Any, extra: Mapping[str, Any]) -> dict[str, Any]:
    """optimization_results.yaml (what `lmlab-report` shows): best params/value and the trial states."""
    import yaml

    try:
        best = study.best_trial
        best_info = {"best_trial": best.number, "best_params": dict(best.params), "best_value": best.value}
    except ValueError:  # no completed trial yet
        best_info = {"best_trial": None, "best_params": None, "best_value": None}
    data = {
        "name": "optuna",
        "study_name": study.study_name,
        "direction": study.direction.name.lower(),
        **best_info,
        "n_trials": len(study.get_trials(deepcopy=False)),
        "states": counts(study),
        **extra,
    }
    path = Path(sweep_dir) / RESULTS
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)  # atomic: another worker may be writing the same file
    return data
