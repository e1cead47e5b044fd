"""The run dir in one place: the names and formats of what a run writes (status, metrics, predictions, resolved
config + digest), who may write into a dir (the lock), whether a recorded run is still alive (heartbeat), and
which checkpoint a path means. train, eval, the sweepers and the report read run dirs through this module.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

METRICS = "metrics.json"
STATUS = "status.json"
PREDICTIONS = "test_predictions.csv"
SAMPLES = "samples.md"
CURVES = "curves.csv"  # one row per validation during fit: step, tokens, model FLOPs, val/* (callbacks.eval_schedule)
TRACEBACK = "traceback.txt"
CHECKPOINTS = "checkpoints"
EXPORT = "model"
MANIFEST = "manifest.json"
EXAMPLE_HASHES = "example_hashes.json"  # per-split content hashes of the examples (lmlab.lineage)
RESOLVED = "resolved_config.json"  # the config as the run used it + its digest: what "the same job" means
RESUME_CKPT = "resume.ckpt"  # the exact position where an interrupted attempt stopped
LAST_CKPT = "last.ckpt"
BRANCH_CKPT = "branch-tokens{tokens}.ckpt"  # callbacks.branch_checkpoints: a complete checkpoint at N tokens
DATA_POSITIONS = "data_positions.rank{rank}.jsonl"  # dataset.log_positions: what each training batch read
LOCK = ".lock"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def umask_mode(mode: int = 0o666) -> int:
    """`mode` as the umask lets files be created: mkstemp makes 0600 files, which a teammate cannot read."""
    current = os.umask(0)
    os.umask(current)
    return mode & ~current


def follow_umask(directory: Path) -> None:
    """Give every file (0666) and dir (0777) under `directory` the mode the umask allows, like any file the run
    writes: safetensors >= 0.8 writes `model.safetensors` / `adapter_model.safetensors` through a 0600 temp file, so
    a teammate could not read an exported model even with umask 0022."""
    files, dirs = umask_mode(0o666), umask_mode(0o777)
    directory = Path(directory)
    if not directory.is_dir():
        return
    for path in [directory, *directory.rglob("*")]:
        if path.is_symlink():
            continue
        wanted = dirs if path.is_dir() else files
        if path.stat().st_mode & 0o777 != wanted:
            os.chmod(path, wanted)


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


def write_text(path: Path, text: str) -> None:
    """Atomic write of a text file (curves.csv is rewritten at every validation; a kill never leaves half of it)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


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


__all__ = [
    "METRICS",
    "STATUS",
    "PREDICTIONS",
    "SAMPLES",
    "CURVES",
    "TRACEBACK",
    "CHECKPOINTS",
    "EXPORT",
    "MANIFEST",
    "EXAMPLE_HASHES",
    "RESOLVED",
    "RESUME_CKPT",
    "LAST_CKPT",
    "BRANCH_CKPT",
    "DATA_POSITIONS",
    "LOCK",
    "now",
    "umask_mode",
    "follow_umask",
    "write_json",
    "write_text",
    "read_json",
    "write_predictions",
]
