"""`hydra/launcher=slurm` end to end on the real local cluster (tests/slurm/up.sh): a sweep, a pre-empted job that
requeues and resumes exactly, failures recorded per job, and an impossible request refused at submit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY
from tests.test_slurm_cluster import _CONF, _SKIP_REASON

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(_CONF is None, reason=_SKIP_REASON)]

# Long enough (3 epochs of 20 steps) to be signalled mid-training; final weights are the evaluated ones.
SLURM_TINY = [o for o in TINY if not o.startswith(("trainer.max_epochs", "dataset.max_samples.train"))] + [
    "trainer.max_epochs=3",
    "dataset.max_samples.train=320",
    "callbacks.early_stopping=null",
    "callbacks.model_checkpoint.monitor=null",
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
]


def _sweep(sweep: Path, *overrides: str) -> subprocess.Popen[str]:
    env = {**os.environ, "SLURM_CONF": str(_CONF), "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-m", *SLURM_TINY, *overrides, f"hydra.sweep.dir={sweep}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _job_dir(sweep: Path, override: str, timeout: float = 120) -> Path:
    """The job dir whose overrides contain `override` (however the sweep names its subdirs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for overrides in sweep.glob("*/.hydra/overrides.yaml"):
            if override in overrides.read_text():
                return overrides.parent.parent
        time.sleep(0.5)
    pytest.fail(f"no job dir with {override} under {sweep} after {timeout} s")


def _slurm_id(job_dir: Path) -> str:
    hydra_yaml = (job_dir / ".hydra" / "hydra.yaml").read_text()
    return next(
        line.split(":", 1)[1].strip().strip("'") for line in hydra_yaml.splitlines() if line.strip().startswith("id:")
    )


def _wait_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.5)


def _status(job_dir: Path) -> dict:
    return json.loads((job_dir / "status.json").read_text())


def _signal(job_id: str, sig: str) -> None:
    res = subprocess.run(
        ["scancel", f"--signal={sig}", *(["--full"] if sig == "KILL" else []), job_id],
        env={**os.environ, "SLURM_CONF": str(_CONF)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr


def _kill_job_processes(job_id: str) -> None:
    """SIGKILL the job's processes (as the OOM killer or a node failure would): no handler runs, nothing is written."""
    import signal

    env = {**os.environ, "SLURM_CONF": str(_CONF)}
    raw, nodelist = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%A %N"], env=env, capture_output=True, text=True, timeout=30
    ).stdout.split()  # listpids wants the raw id, not <array>_<task>
    nodes = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], env=env, capture_output=True, text=True, timeout=30
    ).stdout.split()
    pids = []
    for node in nodes:  # several slurmd on this host (n1, n2): listpids must name the node it asks
        res = subprocess.run(["scontrol", "listpids", raw, node], env=env, capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        pids += [int(line.split()[0]) for line in res.stdout.splitlines()[1:] if line.split()[0].isdigit()]
    assert pids, res.stdout
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_sweep_with_a_preempted_job_resumes_exactly(tmp_path: Path) -> None:
    """Two identical jobs; one gets USR2 mid-training, requeues, resumes from resume.ckpt: same final metrics."""
    sweep = tmp_path / "sweep"
    proc = _sweep(sweep, "+user.variant=reference,preempted")
    preempted = _job_dir(sweep, "user.variant=preempted")
    _wait_file(preempted / "checkpoints" / "last.ckpt", timeout=240)  # epoch 1 done, epoch 2 running
    _signal(_slurm_id(preempted), "USR2")
    out, err = proc.communicate(timeout=480)
    assert proc.returncode == 0, err[-3000:]
    reference = _job_dir(sweep, "user.variant=reference")
    assert _status(reference)["status"] == "completed" and _status(reference)["attempts"] == 1
    status = _status(preempted)
    # Early in a 60-min limit, submitit treats USR2 as a pre-emption (not counted against max_num_timeout).
    assert status["status"] == "completed" and status["attempts"] == 2 and status["reason"] == "preempted"
    assert "Restored all states from the checkpoint at" in (preempted / "train.log").read_text()
    assert not (preempted / "checkpoints" / "resume.ckpt").exists()
    ref = json.loads((reference / "metrics.json").read_text())
    got = json.loads((preempted / "metrics.json").read_text())

    def model_metrics(metrics: dict) -> dict:  # perf/*: timings and memory, which no two runs share
        # (meta/config_digest differs by design: the two jobs differ in `+user.variant`)
        return {
            k: v
            for k, v in metrics.items()
            if k not in ("best/ckpt_path", "meta/config_digest") and not k.startswith("perf/")
        }

    assert model_metrics(got) == model_metrics(ref)  # exact, on CPU with num_workers=0
    assert "test/f1_macro" in model_metrics(got)


def test_time_out_limit_and_killed_job_are_recorded(tmp_path: Path) -> None:
    """With a 5-min limit any USR2 counts as a time-out (submitit: after min(0.8 x limit, limit - 10 min));
    max_num_timeout=0 then stops the job with a clear status. A SIGKILLed job never writes its end: the launcher
    records it. The sweep exits non-zero, after both jobs."""
    sweep = tmp_path / "sweep"
    proc = _sweep(
        sweep, "+user.variant=timeout,killed", "hydra.launcher.timeout_min=5", "hydra.launcher.max_num_timeout=0"
    )
    timeout_job, killed = _job_dir(sweep, "user.variant=timeout"), _job_dir(sweep, "user.variant=killed")
    _wait_file(timeout_job / "checkpoints" / "last.ckpt", timeout=240)
    _signal(_slurm_id(timeout_job), "USR2")
    _wait_file(killed / "checkpoints" / "last.ckpt", timeout=240)
    _kill_job_processes(_slurm_id(killed))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    status = _status(timeout_job)
    assert status["status"] == "failed" and "max_num_timeout" in status["error"], status
    assert (timeout_job / "checkpoints" / "resume.ckpt").is_file()  # the state is kept for a manual resume
    status = _status(killed)
    assert status["status"] == "failed" and "without a result" in status["error"], status
    assert "FAILED" in status["error"] or "CANCELLED" in status["error"], status
    summary = json.loads((sweep / "sweep.json").read_text())
    assert summary["counts"] == {"failed": 2}, summary["counts"]


def test_impossible_request_fails_fast_and_is_recorded(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    start = time.monotonic()
    proc = _sweep(sweep, "seed=1,2", "hydra.launcher.mem_gb=100000")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "SLURM refused the sweep's 2 job(s) at submit" in err
    assert "Requested node configuration is not available" in err
    assert time.monotonic() - start < 90
    statuses = [json.loads(p.read_text()) for p in sweep.glob("*/status.json")]
    assert len(statuses) == 2
    assert all(s["status"] == "failed" and "Requested node configuration" in s["error"] for s in statuses)
    summary = json.loads((sweep / "sweep.json").read_text())
    assert summary["counts"] == {"failed": 2}, summary["counts"]
