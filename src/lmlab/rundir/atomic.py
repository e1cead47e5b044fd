"""Atomic checkpoint writes on every local filesystem, a clear error on a full disk, and a cheap readability check.

Lightning's `TorchCheckpointIO` writes through an fsspec transaction whose temp file lives in `$TMPDIR`: with the
log dir on another filesystem the "commit" is a copy, so a kill during it truncates the target (destroying the
previous good checkpoint) and leaves the temp file behind in /tmp. `AtomicCheckpointIO` instead writes a hidden
temp file *beside* the target (`.<name>.<pid>@<host>.tmp`, same filesystem), flushes and fsyncs it, then
`os.replace`s it over the target: a reader sees the old file or the new one, never half of one. On any error the
temp file is removed and the previous checkpoint is untouched; a full disk (ENOSPC/EDQUOT) is an `LmlabError`
naming the dir and the fix. Temp files left by a killed process (`kill -9` cannot be cleaned up after) are removed
by the next save or load in that dir, and by `remove_stale_temps`. Remote paths (`s3://...`) keep Lightning's
behaviour.

Test hook (deterministic fault injection, not timing): `LMLAB_FAULT_CKPT_WRITE=<n>[:<SIGNAL>[:<file name>]]`
makes this process's n-th checkpoint save (counting only saves to files of that name, when given) write
`FAULT_AFTER_BYTES` bytes (or all of them, for a smaller checkpoint) to its temp file, flush, and then send itself
SIGNAL (default SIGKILL) before the fsync and rename. E.g. `LMLAB_FAULT_CKPT_WRITE=2:SIGKILL:last.ckpt`.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.types import _PATH

from lmlab.errors import LmlabError
from lmlab.rundir.checkpoints import readable
from lmlab.rundir.status import pid_alive

FAULT_ENV = "LMLAB_FAULT_CKPT_WRITE"
FAULT_AFTER_BYTES = 1 << 20
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_TEMP = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)@(?P<host>[^/]+)\.tmp$")
_fault_saves = 0  # saves counted by the test hook, per process (only rank 0 writes checkpoints)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` with same-directory temp file + fsync + rename, and a readability check on load."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or _is_remote(path):
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        atomic_save(checkpoint, Path(path))

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if not _is_remote(path):
            local = Path(path)
            remove_stale_temps(local.parent)
            # A truncated file would otherwise surface as a zip/pickle traceback from deep inside torch.load.
            if local.is_file() and (problem := readable(local)):
                raise LmlabError(problem)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


def atomic_save(obj: Any, target: Path) -> None:
    """`torch.save(obj, target)` so that `target` is either its old content or the complete new one."""
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent)
    # Same dir = same filesystem, so os.replace is an atomic rename, never a copy.
    tmp = target.parent / f".{target.name}.{os.getpid()}@{socket.gethostname()}.tmp"
    writer: _Writer | None = None
    try:
        # 0o666 & ~umask, like any other file the run writes (mkstemp would make it 0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o666)
        with os.fdopen(fd, "wb") as raw:
            writer = _Writer(raw, _fault_signal(target.name))
            torch.save(obj, writer)  # streamed: no second in-memory copy of a large checkpoint
            writer.done()
            os.fsync(raw.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if _no_space(err, writer):
            raise LmlabError(
                f"no space left on {target.parent} while writing checkpoint {target.name} "
                f"({_free_mb(target.parent)} MB free there now). The new checkpoint was not written and "
                f"{target.name}, if it existed, is untouched. Free space on that disk, or write runs to another "
                f"one: paths.log_dir=<a dir with room>."
            ) from err
        raise
    _fsync_dir(target.parent)  # make the rename itself durable


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temp files of checkpoint writes whose process (on this host) is gone; returns what was removed.
    Those of other hosts are left alone: whether their writer is alive cannot be told from here."""
    removed: list[Path] = []
    host = socket.gethostname()
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match and match["host"] == host and int(match["pid"]) != os.getpid() and not pid_alive(int(match["pid"])):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


class _Writer:
    """The file object torch.save writes to: keeps the OS error (torch re-raises it as a RuntimeError without the
    errno) and runs the test hook's fault."""

    def __init__(self, raw: IO[bytes], fault: signal.Signals | None) -> None:
        self.raw, self.fault, self.written = raw, fault, 0
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        count = self._call(self.raw.write, data)
        self.written += count
        if self.fault is not None and self.written >= FAULT_AFTER_BYTES:
            self._fire()
        return count

    def flush(self) -> None:
        self._call(self.raw.flush)

    def done(self) -> None:
        """All bytes are written: flush them; a fault not fired yet (a checkpoint under FAULT_AFTER_BYTES) fires."""
        self.flush()
        if self.fault is not None:
            self._fire()

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except OSError as err:
            self.error = err
            raise

    def _fire(self) -> None:
        fault, self.fault = self.fault, None
        self.raw.flush()  # the partial bytes really reach the file, as in a real crash mid-write
        os.kill(os.getpid(), fault)  # type: ignore[arg-type]


def _fault_signal(name: str) -> signal.Signals | None:
    """The test hook's signal if this save is the one to interrupt (see the module docstring)."""
    global _fault_saves
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    count, _, rest = spec.partition(":")
    signame, _, only = rest.partition(":")
    if only and only != name:
        return None
    signame = (signame or "SIGKILL").upper()
    try:
        nth, sig = int(count), signal.Signals[signame if signame.startswith("SIG") else f"SIG{signame}"]
    except (ValueError, KeyError) as err:
        raise ValueError(
            f"{FAULT_ENV}={spec!r}: expected <n>[:<SIGNAL>[:<file name>]], e.g. 2:SIGKILL:last.ckpt"
        ) from err
    _fault_saves += 1
    return sig if _fault_saves == nth else None


def _no_space(err: BaseException, writer: _Writer | None) -> bool:
    seen: list[BaseException | None] = [writer.error if writer else None]
    cause: BaseException | None = err
    while cause is not None and len(seen) < 10:
        seen.append(cause)
        cause = cause.__cause__ or cause.__context__
    return any(isinstance(e, OSError) and e.errno in _NO_SPACE for e in seen)


def _is_remote(path: _PATH) -> bool:
    return "://" in str(path)


def _free_mb(directory: Path) -> str:
    try:
        return f"{shutil.disk_usage(directory).free / 2**20:.1f}"
    except OSError:
        return "?"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # not supported by every filesystem; the rename has happened either way
        pass
    finally:
        os.close(fd)
