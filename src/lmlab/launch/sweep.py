"""Sweep bookkeeping: job dir names from overrides, `<sweep dir>/sweep.json`, and which jobs a re-issue skips.

The resumable sweeper (hydra_plugins.lmlab_plugins) decides what to launch; the `SweepSummary` Hydra callback
keeps sweep.json current as each job starts and ends, so the summary exists even when the sweeper later
re-raises a failed job's exception (Hydra then skips on_multirun_end). Each job's own status.json stays the
source of truth; sweep.json is a view over them, rewritten under a file lock (parallel launchers such as
submitit write from several processes).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lmlab import rundir
from lmlab.errors import LmlabError
from lmlab.launch.ddp import is_primary_process

log = logging.getLogger("lmlab.sweep")

SWEEP = "sweep.json"
_LOCK = ".sweep.lock"
OPTUNA_LOCK = ".optuna.lock"  # held by an Optuna worker while it counts and asks trials (see locked)


def identity_mismatch(job_dir: Path, config: dict[str, Any], overrides: Sequence[str]) -> list[str]:
    """How a job dir's recorded run differs from the job about to run there (`key: old -> new`); [] = same job
    (or nothing recorded). Dirs written before config digests existed are compared by their overrides."""
    if not rundir.holds_results(job_dir):
        return []
    changes = rundir.config_changes(job_dir, config)
    if changes is not None:
        return changes
    old = job_dir / ".hydra" / "overrides.yaml"
    if old.is_file():
        import yaml

        previous = [str(o) for o in yaml.safe_load(old.read_text()) or []]
        if sorted(previous) != sorted(overrides):
            return [f"overrides: {previous} -> {list(overrides)}"]
        return []
    return ["(no record of the config this dir was run with)"]


def mismatch_message(sweep_dir: Path, mismatched: dict[str, list[str]]) -> str:
    lines = [
        f"{len(mismatched)} job dir(s) in {sweep_dir} hold runs of a different configuration than this "
        f"command asks for; their results would be reused or mixed under the wrong label:"
    ]
    for dirname, keys in list(mismatched.items())[:10]:
        lines.append(f"  {dirname}: " + "; ".join(keys[:8]) + (" ..." if len(keys) > 8 else ""))
    lines.append(
        "Choose: a new sweep dir (drop hydra.sweep.dir=..., or give another), or re-run these jobs with "
        "hydra.sweeper.resume=false (their old dirs are kept as <dir>.replaced-<time>)."
    )
    return "\n".join(lines)


def move_aside(sweep_dir: Path, dirnames: Sequence[str]) -> None:
    """Before a forced re-run: keep each dir's earlier run as `<dir>.replaced-<time>`, never mix two runs."""
    stamp = rundir.now().replace(":", "-")
    for dirname in dirnames:
        job_dir = Path(sweep_dir) / dirname
        if rundir.holds_results(job_dir):
            target = job_dir.with_name(f"{job_dir.name}.replaced-{stamp}")
            job_dir.rename(target)
            log.warning("re-running %s: its earlier run was moved to %s", dirname, target.name)


def check_fixed_config(sweep_dir: Path, config: dict[str, Any], what: str) -> None:
    """An Optuna study (continued, or with several workers) is one search over one fixed config: record it in
    sweep.json on first use and refuse a later invocation whose fixed config differs."""
    with locked(sweep_dir):
        data = _load(sweep_dir)
        recorded = data.get("fixed_config")
        if recorded is None:
            data["fixed_config"] = {"digest": rundir.digest(config), "config": config}
            _save(sweep_dir, data)
            return
    if recorded.get("digest") != rundir.digest(config):
        keys = rundir.differing_keys(recorded.get("config") or {}, config)
        raise LmlabError(
            f"{what} in {sweep_dir} was run with a different fixed configuration: "
            + "; ".join(keys[:10])
            + ". Its trials would mix two configurations. Use a new hydra.sweep.dir (a new study), or the same "
            "settings as before."
        )


def is_completed(job_dir: Path) -> bool:
    """A job counts as done only when it said so and its metrics exist; `running` (a killed process),
    `failed` and `requeued` all mean: run it again."""
    status = job_dir / rundir.STATUS
    if not status.is_file() or not (job_dir / rundir.METRICS).is_file():
        return False
    try:
        return rundir.read_json(status).get("status") == "completed"
    except ValueError:  # a status.json cut short by a crash
        return False


