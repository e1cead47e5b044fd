"""Read back what wandb logged offline: wandb 0.31 keeps config and summary only in the binary `run-<id>.wandb`
log. Its framing is LevelDB's log format (32 KiB blocks, 7-byte record headers, records split across blocks as
FIRST/MIDDLE/LAST) after a 7-byte `:W&B` file header; each record is a `wandb_internal_pb2.Record`. wandb
0.31 ships no Python reader for it (the old `wandb.sdk.internal.datastore` is gone), hence these few lines.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B", f"{path}: not a W&B transaction log (header {ident!r})"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer too small for a header: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (_FULL, _FIRST) else buf + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            yield record


def _items(update: Any) -> Iterator[tuple[str, Any]]:
    for item in update:
        key = item.key or "/".join(item.nested_key)
        yield key, json.loads(item.value_json)


def read_run(run_file: Path) -> dict[str, Any]:
    """{id, name, group, job_type, tags, config, summary, files} of one offline run (later updates win)."""
    out: dict[str, Any] = {"config": {}, "summary": {}, "files": []}
    for r in records(run_file):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(
                id=r.run.run_id,
                name=r.run.display_name,
                group=r.run.run_group,
                job_type=r.run.job_type,
                tags=list(r.run.tags),
            )
            out["config"].update(_items(r.run.config.update))
        elif kind == "config":
            out["config"].update(_items(r.config.update))
        elif kind == "summary":
            out["summary"].update(_items(r.summary.update))
        elif kind == "files":
            out["files"] += [f.path for f in r.files.files]
    return out


def offline_runs(job_dir: Path) -> list[dict[str, Any]]:
    return [read_run(p) for p in sorted(Path(job_dir).glob("wandb/offline-run-*/run-*.wandb"))]
