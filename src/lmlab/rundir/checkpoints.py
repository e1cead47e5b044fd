"""The one place that finds, checks and compacts checkpoints: what `ckpt_path=` means, where an interrupted
run resumes, whether a file is complete, whether a checkpoint fits this data.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lmlab.errors import LmlabError
from lmlab.rundir.files import CHECKPOINTS, LAST_CKPT, METRICS, RESUME_CKPT, read_json

log = logging.getLogger("lmlab.rundir")


def resume_checkpoint(run_dir: Path) -> Path | None:
    """Where an interrupted attempt of this run stopped: `resume.ckpt` (the exact position, saved on the signal),
    else `last.ckpt` (the end of the last epoch), else None (start from scratch). A truncated or unreadable one
    (a kill during a write on a filesystem without atomic rename) is skipped for the previous good one."""
    import logging

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


def readable(path: str | Path) -> str | None:
    """None when `path` looks like a complete checkpoint, else a message for the user (cheap: the zip's central
    directory, which lives at the end of the file, and the CRC of the small pickle record; tensors are not read).

    A sharded FSDP checkpoint (a directory) counts as complete when it has Lightning's `meta.pt`.
    """
    path = Path(path)
    try:
        if path.is_dir():
            reason = None if (path / "meta.pt").is_file() else "a directory without meta.pt"
        elif not path.is_file():
            reason = "no such file"
        else:
            with zipfile.ZipFile(path) as archive:
                pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                reason = None if pickles else "no data.pkl record"
                if pickles:
                    archive.read(pickles[0])  # raises BadZipFile on a CRC mismatch
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
        reason = f"{type(err).__name__}: {err}"
    if reason is None:
        return None
    return (
        f"checkpoint {path} is truncated or unreadable ({reason}): its write was probably cut short (a crash, "
        f"kill or full disk). Use the previous good checkpoint instead, if there is one (another .ckpt in "
        f"{path.parent}), or start the run afresh; delete this file once you no longer need it."
    )


def check_resumable(ckpt: Path, datamodule: Any) -> None:
    """Resuming on other data, or with the labels in another order, would silently remap what the weights mean."""
    info = checkpoint_meta(Path(ckpt))[1]
    if not info:
        return
    labels = info.get("labels")
    if labels is not None and list(labels) != list(getattr(datamodule, "labels", None) or []):
        raise LmlabError(
            f"{ckpt} was trained with labels {labels} (in this order), but the data now gives "
            f"{list(datamodule.labels or [])}: the classifier's outputs would mean other classes. "
            f"Resume with the same data and dataset.labels (e.g. dataset.labels=[{','.join(labels)}])."
        )
    if info.get("data_fingerprint"):
        check_same_data(
            ckpt, info, datamodule, "Resume with the same dataset settings, or start a new run without ckpt_path."
        )


def check_same_data(ckpt: Path, info: dict[str, Any], datamodule: Any, fix: str = "") -> None:
    """The data split now must be the one the checkpoint was trained on (its fingerprint), for resume and eval."""
    if datamodule.data_fingerprint != info.get("data_fingerprint"):
        raise LmlabError(
            f"The data differs from what {ckpt} was trained on (fingerprint {datamodule.data_fingerprint}"
            f" now, {info.get('data_fingerprint')} then): the source files or split settings changed."
            + (f" {fix}" if fix else "")
        )


def start_from_weights(ckpt: Path, model: Any) -> bool:
    """A checkpoint without optimizer state (a best checkpoint under checkpoint_policy=compact, e.g. of a completed
    run whose last.ckpt was removed) cannot resume the optimizer: load its weights; optimizer, scheduler and the
    epoch count start afresh. True when that is what happened."""
    import torch

    checkpoint = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=False)
    if "optimizer_states" in checkpoint:
        return False
    model.load_state_dict(checkpoint["state_dict"])
    log.warning(
        "%s holds weights but no optimizer state (checkpoint_policy=compact): training continues from these "
        "weights with a fresh optimizer, lr schedule and epoch count",
        ckpt,
    )
    return True


def compact_run_dir(cfg: DictConfig, run_dir: Path, best_path: str | None) -> None:
    """checkpoint_policy=compact: a completed run keeps its best checkpoint (weights) and drops last.ckpt, the only
    copy of the optimizer state, which nothing needs once the run is complete."""
    last = run_dir / CHECKPOINTS / LAST_CKPT
    if (
        cfg.get("checkpoint_policy", "keep") == "compact"
        and best_path
        and last.is_file()
        and last.resolve() != Path(best_path).resolve()
    ):
        last.unlink()


def run_dir_of(ckpt: Path) -> Path:
    """The run dir a checkpoint path belongs to (`<run>/checkpoints/x.ckpt` -> `<run>`)."""
    if ckpt.is_file() and ckpt.parent.name == "checkpoints":
        return ckpt.parent.parent
    return ckpt


def requeue_checkpoint(run_dir: Path) -> Path:
    """Where an interruption saves the exact position (`resume.ckpt`; removed when a fit ends normally)."""
    return Path(run_dir) / CHECKPOINTS / RESUME_CKPT


def resume_point(run_dir: Path, ckpt_path: str | None, datamodule: Any, model: Any) -> Path | None:
    """The checkpoint `trainer.fit` resumes from, or None to start afresh. An earlier attempt of this same job
    (launch.job checked: same config, unfinished) continues where it stopped, in this dir; otherwise `ckpt_path=`
    resumes another run's checkpoint into this new dir. A weights-only checkpoint is loaded into `model` instead."""
    resume = resume_checkpoint(run_dir)
    if resume is None and ckpt_path:
        if Path(ckpt_path).resolve() == Path(run_dir).resolve():  # killed before its first checkpoint
            log.info("%s has no checkpoint yet: this attempt starts from the beginning", run_dir)
        else:
            resume = find_checkpoint(ckpt_path, "resume")
    if resume is None:
        return None
    log.info("resuming from %s", resume)
    check_resumable(resume, datamodule)
    return None if start_from_weights(resume, model) else resume


def after_fit(trainer: Any, run_dir: Path) -> tuple[str | None, dict[str, Any]]:
    """After a completed fit: the best checkpoint (None: score the final weights) and the metrics.json fields that
    name it; the interruption checkpoint of an earlier attempt is no longer needed."""
    # The monitoring checkpoint callback knows the best model; `last_checkpoint` only keeps the latest.
    best = next((c for c in trainer.checkpoint_callbacks if c.monitor and c.best_model_path), None)
    best_path = best.best_model_path if best else None
    if trainer.is_global_zero:
        requeue_checkpoint(run_dir).unlink(missing_ok=True)
    # The epoch of the final weights (0-based, like a checkpoint's): Lightning counts the last epoch as done even
    # when trainer.max_steps ended it early.
    fit_epoch = max(trainer.current_epoch - 1, 0)
    return best_path, {
        "best/epoch": checkpoint_meta(Path(best_path))[0] if best_path else fit_epoch,
        "best/ckpt_path": os.path.relpath(best_path, run_dir) if best_path else None,
    }


__all__ = [
    "resume_checkpoint",
    "find_checkpoint",
    "checkpoint_meta",
    "readable",
    "check_resumable",
    "check_same_data",
    "start_from_weights",
    "compact_run_dir",
    "run_dir_of",
    "requeue_checkpoint",
    "resume_point",
    "after_fit",
]
