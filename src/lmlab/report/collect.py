"""Read a Hydra multirun (grid or Optuna) directory into jobs and groups."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmlab import rundir


class ReportError(Exception):
    """Bad input: the message names the bad value and the fix; `main` prints it and returns 2."""


@dataclass
class Job:
    dir: Path
    overrides: list[str]
    status: str  # completed | failed | running | dead | interrupted | requeued | pruned | unknown
    metrics: dict[str, Any] | None
    manifest: dict[str, Any] | None
    seed: str | None = None
    group: str = ""
    trial: str | None = None  # `trial_<n>` of an Optuna multi-seed trial (<sweep>/trial_<n>/seed=<s>/)
    prefix: str = ""  # the sweep dir, when a report reads several

    @property
    def name(self) -> str:
        name = f"{self.trial}/{self.dir.name}" if self.trial else self.dir.name
        return f"{self.prefix}/{name}" if self.prefix else name

    @property
    def finished(self) -> bool:
        return self.metrics is not None and self.status == "completed"


@dataclass
class Group:
    name: str
    overrides: list[str]
    jobs: list[Job] = field(default_factory=list)
    constant: list[str] = field(default_factory=list)  # overrides every job of the sweep shares

    @property
    def finished(self) -> list[Job]:
        return [j for j in self.jobs if j.finished]

    trial: str | None = None
    sort_key: tuple = ()

    @property
    def n_failed(self) -> int:
        return sum(j.status == "failed" for j in self.jobs)

    def count(self, *states: str) -> int:
        return sum(j.status in states for j in self.jobs)

    @property
    def states(self) -> str:
        """e.g. `3 completed, 1 pruned`: every job state of the group, so nothing unfinished hides."""
        counts: dict[str, int] = {}
        for j in self.jobs:
            counts[j.status] = counts.get(j.status, 0) + 1
        return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def override_key(override: str) -> str:
    """`+seed=1`, `++seed=1` and `seed=1` all set key `seed`."""
    return override.split("=", 1)[0].lstrip("+~")


_PARSER: Any = None


def parsed_value(override: str) -> Any:
    """The value Hydra gives `key=value`: `1e-4` and `0.0001` are one float, `null` is None. Unparseable text
    stays text."""
    global _PARSER
    if "=" not in override:
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if _PARSER is None:
        _PARSER = OverridesParser.create()
    try:
        return _PARSER.parse_override(override).value()
    except (HydraException, ValueError, TypeError):
        return override.split("=", 1)[1]


def canonical(override: str) -> tuple[str, str]:
    """(key, value) with the value in one spelling: numbers as floats (`1e-4` == `0.0001`, `3` == `3.0`)."""
    v = parsed_value(override)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return override_key(override), repr(float(v))
    return override_key(override), repr(v)


def value_sort_key(value: Any) -> tuple:
    # None first, then numbers by value, then everything else by text: lr 3e-5 < 1e-4 < 3e-4, not as strings.
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, float(value), "")
    return (2, 0.0, str(value))


def _natural(path: Path) -> list[object]:
    # Hydra names job dirs 0, 1, ..., 10: sort them as numbers, not strings.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: not valid JSON ({e}); fix or delete the file") from e
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_job(job_dir: Path) -> Job:
    ov_path = job_dir / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(ov_path.read_text()) or []
    except yaml.YAMLError as e:
        raise ReportError(f"{ov_path}: not valid YAML ({e})") from e
    if not isinstance(overrides, list):
        raise ReportError(f"{ov_path}: expected a YAML list of override strings, got {overrides!r}")
    overrides = [str(o) for o in overrides]
    status_data = _read_json(job_dir / rundir.STATUS)
    metrics = _read_json(job_dir / rundir.METRICS)
    if status_data is not None:
        status = rundir.effective_status(status_data)  # `dead`: says running, but its process is gone
    else:
        # No status.json (e.g. a plain Hydra run): metrics.json is only written at the end of a run.
        status = "completed" if metrics is not None else "unknown"
    return Job(job_dir, overrides, status, metrics, _read_json(job_dir / rundir.MANIFEST))


def _is_job_dir(d: Path) -> bool:
    return (d / ".hydra" / "overrides.yaml").is_file() and ".replaced-" not in d.name


def find_jobs(sweep_dir: Path, ignored: list[str] | None = None) -> list[Job]:
    """The sweep's jobs: its immediate job dirs, and the seed dirs of Optuna multi-seed trials
    (`trial_<n>/seed=<s>/`). Any other subdir (e.g. dapt's stage-1 `pretrain/seed=<s>/`) is not a job of this
    comparison; its name is appended to `ignored`."""
    if not sweep_dir.exists():
        raise ReportError(
            f"sweep dir {sweep_dir} does not exist; pass a Hydra multirun dir (e.g. logs/multirun/<date>/<time>)"
        )
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir} is not a directory; pass a Hydra multirun dir")
    # `<job>.replaced-<time>`: a re-run's earlier attempt (hydra.sweeper.resume=false), not part of this sweep.
    dirs: list[tuple[Path, str | None]] = []
    for d in sorted((d for d in sweep_dir.iterdir() if d.is_dir()), key=_natural):
        if _is_job_dir(d):
            dirs.append((d, None))
        elif d.name.startswith("trial_") and ".replaced-" not in d.name and any(map(_is_job_dir, d.iterdir())):
            dirs += [(leaf, d.name) for leaf in sorted(d.iterdir(), key=_natural) if _is_job_dir(leaf)]
        elif (
            ignored is not None
            and not d.name.startswith(".")
            and ".replaced-" not in d.name
            and any(_is_job_dir(x) for x in d.rglob("*") if x.is_dir())
        ):
            ignored.append(d.name)
    if not dirs:
        hint = (
            " — it looks like a single run dir; pass its parent multirun dir" if (sweep_dir / ".hydra").is_dir() else ""
        )
        raise ReportError(f"{sweep_dir} has no job dirs (subdirectories with .hydra/overrides.yaml){hint}")
    jobs = []
    for d, trial in dirs:
        job = read_job(d)
        job.trial = trial
        jobs.append(job)
    return jobs


# Where a run writes, not what it computes: runs of one config launched into different log dirs (one sweep dir per
# arm, benchmarks/lm_quality.py's runs) are one group.
WHERE_KEYS = frozenset({"paths.log_dir", "paths.output_dir"})


# The name of the group whose runs set nothing beyond the overrides every run shares (and the seed).
DEFAULTS_GROUP = "(defaults)"


def is_setting(override: str, seed_key: str) -> bool:
    """Whether an override names what a run computes: not its seed, not where it writes (WHERE_KEYS)."""
    key = override_key(override)
    return key != seed_key and key not in WHERE_KEYS


def group_jobs(jobs: list[Job], seed_key: str) -> list[Group]:
    """Group by every override except the seed and where the run writes (WHERE_KEYS), and by trial for Optuna
    multi-seed trials; groups are sorted by their override values, numbers numerically (then by first appearance).

    Overrides are compared by parsed value (`optimizer.lr=1e-4` and `optimizer.lr=0.0001` are one setting, in
    any order). Overrides that every job shares (`model=tiny_bert`, an Optuna trial's fixed settings) are left
    out of the group names when something else varies, so names show what differs.
    """
    groups: dict[tuple[str | None, frozenset[tuple[str, str]]], Group] = {}
    per_job = [[o for o in job.overrides if is_setting(o, seed_key)] for job in jobs]
    shared = set.intersection(*({canonical(o) for o in r} for r in per_job)) if per_job else set()
    varies = any({canonical(o) for o in r} - shared for r in per_job) or len({j.trial for j in jobs}) > 1
    constant = [o for o in per_job[0] if canonical(o) in shared] if varies else []
    const_keys = {canonical(o) for o in constant}
    for job in jobs:
        rest = []
        for o in job.overrides:
            if override_key(o) == seed_key:
                job.seed = o.split("=", 1)[1] if "=" in o else None
            elif is_setting(o, seed_key) and canonical(o) not in const_keys:
                rest.append(o)
        if job.seed is None and job.trial is not None and job.dir.name.startswith(f"{seed_key}="):
            job.seed = job.dir.name.split("=", 1)[1]  # the seed dir's name when overrides.yaml lacks it
        key = (job.trial, frozenset(canonical(o) for o in rest))
        if key not in groups:
            groups[key] = Group(" ".join(rest), rest, constant=constant, trial=job.trial)
        groups[key].jobs.append(job)
    out = list(groups.values())
    names = [g.name for g in out]
    for g in out:
        if g.trial is not None and (names.count(g.name) > 1 or not g.name):
            g.name = f"{g.trial} {g.name}".strip()  # two trials that sampled the same values stay apart
        if not g.name:
            g.name = DEFAULTS_GROUP  # the runs with no override but the shared ones (an empty name reads as nothing)
        for j in g.jobs:
            j.group = g.name
    keys = list(dict.fromkeys(override_key(o) for g in out for o in g.overrides))
    for i, g in enumerate(out):
        vals = {override_key(o): parsed_value(o) for o in g.overrides}
        # Missing keys sort first (as None); trials without varying values keep the trial number order.
        g.sort_key = (tuple(value_sort_key(vals.get(k)) for k in keys), i)
    return sorted(out, key=lambda g: g.sort_key)


def scalar_metrics(jobs: list[Job]) -> list[str]:
    names = {
        k
        for j in jobs
        if j.metrics
        for k, v in j.metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return sorted(names)


def match_group(spec: str, groups: list[Group], seed_key: str, what: str) -> Group:
    """Find the group a user named, comparing overrides by parsed value in any order: the exact set first,
    then the one group containing them all (so constant overrides such as `experiment=x` need not be typed).
    A group's name itself (e.g. `trial_3 ...`) matches too."""
    named = [g for g in groups if g.name == spec.strip()]
    if len(named) == 1:
        return named[0]
    constant = {canonical(o) for o in groups[0].constant} if groups else set()
    wanted = {canonical(o) for o in spec.split() if is_setting(o, seed_key)}
    wanted -= constant
    sets = [{canonical(o) for o in g.overrides} for g in groups]
    exact = [g for g, s in zip(groups, sets, strict=True) if s == wanted]
    if len(exact) == 1:
        return exact[0]
    partial = exact or [g for g, s in zip(groups, sets, strict=True) if wanted <= s]
    if len(partial) == 1:
        return partial[0]
    listing = "\n".join(f"  {g.name!r}" for g in groups)
    if partial:
        listing = "\n".join(f"  {g.name!r}" for g in partial)
        raise ReportError(f"{what} {spec!r} matches {len(partial)} groups; name more overrides:\n{listing}")
    raise ReportError(f"{what} {spec!r} matches no group; the groups are:\n{listing}")


def manifest_value(manifest: dict[str, Any] | None, section: str, key: str) -> str | None:
    """manifest["git"]["commit"], or the flat "git.commit" form."""
    if not manifest:
        return None
    nested = manifest.get(section)
    if isinstance(nested, dict) and nested.get(key) is not None:
        return str(nested[key])
    flat = manifest.get(f"{section}.{key}")
    return None if flat is None else str(flat)


def read_optuna_results(sweep_dir: Path) -> dict[str, Any] | None:
    path = sweep_dir / "optimization_results.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ReportError(f"{path}: not valid YAML ({e}); fix or delete the file") from e
    return data if isinstance(data, dict) else {"raw": data}
