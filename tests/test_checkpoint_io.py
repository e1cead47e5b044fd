"""Atomic checkpoint writes (lmlab.checkpoint_io): a kill or an error mid-write, a full disk, a truncated file."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lmlab import rundir
from lmlab.errors import LmlabError
from lmlab.rundir.atomic import FAULT_ENV, AtomicCheckpointIO, _Writer
from lmlab.rundir.checkpoints import readable
from tests.conftest import TINY, compose_train, run_cli, single_run_dir

SHM = Path("/dev/shm")


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A log dir on another filesystem than /tmp (where Lightning's fsspec transaction puts its temp file)."""
    if not (SHM.is_dir() and os.access(SHM, os.W_OK)):
        pytest.skip("/dev/shm is missing or not writable")
    if SHM.stat().st_dev == Path(tempfile.gettempdir()).stat().st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the temp dir: a rename there is no cross-fs copy")
    path = Path(tempfile.mkdtemp(prefix="lmlab-ckpt-test-", dir=SHM))
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs: every checkpoint of a tiny BERT (~12 MB) hits ENOSPC on it."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True
        )
    except FileNotFoundError:
        pytest.skip("no mount command")
    if done.returncode:
        pytest.skip(f"mounting a small tmpfs is not permitted here (needs root): {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_kill_during_checkpoint_write_keeps_previous_last_ckpt_and_resumes(shm_dir: Path, tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmpdir"  # the killed process's /tmp: Lightning's transaction would leave its orphan here
    tmpdir.mkdir()
    args = [*TINY, "trainer.max_epochs=2", f"paths.log_dir={shm_dir}"]
    # The 2nd write of last.ckpt (end of epoch 1) is killed after its first MB: epoch 0's last.ckpt must survive.
    killed = run_cli("train.py", *args, env={FAULT_ENV: "2:SIGKILL:last.ckpt", "TMPDIR": str(tmpdir)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = single_run_dir(shm_dir)
    checkpoints = run_dir / rundir.CHECKPOINTS
    assert readable(checkpoints / "last.ckpt") is None
    assert rundir.checkpoint_meta(checkpoints / "last.ckpt")[0] == 0  # epoch 0's, complete
    # The partial write is a hidden temp file, never anything named like a checkpoint.
    leftovers = [n for n in _names(checkpoints) if n.startswith(".")]
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp"), _names(checkpoints)
    assert all(readable(p) is None for p in checkpoints.glob("*.ckpt"))
    big = [p for p in tmpdir.rglob("*") if p.is_file() and p.stat().st_size > 100_000]
    assert not big, f"orphans in TMPDIR: {big}"

    resumed = run_cli("train.py", *args, f"ckpt_path={run_dir}", env={"TMPDIR": str(tmpdir)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(shm_dir.rglob("*.tmp")), "the killed write's temp file is removed by the next load/save there"
    # The resumed run may live in the same run dir or a new one: the newest status is that run's.
    latest = max(shm_dir.glob(f"train/runs/*/{rundir.STATUS}"), key=lambda p: p.stat().st_mtime_ns)
    assert rundir.read_json(latest)["status"] == "completed"


@pytest.mark.parametrize(
    "error", [OSError(errno.EIO, "Input/output error"), KeyboardInterrupt()], ids=["io-error", "ctrl-c"]
)
def test_error_during_write_leaves_old_checkpoint_byte_identical(
    tmp_path: Path, monkeypatch: Any, error: BaseException
) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.arange(10)}}, target)
    before = target.read_bytes()

    writes = {"n": 0}
    real_write = _Writer.write

    def failing_write(self: _Writer, data: Any) -> int:
        writes["n"] += 1
        if writes["n"] == 3:  # some bytes are in the temp file already
            raise error
        return real_write(self, data)

    monkeypatch.setattr(_Writer, "write", failing_write)
    with pytest.raises(BaseException):  # noqa: B017 - torch re-raises an OSError from write as RuntimeError
        io.save_checkpoint({"state_dict": {"w": torch.randn(100_000)}}, target)
    assert writes["n"] == 3
    assert target.read_bytes() == before
    assert _names(tmp_path) == ["last.ckpt"]


def test_full_disk_fails_with_no_space_left_and_leaves_nothing_that_looks_valid(tiny_fs: Path) -> None:
    io = AtomicCheckpointIO()
    old = tiny_fs / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.arange(10)}}, old)
    before = old.read_bytes()
    for target in (tiny_fs / "epoch001.ckpt", old):  # a new name, and overwriting a good one
        with pytest.raises(LmlabError, match=f"no space left on {tiny_fs} .*paths.log_dir="):
            io.save_checkpoint({"state_dict": {"w": torch.randn(600_000)}}, target)  # 2.4 MB
        assert _names(tiny_fs) == ["last.ckpt"]
        assert old.read_bytes() == before


