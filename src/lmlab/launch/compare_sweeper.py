"""`hydra/sweeper=compare` (experiment=compare_optimizers): per-arm tuning on tune seeds, then fresh-seed
confirmation, in one `python train.py -m` (docs/experiments.md, "Comparing optimizers").

- `compare.arms`: {name: {overrides: [...], space: {key: "a,b,c"}}}: an arm is its overrides (optimizer=muon ...)
  plus a grid (Hydra's sweep syntax per key, as in hydra.sweeper.params) that every arm searches with the same
  number of trials (`compare.trials_per_arm`, = the grid's size, refused otherwise).
- `compare.search: optuna` instead: each arm's space in Optuna's sweep syntax (`tag(log, interval(1e-4, 1e-2))`,
  `choice(...)`, `range(...)`), `compare.trials_per_arm` trials per arm asked one at a time from a TPE study of its
  own (`tune/<arm>/optuna.journal`; trial n's sampler is seeded from `compare.sampler.seed` and n, so a resumed
  search draws what an uninterrupted one would), jobs in `tune/<arm>/trial=<n>,seed=<s>/`.
- Stage 1 (`tune/<arm>/<job>/`): every grid point (or trial) of every arm on each of `compare.tune_seeds`. An
  arm's choice is its point with the best mean `optimized_metric` over the tune seeds, in the task's direction; a
  point with a failed or missing seed ranks last; ties go to the earlier point (grid or trial order).
  `compare.json` (spaces, seeds, each trial's per-seed values and mean, the choices) is written before stage 2.
- Stage 2 (`confirm/<job>/`): each arm's choice on each of `compare.confirm_seeds` (disjoint from the tune seeds,
  shared by every arm so results pair by seed), launched interleaved across arms (A, B, C, A, B, C...): a drift of
  the machine over time hits every arm alike.
- Resumable as the grid sweeper (this is one): a re-issued command skips completed jobs of either stage, so a kill
  between or within the stages loses only the jobs that were running. Any launcher (basic, hydra/launcher=slurm)
  runs each stage's job list; stage 2 is launched only when stage 1 has returned.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from lmlab import rundir
from lmlab.config.arglists import quote
from lmlab.config.resolvers import _job_dir as job_dirname
from lmlab.errors import LmlabError
from lmlab.launch.grid_sweeper import ResumableSweeper

log = logging.getLogger("lmlab.compare")

COMPARE = "compare.json"
TUNE, CONFIRM = "tune", "confirm"
SEARCHES = ("grid", "optuna")


def _seeds(value: Any, key: str) -> list[int]:
    seeds = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise LmlabError(f"compare.{key}={value!r} must be a non-empty list of integer seeds, e.g. [1, 2, 3].")
    if len(set(seeds)) != len(seeds):
        raise LmlabError(f"compare.{key}={seeds} lists a seed twice: a repeated seed is not another sample.")
    outside = [s for s in seeds if not 0 <= s < 2**32]
    if outside:  # every job would be refused by its own config check (seed_everything's range), stage by stage
        raise LmlabError(f"compare.{key}={seeds}: seed(s) {outside} are outside [0, 2**32); use seeds from that range.")
    return seeds


def _flat(space: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{optimizer: {lr: "a,b"}} and {optimizer.lr: "a,b"} alike -> {"optimizer.lr": "a,b"} (the nested form can be
    overridden from the command line: compare.arms.adamw.space.optimizer.lr="'1e-3,3e-3'")."""
    out: dict[str, Any] = {}
    for key, value in space.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = ",".join(map(str, value)) if isinstance(value, list) else value
    return out


