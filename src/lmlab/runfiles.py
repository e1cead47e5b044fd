"""The run dir in one place: the names and formats of what a run writes (status, metrics, predictions, resolved
config + digest), who may write into a dir (the lock), whether a recorded run is still alive (heartbeat), and
which checkpoint a path means. train, eval, the sweepers and the report read run dirs through this module.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import errno
import fcntl
import hashlib
import json
import os
import socket
import tempfile
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from lmlab.config import LmlabError

METRICS = "metrics.json"
STATUS = "status.json"
PREDICTIONS = "test_predictions.csv"
SAMPLES = "samples.md"
TRACEBACK = "traceback.txt"
CHECKPOINTS = "checkpoints"
EXPORT = "model"
MANIFEST = "manifest.json"
EXAMPLE_HASHES = "example_hashes.json"  # per-split content hashes of the examples (lmlab.lineage)
RESOLVED = "resolved_config.json"  # the config as the run used it + its digest: what "the same job" means
RESUME_CKPT = "resume.ckpt"  # the exact position where an interrupted attempt stopped
LAST_CKPT = "last.ckpt"
LOCK = ".lock"
HEARTBEAT_S = float(os.environ.get("LMLAB_HEARTBEAT_S", "30"))  # status.json `heartbeat` refresh interval
FINISHED = ("completed",)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def umask_mode(mode: int = 0o666) -> int:
    """`mode` as the umask lets files be created: mkstemp makes 0600 files, which a teammate cannot read."""
    current = os.umask(0)
    os.umask(current)
    return mode & ~current


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomic write: a reader never sees half a file, and a crash never leaves one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2, sort_keys=False, default=str)
            out.write("\n")
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise LmlabError(
                f"no space left on {path.parent} (writing {path.name}): free some space, or write "
                f"runs elsewhere with paths.log_dir=<dir>."
            ) from err
        raise


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def read_status(run_dir: Path) -> dict[str, Any]:
    """status.json, or {} when there is none (or it is unreadable)."""
    try:
        return read_json(Path(run_dir) / STATUS)
    except (OSError, ValueError):
        return {}


_status_lock = threading.Lock()  # the heartbeat thread and the main thread both rewrite status.json


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


def _pid_alive(pid: int) -> bool:
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
        return "running" if _pid_alive(int(status["pid"])) else "dead"
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


# Keys that cannot change a result: where things are written, what is logged and shown, how data is fed. Two
# runs whose resolved configs differ only here are the same job (tests/test_integrity.py lists why each is safe).
NON_RESULT_KEYS = (
    "paths",
    "logger",
    "tags",
    "task_name",
    "ckpt_path",
    "export_model",
    "dataset.num_workers",
    "dataset.cache_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.default_root_dir",
    "callbacks.progress_bar",
    "callbacks.model_summary",
    "callbacks.lr_monitor",
    "checkpoint_policy",
    "callbacks.model_checkpoint.policy",  # what is kept on disk, not what is learnt
)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def result_config(cfg: Any) -> dict[str, Any]:
    """The run's resolved config (a DictConfig) without NON_RESULT_KEYS, flattened to dotted keys (JSON-able)."""
    from omegaconf import OmegaConf, open_dict

    # Where the run is written is not part of its identity; with placeholders, keys that interpolate it
    # (checkpoint dirpath) resolve the same for every dir, and before Hydra knows the job's dir.
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.pop("hydra", None)
        if cfg.get("paths") is not None:
            cfg.paths.output_dir, cfg.paths.log_dir = "<run dir>", "<log dir>"
    flat = _flatten(OmegaConf.to_container(cfg, resolve=True))
    return {
        k: json.loads(json.dumps(v, default=str))
        for k, v in sorted(flat.items())
        if not any(k == n or k.startswith(n + ".") for n in NON_RESULT_KEYS)
    }


def digest(flat: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differing_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """`key: old -> new` for every key whose value differs: changed values first, then keys on one side only."""
    missing = "<unset>"
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k, missing) != new.get(k, missing)]
    keys.sort(key=lambda k: k not in old or k not in new)
    return [f"{k}: {old.get(k, missing)!r} -> {new.get(k, missing)!r}" for k in keys]


def write_resolved(run_dir: Path, flat: Mapping[str, Any]) -> str:
    value = digest(flat)
    write_json(Path(run_dir) / RESOLVED, {"digest": value, "config": dict(flat)})
    return value


