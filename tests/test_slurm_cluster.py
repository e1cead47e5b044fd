"""End-to-end checks against the real local SLURM cluster started by tests/slurm/up.sh.

The tests never start the cluster (that takes root, packages and ~10 s; `make slurm-up` / .ci/run do it).
They find it through SLURM_CONF, or through the env file up.sh writes in
${SLURM_STATE_DIR:-/tmp/lmlab-slurm}, and skip with the reason when there is none or it does not answer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")
cloudpickle = pytest.importorskip("cloudpickle")

# Jobs unpickle the functions below in a fresh interpreter where this test module is not importable
# (pytest puts tests/ on sys.path only for itself), so ship them by value rather than by module reference.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

UP_HINT = "start it with `make slurm-up` (tests/slurm/up.sh, as root) and `source /tmp/lmlab-slurm/env`"


def _cluster_conf() -> tuple[str | None, str]:
    """SLURM_CONF of the local cluster, or None and why there is none."""
    conf = os.environ.get("SLURM_CONF")
    if not conf:
        env_file = Path(os.environ.get("SLURM_STATE_DIR", "/tmp/lmlab-slurm")) / "env"
        if not env_file.is_file():
            return None, f"no SLURM cluster: SLURM_CONF is unset and {env_file} does not exist; {UP_HINT}"
        for line in env_file.read_text().splitlines():
            if line.startswith("export SLURM_CONF="):
                conf = line.split("=", 1)[1].strip()
        if not conf:
            return None, f"no SLURM cluster: {env_file} sets no SLURM_CONF; {UP_HINT}"
    if not Path(conf).is_file():
        return None, f"no SLURM cluster: SLURM_CONF={conf} does not exist; {UP_HINT}"
    if shutil.which("sinfo") is None:
        return None, f"no SLURM cluster: sinfo is not installed; {UP_HINT}"
    try:
        probe = subprocess.run(
            ["sinfo", "-h", "-o", "%T"],
            check=False,
            env={**os.environ, "SLURM_CONF": conf},
            capture_output=True,
            text=True,
            timeout=15,
        )
    except subprocess.TimeoutExpired:
        return None, f"no SLURM cluster: sinfo timed out with SLURM_CONF={conf}; {UP_HINT}"
    if probe.returncode != 0:
        return (
            None,
            f"no SLURM cluster: sinfo failed ({probe.stderr.strip()}) with SLURM_CONF={conf}; {UP_HINT}",
        )
    return conf, ""


_CONF, _SKIP_REASON = _cluster_conf()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(_CONF is None, reason=_SKIP_REASON)]


@pytest.fixture(scope="module", autouse=True)
def slurm_env() -> Iterator[None]:
    """Point every Slurm client (ours and submitit's subprocesses) at the local cluster."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(_CONF))
        yield


def _run(*cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=False, capture_output=True, text=True, timeout=timeout)


def _sacct_state(job_id: str) -> str:
    out = _run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State").stdout.split()
    return out[0] if out else ""


def _final_state(job_id: str, timeout: float = 60) -> str:
    """The job's accounting state once it has left PENDING/RUNNING/COMPLETING (sacct, like submitit)."""
    deadline = time.monotonic() + timeout
    while (state := _sacct_state(job_id)) in {"", "PENDING", "RUNNING", "COMPLETING", "REQUEUED"}:
        assert time.monotonic() < deadline, f"job {job_id} still {state!r} after {timeout} s"
        time.sleep(0.5)
    return state


def _executor(folder: Path, **params: object) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder)
    assert executor.cluster == "slurm", "submitit did not pick the SLURM backend although sbatch is there"
    executor.update_parameters(timeout_min=5, cpus_per_task=1, mem_gb=1, slurm_partition="debug", **params)
    return executor


def _wait_for(path: Path, timeout: float) -> float:
    """Seconds until `path` exists; fails the test after `timeout`."""
    start = time.monotonic()
    while not path.exists():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.2)
    return time.monotonic() - start


# ---- functions run inside jobs --------------------------------------------------------------------------


def add(a: int, b: int) -> dict[str, object]:
    return {"sum": a + b, "job_id": os.environ.get("SLURM_JOB_ID"), "python": sys.executable}