def check_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """compare.* as given, checked: arms, baseline, disjoint seeds, trials_per_arm (no composition here)."""
    arms = spec.get("arms")
    if not isinstance(arms, Mapping) or not arms:
        raise LmlabError(
            "compare.arms is empty: give {name: {overrides: [...], space: {key: 'a,b'}}} "
            "(experiment=compare_optimizers)."
        )
    baseline = spec.get("baseline")
    if baseline not in arms:
        raise LmlabError(f"compare.baseline={baseline!r} is not one of the arms ({', '.join(arms)}).")
    tune, confirm = _seeds(spec.get("tune_seeds"), "tune_seeds"), _seeds(spec.get("confirm_seeds"), "confirm_seeds")
    shared = sorted(set(tune) & set(confirm))
    if shared:
        raise LmlabError(
            f"compare.confirm_seeds={confirm} shares seed(s) {shared} with compare.tune_seeds={tune}: the chosen "
            f"configurations would be confirmed on the runs that chose them (winner's curse). Use disjoint seeds."
        )
    trials = spec.get("trials_per_arm")
    if not isinstance(trials, int) or trials < 1:
        raise LmlabError(f"compare.trials_per_arm={trials!r} must be a positive integer (the grid size of every arm).")
    search = spec.get("search", "grid")
    if search not in SEARCHES:
        raise LmlabError(f"compare.search={search!r}: use grid (each arm's grid in full) or optuna (TPE per arm).")
    sampler = spec.get("sampler") or {}
    if not isinstance(sampler, Mapping):
        raise LmlabError(f"compare.sampler={sampler!r} must be a mapping, e.g. {{seed: 0}} (Optuna's TPESampler).")
    out = {}
    for name, arm in arms.items():
        arm = arm or {}
        unknown = set(arm) - {"overrides", "space"}
        if unknown:
            raise LmlabError(
                f"compare.arms.{name} has unknown key(s) {sorted(unknown)}: an arm has overrides and space."
            )
        overrides = [str(o) for o in (arm.get("overrides") or [])]
        space = {k: str(v) for k, v in _flat(arm.get("space") or {}).items()}
        out[str(name)] = {"overrides": overrides, "space": space}
    return {
        "arms": out,
        "baseline": str(baseline),
        "tune_seeds": tune,
        "confirm_seeds": confirm,
        "trials": trials,
        "search": search,
        "sampler": dict(sampler),
    }


def grid(space: Mapping[str, str], parser: OverridesParser, arm: str) -> tuple[list[list[str]], dict[str, list[str]]]:
    """The arm's grid points in order (each a list of `key=value` overrides) and each key's values in order."""
    values: dict[str, list[str]] = {}
    for key, text in space.items():
        try:
            (parsed,) = parser.parse_overrides([f"{key}={text}"])
        except Exception as err:  # Hydra's grammar error says what is wrong with the text
            raise LmlabError(f"compare.arms.{arm}.space.{key}={text!r} is not a sweep Hydra can read: {err}") from err
        values[key] = (
            list(parsed.sweep_string_iterator()) if parsed.is_sweep_override() else [parsed.get_value_element_as_str()]
        )
    points = [[f"{k}={v}" for k, v in zip(values, combo)] for combo in itertools.product(*values.values())]
    return points or [[]], values


def choose(trials: Sequence[Mapping[str, Any]], mode: str) -> int | None:
    """Index of the best trial by mean over seeds (failed last; ties: the earlier), None when all failed."""
    best: int | None = None
    for i, trial in enumerate(trials):
        if trial["failed"]:
            continue
        if best is None or (
            trial["mean"] < trials[best]["mean"] if mode == "min" else trial["mean"] > trials[best]["mean"]
        ):
            best = i
    return best


def _value(ret: JobReturn) -> float | None:
    if ret.status != JobStatus.COMPLETED:
        return None
    value = ret._return_value  # not .return_value: that re-raises a failed job's exception
    if value is None or not isinstance(value, (int, float)) or math.isnan(float(value)):
        return None
    return float(value)


Tuned = dict[str, tuple[list[dict[str, Any]], dict[str, list[str]]]]


def _lowest(space: Mapping[str, tuple[str, Any]]) -> list[str]:
    """One composable point of an Optuna space: each range's low end, each choice's first value."""
    return _overrides(
        space,
        {name: (dist.choices[0] if hasattr(dist, "choices") else dist.low) for name, (_, dist) in space.items()},
    )


