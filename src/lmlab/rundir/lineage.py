"""Where a run's weights and data came from: per-split example hashes and the `model.init_from` parent.

Every run writes `<run dir>/example_hashes.json`: per split, the sorted 12-hex-digit SHA-256 prefixes of each
example's content (text and text pair, not its id, so the same article under another id or from another source
still matches), and the manifest records their per-split digests. A run started with `model.init_from` records
in its manifest's `lineage` the parent run dir, its data fingerprint, commit, `optimized_metric` (name and
value), task, and how many of this run's test examples were in the parent's training split — warned about when
any were (the parent then saw this run's test texts: its test numbers are not clean). A run resumed from another
run's checkpoint (`ckpt_path=`, e.g. a decay branch of experiment=wsd_branches) records the same about that run,
plus the checkpoint, its optimizer step and (a branch checkpoint) the token count it was saved at.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab import rundir
from lmlab.errors import LmlabError

log = logging.getLogger(__name__)


def example_hash(text: str, text_pair: str | None = None) -> str:
    content = text if text_pair is None else f"{text}\x00{text_pair}"
    return hashlib.sha256(content.encode("utf-8")).hexdigest()[:12]


def split_hashes(splits: Mapping[str, Sequence[Any]]) -> dict[str, list[str]]:
    """Per split, the sorted example hashes. A streamed split (data.streaming.HashSplit) gives its own from one pass
    over the corpus shared by the three splits, instead of one pass per split."""
    return {
        split: examples.hashes()
        if hasattr(examples, "hashes")
        else sorted(example_hash(ex.text, ex.text_pair) for ex in examples)
        for split, examples in splits.items()
    }


def write_example_hashes(run_dir: Path, splits: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """`example_hashes.json` in the run dir; returns the manifest's summary (file + per-split digests)."""
    hashes = split_hashes(splits)
    rundir.write_json(
        Path(run_dir) / rundir.EXAMPLE_HASHES, {"hash": "sha256(text[\\0text_pair])[:12], sorted", **hashes}
    )
    return {
        "file": rundir.EXAMPLE_HASHES,
        "digest": {split: hashlib.sha256("\n".join(h).encode()).hexdigest()[:16] for split, h in hashes.items()},
    }


def read_example_hashes(run_dir: Path) -> dict[str, list[str]] | None:
    path = Path(run_dir) / rundir.EXAMPLE_HASHES
    if not path.is_file():
        return None
    return {k: v for k, v in rundir.read_json(path).items() if isinstance(v, list)}


def lineage(
    init_from: str | None,
    splits: Mapping[str, Sequence[Any]],
    ckpt_path: str | None = None,
    run_dir: Path | None = None,
) -> dict[str, Any] | None:
    """The manifest's `lineage` for a run started from `init_from`, or resumed from another run's checkpoint
    (`ckpt_path=`: a decay branch of experiment=wsd_branches, a resume into a new dir); None for neither. The
    checkpoint wins: its weights overwrite what init_from loaded."""
    resumed = _resumed_from(ckpt_path, run_dir)
    if resumed is not None:
        ckpt, parent_dir = resumed
        out: dict[str, Any] = {"resumed_from": str(ckpt), "parent_run_dir": str(parent_dir)}
        out.update(_checkpoint_position(ckpt, parent_dir))
        return _describe_parent(out, parent_dir, splits, f"ckpt_path={ckpt_path}")
    if not init_from:
        return None
    parent = resolve(init_from)
    out = {
        "init_from": str(init_from),
        "export": str(parent.export),
        "parent_run_dir": str(parent.run_dir) if parent.run_dir else None,
    }
    if parent.run_dir is None:
        log.warning(
            "model.init_from=%s is a model dir outside any run dir: its lineage (data, commit) and training "
            "data are unknown, so test-set overlap cannot be checked",
            init_from,
        )
        return out
    return _describe_parent(out, parent.run_dir, splits, f"model.init_from={init_from}")


def _resumed_from(ckpt_path: str | None, run_dir: Path | None) -> tuple[Path, Path] | None:
    """(checkpoint, its run dir) when `ckpt_path` names a checkpoint of another run dir than `run_dir`."""
    if not ckpt_path or run_dir is None:
        return None
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        if path.resolve() == Path(run_dir).resolve():  # this run's own earlier attempt: no parent
            return None
        path = rundir.find_checkpoint(path, "resume")
    if not path.is_file():
        return None  # resume_point says what is wrong with it
    parent = rundir.run_dir_of(path.resolve())
    if parent == path.resolve() or parent == Path(run_dir).resolve():
        return None
    return path.resolve(), parent


