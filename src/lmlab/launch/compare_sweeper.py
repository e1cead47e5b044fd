"""`hydra/sweeper=compare` (experiment=compare_optimizers): per-arm tuning on tune seeds, then fresh-seed
confirmation, in one `python train.py -m` (docs/experiments.md, "Comparing optimizers").

- `compare.arms`: {name: {overrides: [...], space: {key: "a,b,c"}}}: an arm is its overrides (optimizer=muon ...)
  plus a grid (Hydra's sweep syntax per key, as in hydra.sweeper.params) that every arm searches with the same
  number of trials (`compare.trials_per_arm`, = the grid's size, refused otherwise).
- Stage 1 (`tune/<arm>/<job>/`): every grid point of every arm on each of `compare.tune_seeds`. An arm's choice is
  its grid point with the best mean `optimized_metric` over the tune seeds, in the task's direction; a point with
  a failed or missing seed ranks last; ties go to the earlier point in grid order. `compare.json` (spaces, seeds,
  each trial's per-seed values and mean, the choices) is written before stage 2 starts.
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
from collections.abc import Mapping, Sequence
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


def _seeds(value: Any, key: str) -> list[int]:
    seeds = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise LmlabError(f"compare.{key}={value!r} must be a non-empty list of integer seeds, e.g. [1, 2, 3].")
    if len(set(seeds)) != len(seeds):
        raise LmlabError(f"compare.{key}={seeds} lists a seed twice: a repeated seed is not another sample.")
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
    return {"arms": out, "baseline": str(baseline), "tune_seeds": tune, "confirm_seeds": confirm, "trials": trials}


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
        grids = {arm: grid(a["space"], parser, arm) for arm, a in spec["arms"].items()}
        for arm, (points, _) in grids.items():
            if len(points) != spec["trials"]:
                raise LmlabError(
                    f"compare.arms.{arm}.space has {len(points)} grid point(s) but compare.trials_per_arm="
                    f"{spec['trials']}: every arm gets the same number of trials (a fair search). Give each arm "
                    f"{spec['trials']} points, or set compare.trials_per_arm={len(points)} for all."
                )
        base = list(arguments)

        def job(stage_dir: str, name: str, overrides: Sequence[str], seed: int) -> list[str]:
            subdir = f"{stage_dir}/{job_dirname(name)}"
            return [*base, *overrides, f"seed={seed}", f"hydra.sweep.subdir={quote(subdir)}"]

        # Stage 1: every arm's grid on the tune seeds (arm by arm, seeds inside each point).
        tune_jobs, where = [], []
        for arm, (points, _) in grids.items():
            for p, point in enumerate(points):
                for seed in spec["tune_seeds"]:
                    name = ",".join([*point, f"seed={seed}"])
                    tune_jobs.append(job(f"{TUNE}/{arm}", name, [*spec["arms"][arm]["overrides"], *point], seed))
                    where.append((arm, p))
        self._check_keys(tune_jobs, where)
        returns = self._run(tune_jobs)
        record: dict[str, Any] = {
            "protocol": "per-arm tuning on tune seeds, fresh-seed confirmation (lmlab docs/experiments.md)",
            "optimized_metric": metric,
            "mode": mode,
            "baseline": spec["baseline"],
            "tune_seeds": spec["tune_seeds"],
            "confirm_seeds": spec["confirm_seeds"],
            "trials_per_arm": spec["trials"],
            "base_overrides": base,
            "arms": {},
        }
        values = {i: _value(r) for i, r in enumerate(returns)}
        failed_arms = []
        for arm, (points, space_values) in grids.items():
            trials = []
            for p, point in enumerate(points):
                idx = [i for i, w in enumerate(where) if w == (arm, p)]
                seed_values = [values[i] for i in idx]
                failed = any(v is None for v in seed_values)
                trials.append(
                    {
                        "overrides": point,
                        "dirs": [self.job_dirs[tuple(tune_jobs[i])] for i in idx],
                        "values": seed_values,
                        "mean": None if failed else sum(seed_values) / len(seed_values),  # type: ignore[arg-type]
                        "failed": failed,
                    }
                )
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
            for arm in grids:
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
        confirm_returns = self.launcher.launch(confirm_jobs, initial_job_idx=len(tune_jobs))
        record["stage"] = "done"
        for entry, ret in zip(confirm_record, confirm_returns):
            entry["value"] = _value(ret)
            entry["status"] = "completed" if ret.status == JobStatus.COMPLETED else "failed"
        rundir.write_json(sweep_dir / COMPARE, record)
        return [list(returns), list(confirm_returns)]

    def _run(self, jobs: list[list[str]]) -> list[JobReturn]:
        self.prepare(jobs)
        return list(self.launcher.launch(jobs, initial_job_idx=0))

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
