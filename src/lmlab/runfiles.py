"""Everything a run writes into its directory, in one place; the report and eval read back through it."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

METRICS = "metrics.json"
STATUS = "status.json"
PREDICTIONS = "test_predictions.csv"
SAMPLES = "samples.md"
TRACEBACK = "traceback.txt"
CHECKPOINTS = "checkpoints"
EXPORT = "model"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomic write: a reader never sees half a file, and a crash never leaves one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2, sort_keys=False, default=str)
        out.write("\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def update_status(run_dir: Path, status: str, **fields: Any) -> dict[str, Any]:
    """status.json: running -> completed | failed | requeued; `attempts` counts starts of this job."""
    path = Path(run_dir) / STATUS
    current = read_json(path) if path.exists() else {"attempts": 0}
    if status == "running":
        current.update(attempts=current.get("attempts", 0) + 1, started=now(), ended=None, error=None,
                       traceback_file=None)
    else:
        current["ended"] = now()
    current["status"] = status
    current.update(fields)
    write_json(path, current)
    return current


def write_predictions(path: Path, ids: Sequence[str], labels: Sequence[str],
                      rows: Sequence[Mapping[str, Any]]) -> None:
    """test_predictions.csv: id, label, pred, score_<label>... (multi-label: labels joined by '|')."""
    def names(value: Any) -> str:
        if isinstance(value, list):  # multi-hot
            return "|".join(label for label, on in zip(labels, value) if on)
        return labels[value]

    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "label", "pred", *[f"score_{label}" for label in labels]])
        for row in sorted(rows, key=lambda r: r["idx"]):
            writer.writerow([ids[row["idx"]], names(row["label"]), names(row["pred"]),
                             *[f"{s:.6f}" for s in row["scores"]]])


def checkpoint_meta(path: Path) -> tuple[int, dict[str, Any]]:
    """A checkpoint's epoch and lmlab metadata (run config, data fingerprint), without reading its tensors
    into memory (mmap), so asking a 500 MB checkpoint which run wrote it is cheap."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    return int(checkpoint.get("epoch", 0)), dict(checkpoint.get("lmlab") or {})