def test_full_disk_during_training_fails_the_run_with_the_message(tiny_fs: Path) -> None:
    """The whole chain: Lightning's ModelCheckpoint -> the plugin -> run_task's status (the temp file's space is
    freed before status.json and traceback.txt are written)."""
    from lmlab.launch.job import run_task
    from lmlab.train import train

    run_dir = tiny_fs / "run"
    cfg = compose_train(TINY, run_dir)
    with pytest.raises((SystemExit, LmlabError)):  # SystemExit(1) when Hydra's mode says a single CLI run
        run_task(train, cfg)
    status = rundir.read_json(run_dir / rundir.STATUS)
    assert status["status"] == "failed" and f"no space left on {run_dir / 'checkpoints'}" in status["error"]
    assert not [p for p in run_dir.rglob("*") if p.suffix in (".ckpt", ".tmp")]


def test_readable_names_a_truncated_checkpoint(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    good = tmp_path / "epoch000.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.randn(1000)}, "epoch": 0}, good)
    assert readable(good) is None
    data = good.read_bytes()
    for name, content in {
        "half.ckpt": data[: len(data) // 2],
        "empty.ckpt": b"",
        "cut.ckpt": data[:-10],
        "junk.ckpt": b"not a checkpoint" * 100,
    }.items():
        bad = tmp_path / name
        bad.write_bytes(content)
        message = readable(bad)
        assert message and str(bad) in message and "truncated or unreadable" in message
        assert "previous good checkpoint" in message and "weights_only" not in message
        with pytest.raises(LmlabError, match="truncated or unreadable"):  # resuming from it says the same
            io.load_checkpoint(bad)
    assert io.load_checkpoint(good, weights_only=True)["epoch"] == 0


def test_trainer_gets_the_atomic_checkpoint_io_on_each_strategy(tmp_path: Path, monkeypatch: Any) -> None:
    """Lightning hands the plugin to the strategy it builds (checked without launching anything); FSDP with a full
    state dict saves through it too (Lightning builds FSDP only with a GPU, so its strategy is driven directly)."""
    import pytorch_lightning as pl
    from omegaconf import OmegaConf
    from pytorch_lightning.strategies import FSDPStrategy

    from lmlab.launch.ddp import trainer_plugins

    cfg = OmegaConf.create({"_target_": "pytorch_lightning.Trainer"})
    for strategy, devices in (("auto", 1), ("ddp", 2)):
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=devices,
            strategy=strategy,
            logger=False,
            enable_progress_bar=False,
            **trainer_plugins(cfg),
        )
        assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO), strategy

    saved: list[Path] = []
    from lmlab.rundir import atomic

    monkeypatch.setattr(atomic, "atomic_save", lambda obj, target: (saved.append(target), torch.save(obj, target)))
    fsdp = FSDPStrategy(state_dict_type="full", checkpoint_io=trainer_plugins(cfg)["plugins"][0])
    fsdp.save_checkpoint({"state_dict": {"w": torch.arange(3)}}, tmp_path / "full.ckpt")
    assert saved == [tmp_path / "full.ckpt"]

    # A config that brings its own CheckpointIO keeps it (Lightning refuses two).
    own = OmegaConf.create({"plugins": [{"_target_": "lightning_fabric.plugins.TorchCheckpointIO"}]})
    assert not any(isinstance(p, AtomicCheckpointIO) for p in trainer_plugins(own).get("plugins", []))