def sleep_then_return(marker: str, seconds: float) -> str:
    Path(marker).write_text(os.environ.get("SLURM_JOB_ID", ""))
    time.sleep(seconds)
    return "finished"


class TwoAttempts(submitit.helpers.Checkpointable):
    """First attempt waits to be preempted; the checkpoint carries `attempts` into the requeued run."""

    def __init__(self) -> None:
        self.attempts = 0

    def __call__(self, marker_dir: str) -> dict[str, object]:
        self.attempts += 1
        Path(marker_dir, f"attempt{self.attempts}").write_text(str(time.time()))
        if self.attempts == 1:
            time.sleep(240)  # only the preemption signal ends this attempt early
            return {"attempts": self.attempts, "note": "never preempted"}
        return {"attempts": self.attempts, "restart_count": os.environ.get("SLURM_RESTART_COUNT")}


# ---- tests ----------------------------------------------------------------------------------------------


def test_sbatch_wrap_completes_and_sacct_reports_it(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    sub = _run("sbatch", "--parsable", f"--output={out}", "--wrap", "echo hello-from-slurm")
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().split(";")[0]
    assert _final_state(job_id) == "COMPLETED"
    assert out.read_text().strip() == "hello-from-slurm"


def test_submitit_runs_function_and_returns_result(tmp_path: Path) -> None:
    job = _executor(tmp_path).submit(add, 2, 3)
    result = job.result()
    assert result["sum"] == 5
    assert result["job_id"] == job.job_id
    assert result["python"] == sys.executable
    assert _final_state(job.job_id) == "COMPLETED"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mem=100000000"], "Requested node configuration is not available"),
        (["--gres=gpu:1"], "Invalid generic resource (gres) specification"),
        (["--cpus-per-task=4096"], "More processors requested than permitted"),
    ],
)
def test_impossible_request_fails_at_submit(args: list[str], message: str) -> None:
    start = time.monotonic()
    sub = _run("sbatch", *args, "--wrap", "true", timeout=15)
    elapsed = time.monotonic() - start
    assert sub.returncode != 0
    assert message in sub.stderr
    assert elapsed < 5, f"rejection took {elapsed:.1f} s; EnforcePartLimits=ALL should reject at once"


def test_submitit_impossible_request_raises_with_sbatch_message(tmp_path: Path) -> None:
    executor = _executor(tmp_path)
    executor.update_parameters(mem_gb=100_000)
    with pytest.raises(submitit.core.utils.FailedJobError, match="Requested node configuration is not available"):
        executor.submit(add, 1, 1)


def test_usr2_preemption_requeues_checkpointable_and_finishes_second_attempt(tmp_path: Path) -> None:
    job = _executor(tmp_path / "jobs").submit(TwoAttempts(), str(tmp_path))
    _wait_for(tmp_path / "attempt1", timeout=60)
    signalled = time.monotonic()
    sig = _run("scancel", "--signal=USR2", job.job_id)
    assert sig.returncode == 0, sig.stderr
    requeue_s = _wait_for(tmp_path / "attempt2", timeout=120)
    result = job.result()
    done_s = time.monotonic() - signalled
    print(f"\nrequeue: second attempt started {requeue_s:.1f} s after USR2, result after {done_s:.1f} s")
    assert result == {"attempts": 2, "restart_count": "1"}
    assert _final_state(job.job_id) == "COMPLETED"
    # The requeued job may start cred_expire+1 s after the requeue, then at the next backfill pass
    # (bf_interval=2): ~13 s here; the Slurm defaults (120 s, 30 s) would blow this bound.
    assert requeue_s < 45


def test_submitit_notices_a_killed_job(tmp_path: Path) -> None:
    """A job that dies without a result must end job.result() with an error, not hang (needs accounting)."""
    marker = tmp_path / "started"
    job = _executor(tmp_path / "jobs").submit(sleep_then_return, str(marker), 240)
    _wait_for(marker, timeout=60)
    killed = time.monotonic()
    assert _run("scancel", "--signal=KILL", "--full", job.job_id).returncode == 0
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        job.result()
    noticed_s = time.monotonic() - killed
    print(f"\nsubmitit noticed the killed job {noticed_s:.1f} s after SIGKILL")
    assert noticed_s < 60
