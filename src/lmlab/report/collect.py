"""Read a Hydra multirun (grid or Optuna) directory into jobs and groups."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmlab import runfiles


class ReportError(Exception):
    """Bad input: the message names the bad value and the fix; `main` prints it and returns 2."""


@dataclass
class Job:
    dir: Path
    overrides: list[str]
    status: str  # completed | failed | requeued | running | unknown
    metrics: dict[str, Any] | None
    manifest: dict[str, Any] | None
    seed: str | None = None
    group: str = ""

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

    @property
    def n_failed(self) -> int:
        return sum(j.status == "failed" for j in self.jobs)


def override_key(override: str) -> str:
    """`+seed=1`, `++seed=1` and `seed=1` all set key `seed`."""
    return override.split("=", 1)[0].lstrip("+~")


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
    status_data = _read_json(job_dir / runfiles.STATUS)
    metrics = _read_json(job_dir / runfiles.METRICS)
    if status_data is not None:
        status = runfiles.effective_status(status_data)  # `dead`: says running, but its process is gone
    else:
        # No status.json (e.g. a plain Hydra run): metrics.json is only written at the end of a run.
        status = "completed" if metrics is not None else "unknown"
    return Job(job_dir, overrides, status, metrics, _read_json(job_dir / runfiles.MANIFEST))


def find_jobs(sweep_dir: Path) -> list[Job]:
    if not sweep_dir.exists():
        raise ReportError(f"sweep dir {sweep_dir} does not exist; pass a Hydra multirun dir "
                          f"(e.g. logs/multirun/<date>/<time>)")
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir} is not a directory; pass a Hydra multirun dir")
    # `<job>.replaced-<time>`: a re-run's earlier attempt (hydra.sweeper.resume=false), not part of this sweep.
    dirs = [d for d in sweep_dir.iterdir()
            if (d / ".hydra" / "overrides.yaml").is_file() and ".replaced-" not in d.name]
    dirs.sort(key=_natural)
    if not dirs:
        hint = (" — it looks like a single run dir; pass its parent multirun dir"
                if (sweep_dir / ".hydra").is_dir() else "")
        raise ReportError(f"{sweep_dir} has no job dirs (subdirectories with .hydra/overrides.yaml){hint}")
    return [read_job(d) for d in dirs]


def group_jobs(jobs: list[Job], seed_key: str) -> list[Group]:
    """Group by every override except the seed; groups keep the order of their first job.

    Overrides that every job shares (`model=tiny_bert`, an Optuna trial's fixed settings) are left out of the
    group names when something else varies, so names show what differs.
    """
    groups: dict[frozenset[str], Group] = {}
    per_job = [[o for o in job.overrides if override_key(o) != seed_key] for job in jobs]
    shared = set.intersection(*(set(r) for r in per_job)) if per_job else set()
    constant = [o for o in per_job[0] if o in shared] if any(set(r) - shared for r in per_job) else []
    for job in jobs:
        rest = []
        for o in job.overrides:
            if override_key(o) == seed_key:
                job.seed = o.split("=", 1)[1] if "=" in o else None
            elif o not in constant:
                rest.append(o)
        # A set, so the same overrides written in another order still land in one group.
        key = frozenset(rest)
        if key not in groups:
            groups[key] = Group(" ".join(rest), rest, constant=constant)
        job.group = groups[key].name
        groups[key].jobs.append(job)
    return list(groups.values())


def scalar_metrics(jobs: list[Job]) -> list[str]:
    names = {k for j in jobs if j.metrics for k, v in j.metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return sorted(names)


def match_group(spec: str, groups: list[Group], seed_key: str, what: str) -> Group:
    """Find the group a user named: exact set of overrides first, then the one group containing them all
    (so constant overrides such as `experiment=x` need not be typed)."""
    constant = set(groups[0].constant) if groups else set()
    wanted = {o for o in spec.split() if override_key(o) != seed_key and o not in constant}
    exact = [g for g in groups if set(g.overrides) == wanted]
    if exact:
        return exact[0]
    partial = [g for g in groups if wanted <= set(g.overrides)]
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
