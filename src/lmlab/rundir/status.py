"""A run's status.json, its heartbeat and the lock that lets one process write into a run dir."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from lmlab.errors import LmlabError
from lmlab.rundir.files import LOCK, STATUS, now, read_json, write_json

HEARTBEAT_S = float(os.environ.get("LMLAB_HEARTBEAT_S", "30"))  # status.json `heartbeat` refresh interval

FINISHED = ("completed",)

_status_lock = threading.Lock()  # the heartbeat thread and the main thread both rewrite status.json


def read_status(run_dir: Path) -> dict[str, Any]:
    """status.json, or {} when there is none (or it is unreadable)."""
    try:
        return read_json(Path(run_dir) / STATUS)
    except (OSError, ValueError):
        return {}


def update_status(run_dir: Path, status: str | None, **fields: Any) -> dict[str, Any]:
    """status.json: running -> completed | failed | interrupted | requeued; `attempts` counts starts of this job.

    A running job records its pid and host and refreshes `heartbeat` every HEARTBEAT_S seconds (`Heartbeat`), so
    a reader can tell a live run from one killed with `kill -9` (`effective_status`). `status=None` only merges
    `fields` (the heartbeat).
    """
    path = Path(run_dir) / STATUS
    with _status_lock:
        current = read_status(run_dir) or {"attempts": 0}
        if status == "running":
            current.update(
                attempts=current.get("attempts", 0) + 1,
                started=now(),
                ended=None,
                error=None,
                traceback_file=None,
                pid=os.getpid(),
                host=socket.gethostname(),
                heartbeat=now(),
                heartbeat_interval_s=HEARTBEAT_S,
            )
        elif status is not None:
            current["ended"] = now()
        if status is not None:
            current["status"] = status
        current.update(fields)
        write_json(path, current)
    return current


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def effective_status(status: Mapping[str, Any]) -> str:
    """The recorded status, except that a `running` run whose process is gone is `dead`: its pid is not alive on
    this host, or (another host) its heartbeat is older than 3 intervals."""
    state = str(status.get("status") or "pending")
    if state != "running":
        return state
    if status.get("host") == socket.gethostname() and status.get("pid"):
        return "running" if pid_alive(int(status["pid"])) else "dead"
    beat = status.get("heartbeat")
    if beat:
        age = (datetime.now(timezone.utc) - datetime.fromisoformat(beat)).total_seconds()
        if age > 3 * float(status.get("heartbeat_interval_s") or HEARTBEAT_S):
            return "dead"
    return "running"


class Heartbeat:
    """Refresh status.json's `heartbeat` every `interval` s from a daemon thread while a run is live."""

    def __init__(self, run_dir: Path, interval: float = HEARTBEAT_S) -> None:
        self.run_dir, self.interval = Path(run_dir), interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lmlab-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError, ValueError, LmlabError):
                update_status(self.run_dir, None, heartbeat=now())

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def lock_run_dir(run_dir: Path) -> IO[str]:
    """Hold `<run dir>/.lock` for this process's life: a second process on the same run dir is refused up front
    (today both crash later with mixed files). Keep the returned handle open."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        status = read_status(run_dir)
        handle.close()
        raise LmlabError(
            f"{run_dir} is in use by another lmlab process (pid {status.get('pid')} on {status.get('host')}): "
            f"wait for it to end, or start this run in another dir (the default, or hydra.run.dir=<new dir>)."
        ) from None
    return handle


__all__ = [
    "HEARTBEAT_S",
    "FINISHED",
    "pid_alive",
    "read_status",
    "update_status",
    "effective_status",
    "Heartbeat",
    "lock_run_dir",
]