def _checkpoint_position(ckpt: Path, parent_dir: Path) -> dict[str, Any]:
    """Where in the parent's training the checkpoint was saved: its optimizer step, and the tokens the parent
    recorded for it (a branch checkpoint, manifest.json `branch_checkpoints`; None for other checkpoints)."""
    import torch

    step = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=False).get("global_step")
    entries = read_optional(parent_dir / rundir.MANIFEST).get("branch_checkpoints") or []
    entry = next((e for e in entries if (parent_dir / e.get("path", "")).resolve() == ckpt), {})
    return {"checkpoint_step": step, "checkpoint_tokens": entry.get("tokens"), "checkpoint_tokens_trained":
            entry.get("tokens_trained")}  # fmt: skip


def _describe_parent(
    out: dict[str, Any], parent_dir: Path, splits: Mapping[str, Sequence[Any]], what: str
) -> dict[str, Any]:
    """`out` plus the parent run's data fingerprint, commit, task, optimized_metric and status, and how many of
    this run's test examples were in the parent's training split (warned about when any were)."""
    manifest = read_optional(parent_dir / rundir.MANIFEST)
    metrics = read_optional(parent_dir / rundir.METRICS)
    name = ((rundir.read_resolved(parent_dir) or {}).get("config") or {}).get("optimized_metric")
    out.update(
        {
            "parent_data_fingerprint": (manifest.get("data") or {}).get("fingerprint"),
            "parent_commit": (manifest.get("git") or {}).get("commit"),
            "parent_task": metrics.get("meta/task"),
            "parent_optimized_metric": {"name": name, "value": metrics.get(name) if name else None},
            "parent_status": rundir.read_status(parent_dir).get("status"),
        }
    )
    theirs = read_example_hashes(parent_dir)
    if theirs is None:
        out["parent_train_in_test"] = None
        log.warning(
            "%s: the parent run recorded no %s, so whether its training data holds this run's test examples "
            "cannot be checked",
            what,
            rundir.EXAMPLE_HASHES,
        )
        return out
    test = split_hashes({"test": splits["test"]})["test"]
    overlap = len(set(test) & set(theirs.get("train") or []))
    out["parent_train_in_test"] = overlap
    if overlap:
        log.warning(
            "%s: %d of this run's %d test examples were in the parent's training data: the parent saw them, so "
            "this run's test numbers are optimistic. Use the same split for both stages (dataset.split_seed, "
            "dataset.fractions, the same source).",
            what,
            overlap,
            len(test),
        )
    return out


def read_optional(path: Path) -> dict[str, Any]:
    """A run file's JSON, or {} when it is missing or unreadable (a parent's files are informative, not required)."""
    try:
        return rundir.read_json(path) if path.is_file() else {}
    except ValueError:
        return {}


@dataclass
class Parent:
    """A resolved `model.init_from`: the exported model dir, and the run dir it came from (if any)."""

    export: Path
    run_dir: Path | None
    applied: int = 0


def parent_path(init_from: str | None, seed: Any) -> str | None:
    """`model.init_from` with `{seed}` replaced by the run's seed: one sweep over seeds pairs each job with the
    parent of its own seed (`model.init_from=logs/dapt/pretrain/seed={seed}`). Hydra resolves `${...}` in sweep
    values once, at sweep time, so `${seed}` there would name the launching config's seed, not the job's."""
    if not init_from:
        return None
    return str(init_from).replace("{seed}", str(seed))


def resolve(init_from: str | Path) -> Parent:
    """A run dir (its `model/` export) or an exported model dir (`config.json` + weights)."""
    path = Path(init_from).expanduser()
    if not path.exists():
        raise LmlabError(
            f"model.init_from={init_from}: no such run dir or model dir. Give the run dir of a "
            f"finished run (it holds {rundir.EXPORT}/) or an exported model dir."
        )
    path = path.resolve()
    if (path / rundir.EXPORT / "config.json").is_file():
        return Parent(path / rundir.EXPORT, path)
    if (path / "config.json").is_file():
        run_dir = path.parent if (path.parent / rundir.MANIFEST).is_file() else None
        return Parent(path, run_dir)
    if (path / rundir.METRICS).is_file() or (path / rundir.STATUS).is_file():
        state = rundir.read_status(path).get("status")
        raise LmlabError(
            f"model.init_from={init_from} is a run dir (status {state!r}) with no exported model "
            f"({rundir.EXPORT}/config.json): the parent run must finish with export_model=true (the "
            f"default). Re-run it, or point model.init_from at an exported model dir."
        )
    raise LmlabError(
        f"model.init_from={init_from} holds neither an exported model (config.json) nor a run dir's "
        f"{rundir.EXPORT}/: give a finished run's dir or a save_pretrained dir."
    )