@contextlib.contextmanager
def locked(sweep_dir: Path, name: str = _LOCK) -> Iterator[None]:
    """An exclusive fcntl lock on `<sweep dir>/<name>`: sweep.json writes, and Optuna workers that share a study
    (count + ask under OPTUNA_LOCK, so n_trials is never overshot)."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _load(sweep_dir: Path) -> dict[str, Any]:
    path = sweep_dir / SWEEP
    if path.is_file():
        try:
            return rundir.read_json(path)
        except ValueError:
            log.warning("%s is unreadable; rebuilding it from the job dirs", path)
    return {"sweep_dir": str(sweep_dir.absolute()), "invocations": [], "jobs": []}


def _refresh_job(sweep_dir: Path, entry: dict[str, Any]) -> None:
    status_file = sweep_dir / entry["dir"] / rundir.STATUS
    if not status_file.is_file():  # never started, or its results were deleted
        entry.update(status="pending", attempts=0, started=None, ended=None, error=None)
    else:
        try:
            status = rundir.read_json(status_file)
        except ValueError:
            return
        for key in ("status", "attempts", "started", "ended", "error"):
            entry[key] = status.get(key)
        entry["status"] = rundir.effective_status(status)  # `dead`: running, but its process is gone
        if entry.get("status") == "completed" and not (sweep_dir / entry["dir"] / rundir.METRICS).is_file():
            entry["status"] = "incomplete"  # metrics deleted by hand: a re-issue runs it again


def _save(sweep_dir: Path, data: dict[str, Any], force: dict[str, str] | None = None) -> dict[str, Any]:
    for entry in data["jobs"]:
        _refresh_job(sweep_dir, entry)
        if force and entry["dir"] in force:
            entry["status"] = force[entry["dir"]]
    counts: dict[str, int] = {}
    for entry in data["jobs"]:
        counts[entry.get("status") or "pending"] = counts.get(entry.get("status") or "pending", 0) + 1
    data["counts"] = counts
    data["updated"] = rundir.now()
    rundir.write_json(sweep_dir / SWEEP, data)
    return data


def _upsert(data: dict[str, Any], dirname: str, overrides: Sequence[str], **fields: Any) -> dict[str, Any]:
    for entry in data["jobs"]:
        if entry["dir"] == dirname:
            entry["overrides"] = list(overrides)
            entry.update(fields)
            return entry
    entry = {"dir": dirname, "overrides": list(overrides), "status": "pending", "attempts": 0, **fields}
    data["jobs"].append(entry)
    return entry


def register_invocation(
    sweep_dir: Path, jobs: Sequence[tuple[str, Sequence[str]]], skipped: set[str], **info: Any
) -> None:
    """Before launching: list every job of this invocation (so never-started ones show as `pending`) and
    record which were kept from an earlier run. `info` is stored with the invocation (an Optuna worker's id)."""
    with locked(sweep_dir):
        data = _load(sweep_dir)
        for dirname, overrides in jobs:
            _upsert(data, dirname, overrides, skipped=dirname in skipped)
        data["invocations"].append(
            {
                "started": rundir.now(),
                "command": " ".join(sys.argv),
                "launched": [d for d, _ in jobs if d not in skipped],
                "skipped": sorted(skipped),
                **info,
            }
        )
        _save(sweep_dir, data)


def add_launched(sweep_dir: Path, worker: dict[str, Any], dirnames: Sequence[str]) -> None:
    """An Optuna worker's jobs, known only as trials are asked: add them to its invocation's `launched` list."""
    with locked(sweep_dir):
        data = _load(sweep_dir)
        mine = [inv for inv in data["invocations"] if inv.get("worker") == worker]
        if mine:
            mine[-1]["launched"] = [*mine[-1].get("launched", []), *dirnames]
        _save(sweep_dir, data)


def record_job(sweep_dir: Path, job_dir: Path, overrides: Sequence[str], status: str | None = None) -> None:
    """Called at job start/end (also from Optuna or other sweepers): add or update this job's entry.

    `status` is used when the job has no status.json of its own (it failed before lmlab's task ran), and at
    start, when its status.json still holds the previous attempt's result.
    """
    with locked(sweep_dir):
        data = _load(sweep_dir)
        dirname = str(Path(job_dir).absolute().relative_to(Path(sweep_dir).absolute()))
        entry = _upsert(data, dirname, overrides, skipped=False)
        if status is not None and status != "running" and not (Path(job_dir) / rundir.STATUS).is_file():
            # Failed before lmlab's task wrote anything: give it a status.json so it counts as an attempt.
            rundir.update_status(Path(job_dir), "running")
            rundir.update_status(Path(job_dir), status)
        # At start, status.json is missing or still holds the previous attempt's result.
        _save(sweep_dir, data, force={entry["dir"]: status} if status == "running" else None)


def summary(sweep_dir: Path) -> dict[str, Any]:
    """Re-read every job's status.json into sweep.json and return it."""
    with locked(sweep_dir):
        return _save(sweep_dir, _load(sweep_dir))


class SweepSummary(Callback):
    """Hydra callback (hydra.callbacks in conf/hydra/default.yaml): keeps sweep.json current and closes
    W&B runs between jobs."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _is_multirun(config) and is_primary_process():  # a multi-node job runs this on every rank
            record_job(
                Path(config.hydra.sweep.dir),
                Path(config.hydra.runtime.output_dir),
                list(config.hydra.overrides.task),
                status="running",
            )

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        failed = job_return.status != JobStatus.COMPLETED
        from lmlab.callbacks.loggers import finish_wandb  # here: lmlab.callbacks imports Lightning

        finish_wandb(failed)
        if _is_multirun(config) and is_primary_process():
            record_job(
                Path(config.hydra.sweep.dir),
                Path(config.hydra.runtime.output_dir),
                list(config.hydra.overrides.task),
                status="failed" if failed else "completed",
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if (sweep_dir / SWEEP).is_file():
            data = summary(sweep_dir)
            log.info("sweep %s: %s (see %s)", sweep_dir, data["counts"], sweep_dir / SWEEP)


def _is_multirun(config: DictConfig) -> bool:
    from hydra.types import RunMode

    return config.hydra.mode == RunMode.MULTIRUN