def _overrides(space: Mapping[str, tuple[str, Any]], params: Mapping[str, Any]) -> list[str]:
    from hydra.core.override_parser.types import Override

    return [f"{key}={Override._get_value_element_as_str(params[name])}" for name, (key, _) in space.items()]


def _sort_key(text: str) -> tuple[int, float, str]:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


class CompareSweeper(ResumableSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.hydra_context is not None
        try:
            return self._compare(arguments)
        except LmlabError as err:
            log.error("%s", err)
            sys.exit(1)

    def _compare(self, arguments: list[str]) -> list[Any]:
        assert self.config is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        swept = [o.input_line for o in parser.parse_overrides(arguments) if o.is_sweep_override()]
        params = self._parse_config()
        if swept or params:
            raise LmlabError(
                f"the compare sweeper runs its own grid (compare.arms.<arm>.space) and seeds (compare.tune_seeds, "
                f"compare.confirm_seeds); a sweep on the command line or in hydra.sweeper.params ({swept or params}) "
                f"would be applied to every arm. Put it into an arm's space."
            )
        raw = OmegaConf.to_container(self.config.get("compare") or {}, resolve=True)
        spec = check_spec(raw)  # type: ignore[arg-type]
        mode = str(OmegaConf.select(self.config, "task.mode", default="min"))
        metric = str(OmegaConf.select(self.config, "optimized_metric", default=""))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        base = list(arguments)

        def job(stage_dir: str, name: str, overrides: Sequence[str], seed: int) -> list[str]:
            subdir = f"{stage_dir}/{job_dirname(name)}"
            return [*base, *overrides, f"seed={seed}", f"hydra.sweep.subdir={quote(subdir)}"]

        self._launched = 0
        # Stage 1: {arm: (trials, the values of each searched key)}, a trial = one point on every tune seed.
        if spec["search"] == "grid":
            tuned = self._tune_grid(spec, parser, job)
        else:
            tuned = self._tune_optuna(spec, job, mode, sweep_dir)
        record: dict[str, Any] = {
            "protocol": "per-arm tuning on tune seeds, fresh-seed confirmation (lmlab docs/experiments.md)",
            "optimized_metric": metric,
            "mode": mode,
            "baseline": spec["baseline"],
            "tune_seeds": spec["tune_seeds"],
            "confirm_seeds": spec["confirm_seeds"],
            "trials_per_arm": spec["trials"],
            "search": spec["search"],
            "base_overrides": base,
            "arms": {},
        }
        failed_arms = []
        for arm, (trials, space_values) in tuned.items():
            best = choose(trials, mode)
            if best is None:
                failed_arms.append(arm)
            record["arms"][arm] = {
                "overrides": spec["arms"][arm]["overrides"],
                "space": space_values,
                "trials": trials,
                "choice": None
                if best is None
                else {"index": best, "overrides": trials[best]["overrides"], "mean": trials[best]["mean"]},  # fmt: skip
            }
        if failed_arms:
            record["error"] = f"every tuning trial of arm(s) {failed_arms} failed"
            rundir.write_json(sweep_dir / COMPARE, record)
            dirs = [d for arm in failed_arms for t in record["arms"][arm]["trials"] for d in t["dirs"]]
            raise LmlabError(
                f"every tuning trial of arm(s) {', '.join(failed_arms)} failed, so there is no configuration to "
                f"confirm; stage 2 was not started. See status.json / traceback.txt in {sweep_dir}/{dirs[0]} (and "
                f"{len(dirs) - 1} more), fix the arm (its overrides or space) and re-issue the command: completed "
                f"jobs are kept."
            )
        record["stage"] = "confirm"
        # Stage 2: each arm's choice on the confirm seeds, interleaved across arms.
        confirm_jobs, confirm_record = [], []
        for seed in spec["confirm_seeds"]:
            for arm in tuned:
                chosen = record["arms"][arm]["choice"]["overrides"]
                overrides = [*spec["arms"][arm]["overrides"], *chosen]
                confirm_jobs.append(job(CONFIRM, f"arm={arm},seed={seed}", overrides, seed))
                confirm_record.append({"arm": arm, "seed": seed, "overrides": overrides})
        self.prepare(confirm_jobs)  # also names the dirs
        for entry, overrides in zip(confirm_record, confirm_jobs):
            entry["dir"] = self.job_dirs[tuple(overrides)]
        record["confirm"] = confirm_record
        rundir.write_json(sweep_dir / COMPARE, record)  # the choices, before any confirm job starts
        choices = {a: r["choice"]["overrides"] for a, r in record["arms"].items()}
        log.info("compare: stage 1 done, choices %s; stage 2: %d confirm runs", choices, len(confirm_jobs))
        confirm_returns = self.launcher.launch(confirm_jobs, initial_job_idx=self._launched)
        for entry, ret in zip(confirm_record, confirm_returns):
            entry["value"] = _value(ret)
            entry["status"] = "completed" if ret.status == JobStatus.COMPLETED else "failed"
        failed = [e["dir"] for e in confirm_record if e["status"] == "failed"]
        if failed:
            # Not "done": a comparison with a missing confirm seed is not the one the protocol names.
            record["error"] = f"{len(failed)} of {len(confirm_record)} confirm runs failed: {failed}"
            rundir.write_json(sweep_dir / COMPARE, record)
            raise LmlabError(
                f"{len(failed)} of {len(confirm_record)} confirm runs failed, so the comparison is incomplete. See "
                f"status.json / traceback.txt in {sweep_dir}/{failed[0]}"
                + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else "")
                + ", fix the cause and re-issue the command: completed runs are kept, failed ones run again."
            )
        record["stage"] = "done"
        rundir.write_json(sweep_dir / COMPARE, record)
        return list(confirm_returns)

    def _run(self, jobs: list[list[str]]) -> list[JobReturn]:
        self.prepare(jobs)
        returns = list(self.launcher.launch(jobs, initial_job_idx=self._launched))
        self._launched += len(jobs)
        return returns

    def _trial(self, jobs: Sequence[Sequence[str]], returns: Sequence[JobReturn], point: list[str]) -> dict[str, Any]:
        values = [_value(r) for r in returns]
        failed = any(v is None for v in values)
        return {
            "overrides": point,
            "dirs": [self.job_dirs[tuple(j)] for j in jobs],
            "values": values,
            "mean": None if failed else sum(values) / len(values),  # type: ignore[arg-type]
            "failed": failed,
        }

    def _tune_grid(self, spec: Mapping[str, Any], parser: OverridesParser, job: Callable[..., list[str]]) -> Tuned:
        """Every arm's whole grid on the tune seeds, in one launch (arm by arm, seeds inside each point)."""
        grids = {arm: grid(a["space"], parser, arm) for arm, a in spec["arms"].items()}
        for arm, (points, _) in grids.items():
            if len(points) != spec["trials"]:
                raise LmlabError(
                    f"compare.arms.{arm}.space has {len(points)} grid point(s) but compare.trials_per_arm="
                    f"{spec['trials']}: every arm gets the same number of trials (a fair search). Give each arm "
                    f"{spec['trials']} points, or set compare.trials_per_arm={len(points)} for all."
                )
        tune_jobs, where = [], []
        for arm, (points, _) in grids.items():
            for p, point in enumerate(points):
                for seed in spec["tune_seeds"]:
                    name = ",".join([*point, f"seed={seed}"])
                    tune_jobs.append(job(f"{TUNE}/{arm}", name, [*spec["arms"][arm]["overrides"], *point], seed))
                    where.append((arm, p))
        self._check_keys(tune_jobs, where)
        returns = self._run(tune_jobs)
        out: Tuned = {}
        for arm, (points, values) in grids.items():
            trials = []
            for p, point in enumerate(points):
                idx = [i for i, w in enumerate(where) if w == (arm, p)]
                trials.append(self._trial([tune_jobs[i] for i in idx], [returns[i] for i in idx], point))
            out[arm] = (trials, values)
        return out

    def _tune_optuna(self, spec: Mapping[str, Any], job: Callable[..., list[str]], mode: str, sweep_dir: Path) -> Tuned:
        """Per arm, `trials` trials asked one at a time from the arm's own TPE study (a journal file in its tune
        dir): each trial runs on every tune seed and is told the mean. A trial already in the journal (a
        resumed search) keeps its point; completed jobs are not rerun."""
        from optuna.trial import TrialState

        from lmlab.launch import optuna_search

        spaces = {}
        for arm, a in spec["arms"].items():
            space, fixed = optuna_search.search_space([f"{k}={v}" for k, v in a["space"].items()])
            if not space:
                raise LmlabError(
                    f"compare.arms.{arm}.space has nothing to search ({a['space']}): with compare.search=optuna "
                    f"give each key Optuna's sweep syntax, e.g. optimizer.lr='tag(log, interval(1e-4, 1e-2))'."
                )
            spaces[arm] = (space, fixed)
        # Every arm composes (at the low end of each range) before anything runs.
        probes = [
            job(f"{TUNE}/{arm}", "probe", [*spec["arms"][arm]["overrides"], *fixed, *_lowest(space)], 0)
            for arm, (space, fixed) in spaces.items()
        ]
        self._check_keys(probes, [(arm, 0) for arm in spaces])
        direction = "minimize" if mode == "min" else "maximize"
        out: Tuned = {}
        for arm, (space, fixed) in spaces.items():
            storage = optuna_search.open_storage(str(sweep_dir / TUNE / arm / "optuna.journal"))
            study = optuna_search.open_study(storage, arm, direction, None, None)
            dists = {name: dist for name, (_, dist) in space.items()}
            trials = []
            for number in range(spec["trials"]):
                existing = study.get_trials(deepcopy=False)
                if number < len(existing):  # asked by an earlier invocation: its point, told unless it was
                    params, open_ = existing[number].params, existing[number].state == TrialState.RUNNING
                else:  # trial n's own sampler seed: the same history draws the same point
                    study.sampler = optuna_search.sampler_for({"seed": 0, **spec["sampler"]}, number)
                    params, open_ = study.ask(dists).params, True
                point = [*fixed, *_overrides(space, params)]
                jobs = [
                    job(f"{TUNE}/{arm}", f"trial={number},seed={seed}", [*spec["arms"][arm]["overrides"], *point], seed)
                    for seed in spec["tune_seeds"]
                ]  # fmt: skip
                log.info("compare: arm %s trial %d: %s", arm, number, " ".join(point))
                result = self._trial(jobs, self._run(jobs), point)
                if open_:
                    if result["failed"]:
                        study.tell(number, state=TrialState.FAIL)
                    else:
                        study.tell(number, result["mean"])
                trials.append(result)
            tried = {}  # each searched key's values as tried, in order (the report's curve and edge warning)
            for key, _ in space.values():
                values = {o.split("=", 1)[1] for t in trials for o in t["overrides"] if o.split("=", 1)[0] == key}
                tried[key] = sorted(values, key=_sort_key)
            out[arm] = (trials, tried)
        return out

    def _check_keys(self, jobs: Sequence[Sequence[str]], where: Sequence[tuple[str, int]]) -> None:
        """Compose one job of every grid point before anything runs: an arm naming a key that does not exist
        fails here, with the arm's name, instead of in every job."""
        assert self.config is not None and self.hydra_context is not None
        seen = set()
        for overrides, (arm, p) in zip(jobs, where):
            if (arm, p) in seen:
                continue
            seen.add((arm, p))
            try:
                self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            except Exception as err:
                message = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise LmlabError(
                    f"compare.arms.{arm}: its overrides or space name something that does not exist ({message}). "
                    f"Check the key against `python train.py --cfg job`; a new key needs a leading +."
                ) from err