def read_resolved(run_dir: Path) -> dict[str, Any] | None:
    try:
        return read_json(Path(run_dir) / RESOLVED)
    except (OSError, ValueError):
        return None


def config_changes(run_dir: Path, config: Mapping[str, Any]) -> list[str] | None:
    """How `config` differs from the result config `run_dir` recorded (`key: old -> new`): [] for the same run,
    None when the dir recorded none."""
    recorded = read_resolved(run_dir)
    if recorded is None:
        return None
    if recorded.get("digest") == digest(config):
        return []
    return differing_keys(recorded.get("config") or {}, config) or ["(config digest differs)"]


def holds_results(run_dir: Path) -> bool:
    """Whether a dir holds (part of) a run: its status, metrics or checkpoints."""
    run_dir = Path(run_dir)
    return any((run_dir / name).exists() for name in (STATUS, METRICS, RESOLVED)) or any(
        (run_dir / CHECKPOINTS).glob("*.ckpt")
    )


def write_predictions(path: Path, ids: Sequence[str], labels: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """test_predictions.csv: id, label, pred, score_<label>... (multi-label: labels joined by '|')."""

    def names(value: Any) -> str:
        if isinstance(value, list):  # multi-hot
            return "|".join(label for label, on in zip(labels, value) if on)
        return labels[value]

    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "label", "pred", *[f"score_{label}" for label in labels]])
        for row in sorted(rows, key=lambda r: r["idx"]):
            writer.writerow(
                [ids[row["idx"]], names(row["label"]), names(row["pred"]), *[f"{s:.6f}" for s in row["scores"]]]
            )


def resume_checkpoint(run_dir: Path) -> Path | None:
    """Where an interrupted attempt of this run stopped: `resume.ckpt` (the exact position, saved on the signal),
    else `last.ckpt` (the end of the last epoch), else None (start from scratch). A truncated or unreadable one
    (a kill during a write on a filesystem without atomic rename) is skipped for the previous good one."""
    import logging

    from lmlab.checkpoint_io import readable

    problems = []
    for name in (RESUME_CKPT, LAST_CKPT):
        path = Path(run_dir) / CHECKPOINTS / name
        if path.is_file():
            problem = readable(path)
            if problem is None:
                if problems:
                    logging.getLogger("lmlab.runfiles").warning("%s; resuming from %s instead", problems[-1], path)
                return path
            problems.append(problem)
    if problems:
        raise LmlabError(" ".join(problems) + " No readable checkpoint is left in this run dir: start a new run.")
    return None


def find_checkpoint(ckpt_path: str | Path, purpose: str) -> Path:
    """What `ckpt_path=` means. A .ckpt file is itself; a run dir means, for `purpose="resume"`, where it stopped
    (`resume_checkpoint`), for `purpose="eval"`, its best checkpoint (metrics.json), else last.ckpt."""
    path = Path(ckpt_path)
    if path.is_dir():
        found: Path | None = None
        if purpose == "eval" and (path / METRICS).is_file():
            best = read_json(path / METRICS).get("best/ckpt_path")
            found = path / best if best else None
        found = found or resume_checkpoint(path)
        if found is None and (path / METRICS).is_file():  # completed; checkpoint_policy=compact removed last.ckpt
            best = read_json(path / METRICS).get("best/ckpt_path")
            found = path / best if best and (path / best).is_file() else None
        if found is None:
            raise LmlabError(
                f"ckpt_path={str(ckpt_path)!r}: this run dir has no checkpoint ({path / CHECKPOINTS} "
                f"holds no {RESUME_CKPT} or {LAST_CKPT}). Give a .ckpt file or a run dir that has one."
            )
        path = found
    if not path.is_file():
        raise LmlabError(
            f"ckpt_path={str(ckpt_path)!r}: no checkpoint at {path}. Give a .ckpt file or a run dir "
            f"that has checkpoints/{LAST_CKPT}."
        )
    return path


def checkpoint_meta(path: Path) -> tuple[int, dict[str, Any]]:
    """A checkpoint's epoch and lmlab metadata (run config, data fingerprint), without reading its tensors
    into memory (mmap), so asking a 500 MB checkpoint which run wrote it is cheap."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    return int(checkpoint.get("epoch", 0)), dict(checkpoint.get("lmlab") or {})
