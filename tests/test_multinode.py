"""Multi-node DDP on the real two-node local cluster (tests/slurm/up.sh: nodes n1 and n2, one slurmd each) and
with torchrun: one rank per node (gloo), one run dir, rank 0 writes, metrics equal to the one-node 2-process run,
an allocation mismatch refused, a lost rank ending the job `failed` (no hang) with a resume, a USR2 requeue of a
2-node job, a run dir the other node cannot see refused.

Every run is the same tiny causal LM (llama_tiny, 2 epochs of 49 steps of 2 x 8 packed 64-token blocks), so the
one uninterrupted two-node run (the `reference` fixture) is what the others are compared with.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, run_cli
from tests.test_slurm_cluster import _CONF, _SKIP_REASON
from tests.test_slurm_scale import _job_dir, _signal, _slurm_id, _status, _wait_file

LM = [
    "task=causal_lm",
    "model=llama_tiny",
    "dataset.max_length=64",
    "dataset.batch_size=8",
    "dataset.eval_batch_size=16",
    "dataset.max_samples.train=40",
    "dataset.max_samples.val=8",
    "dataset.max_samples.test=8",
    "trainer.max_epochs=2",
    "trainer.num_sanity_val_steps=0",
    "export_model=false",
    "task.samples.max_new_tokens=8",
    "callbacks.early_stopping=null",
    "trainer=ddp_cpu",
]
TWO_NODES = ["trainer.devices=1", "trainer.num_nodes=2"]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2"]

needs_cluster = pytest.mark.skipif(_CONF is None, reason=_SKIP_REASON)


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    if _CONF:
        env["SLURM_CONF"] = str(_CONF)
    return env


def _sweep(sweep: Path, *overrides: str) -> subprocess.Popen[str]:
    """`python train.py -m hydra/launcher=slurm <LM> trainer.num_nodes=2 ...` into `sweep`, not waited for."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-m", *LM, *SLURM, *TWO_NODES, *overrides, f"hydra.sweep.dir={sweep}"],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _only_job(sweep: Path) -> Path:
    jobs = [p.parent for p in sweep.glob("*/status.json")]
    assert len(jobs) == 1, jobs
    return jobs[0]


def model_metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json without what no two runs share (timings, memory, disk, the checkpoint path) and the config
    digest (the compared runs differ in trainer.devices / num_nodes by design)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        k: v
        for k, v in metrics.items()
        if not k.startswith("perf/") and k not in ("meta/config_digest", "best/ckpt_path")
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted two-node SLURM run: its job dir."""
    if _CONF is None:
        pytest.skip(_SKIP_REASON)
    sweep = tmp_path_factory.mktemp("reference") / "sweep"
    start = time.monotonic()
    proc = _sweep(sweep)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    print(f"\ntwo-node SLURM run: {time.monotonic() - start:.1f} s")
    return _only_job(sweep)


def _rank_pid(job_id: str, rank: int) -> int:
    """PID of the SLURM task `rank` (submitit's python) of `job_id` (<array job>_<task>): both nodes are this
    host, so /proc shows every task."""
    array_job = job_id.split("_")[0]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(
                kv.split("=", 1)
                for kv in (proc / "environ").read_bytes().decode(errors="replace").split("\0")
                if "=" in kv
            )
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if (
            "submitit" in cmdline
            and env.get("SLURM_PROCID") == str(rank)
            and array_job in (env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_JOB_ID"))
        ):
            return int(proc.name)
    pytest.fail(f"no process of rank {rank} of SLURM job {job_id}")


# ---- DDP across nodes -----------------------------------------------------------------------------------------


@pytest.mark.slurm
@needs_cluster
def test_two_node_run_equals_one_node_two_processes(reference: Path, tmp_path: Path) -> None:
    """One rank on each node, one run dir: rank 0 wrote the run files, rank 1 only its log; metrics.json equals the
    same run as 2 processes on one node bit for bit (same world size, seed, DistributedSampler shards and gloo
    all-reduce order), and the manifest says where each rank ran."""
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    ranks = manifest["ranks"]
    assert [(r["rank"], r["slurmd_nodename"], r["slurm_nodeid"]) for r in ranks] == [(0, "n1", 0), (1, "n2", 1)]
    assert all(r["hostname"] == socket.gethostname() and r["sees_run_dir"] for r in ranks)
    assert (reference / "train_ddp_process_1.log").is_file()
    assert "[rank: 1]" not in (reference / "train.log").read_text()  # rank 1 logs to its own file only
    assert not (reference / ".shared_dir_check").exists()
    assert _status(reference)["status"] == "completed"

    res = run_cli("train.py", *LM, "trainer.devices=2", f"hydra.run.dir={tmp_path / 'one_node'}", env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    local = model_metrics(tmp_path / "one_node")
    assert local["effective_batch_size"] == 16 and "test/loss" in local
    assert model_metrics(reference) == local


@pytest.mark.slurm
@needs_cluster
def test_allocation_that_does_not_match_the_trainer_is_refused(tmp_path: Path) -> None:
    """At submit (the launcher's request) and inside a job (your own srun): a message naming both numbers, nothing
    trained."""
    proc = _sweep(tmp_path / "sweep", "hydra.launcher.nodes=1")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "hydra.launcher requests 1 node(s) x 1 task(s) = 1 SLURM task(s)" in err
    assert "trainer.num_nodes x trainer.devices = 2 x 1 = 2" in err
    assert not list((tmp_path / "sweep").glob("*/status.json"))  # nothing was submitted

    run_dir = tmp_path / "srun"
    res = subprocess.run(
        ["srun", "--nodes=1", "--ntasks=1", "--cpus-per-task=1", "--mem=2G", sys.executable, str(ROOT / "train.py"),
         *LM, *TWO_NODES, f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 1, res.stderr[-3000:]
    assert "the SLURM job runs 1 process(es) on 1 node(s), but trainer.num_nodes x trainer.devices = 2 x 1 = 2" in (
        res.stdout + res.stderr  # srun hands on the task's output on its stdout
    )
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.slurm
@needs_cluster
def test_sweeping_num_nodes_is_refused(tmp_path: Path) -> None:
    res = run_cli(
        "train.py", "-m", *LM, *SLURM, "trainer.devices=1", "trainer.num_nodes=1,2",
        f"hydra.sweep.dir={tmp_path}", env=_env(), timeout=120,
    )  # fmt: skip
    assert res.returncode != 0
    assert "varies trainer.num_nodes over ['1', '2']" in res.stderr


# ---- a lost node, a requeue -----------------------------------------------------------------------------------

LOST_TIMEOUT_S = 30  # trainer.strategy.timeout.seconds for the lost-node run


@pytest.mark.slurm
@needs_cluster
def test_lost_rank_fails_the_job_fast_and_resumes_from_the_last_checkpoint(reference: Path, tmp_path: Path) -> None:
    """SIGKILL of rank 1 (as a node failure would) mid-epoch 2: rank 0 does not wait in its all-reduce until the
    time limit; the job ends `failed` with the cause in status.json; ckpt_path=<job dir> resumes from last.ckpt
    (end of epoch 1) to the uninterrupted run's metrics."""
    sweep = tmp_path / "sweep"
    proc = _sweep(sweep, f"trainer.strategy.timeout.seconds={LOST_TIMEOUT_S}")
    job = _job_dir(sweep, "trainer.num_nodes=2", timeout=120)
    _wait_file(job / "checkpoints" / "last.ckpt", timeout=300)
    os.kill(_rank_pid(_slurm_id(job), 1), signal.SIGKILL)
    killed = time.monotonic()
    out, err = proc.communicate(timeout=300)
    ended_s = time.monotonic() - killed
    print(f"\nlost rank: the sweep ended {ended_s:.1f} s after SIGKILL of rank 1")
    assert proc.returncode != 0
    assert ended_s < LOST_TIMEOUT_S + 60, f"the job took {ended_s:.0f} s to end after losing a rank"
    status = _status(job)
    assert status["status"] == "failed", status
    assert status["error"], status
    print(f"status.json error: {status['error']}")

    resumed = tmp_path / "resumed"
    proc = _sweep(resumed, f"ckpt_path={job}")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    again = _only_job(resumed)
    assert "Restored all states from the checkpoint at" in (again / "train.log").read_text()
    assert model_metrics(again) == model_metrics(reference)


HUNG_TIMEOUT_S = 20  # trainer.strategy.timeout.seconds for the hung-rank run


@pytest.mark.slow  # ~75-245 s (the timeout + the run); CI's budget keeps the SIGKILL test instead
@pytest.mark.slurm
@needs_cluster
def test_hung_rank_fails_the_job_after_the_collective_timeout(tmp_path: Path) -> None:
    """SIGSTOP of rank 1 (a frozen node: alive, silent) mid-epoch 2: rank 0 waits in its all-reduce for
    trainer.strategy.timeout.seconds, then records `failed` and cancels the SLURM step, so the job ends instead of
    holding the allocation (srun would wait for the stopped task until the time limit)."""
    sweep = tmp_path / "sweep"
    proc = _sweep(sweep, f"trainer.strategy.timeout.seconds={HUNG_TIMEOUT_S}")
    job = _job_dir(sweep, "trainer.num_nodes=2", timeout=120)
    _wait_file(job / "checkpoints" / "last.ckpt", timeout=300)
    pid = _rank_pid(_slurm_id(job), 1)
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        out, err = proc.communicate(timeout=HUNG_TIMEOUT_S + 180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    ended_s = time.monotonic() - stopped
    print(f"\nhung rank: the sweep ended {ended_s:.1f} s after SIGSTOP of rank 1 (timeout {HUNG_TIMEOUT_S} s)")
    assert proc.returncode != 0
    assert HUNG_TIMEOUT_S - 2 < ended_s < HUNG_TIMEOUT_S + 90, ended_s
    status = _status(job)
    assert status["status"] == "failed", status
    print(f"status.json error: {status['error']}")


@pytest.mark.slurm
@needs_cluster
def test_usr2_requeue_of_a_two_node_job_resumes(reference: Path, tmp_path: Path) -> None:
    """USR2 to the 2-node job mid-epoch 2: every rank stops at the same batch boundary (a collective decision), one
    resume.ckpt is written, the job requeues and its second attempt resumes in the same job dir to the
    uninterrupted run's metrics, bit for bit."""
    sweep = tmp_path / "sweep"
    proc = _sweep(sweep)
    job = _job_dir(sweep, "trainer.num_nodes=2", timeout=120)
    _wait_file(job / "checkpoints" / "last.ckpt", timeout=300)
    _signal(_slurm_id(job), "USR2")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    status = _status(job)
    assert status["status"] == "completed" and status["attempts"] == 2 and status["reason"] == "preempted", status
    log = (job / "train.log").read_text()
    assert log.count("Restored all states from the checkpoint at") == 1
    assert "resume.ckpt" in status["checkpoint"]
    assert not (job / "checkpoints" / "resume.ckpt").exists()  # consumed by the resume
    manifest = json.loads((job / "manifest.json").read_text())
    assert [r["slurmd_nodename"] for r in manifest["ranks"]] == ["n1", "n2"]
    got, ref = model_metrics(job), model_metrics(reference)
    assert got.keys() == ref.keys()
    print("\nrequeued vs uninterrupted:", {k: (got[k], ref[k]) for k in ref if got[k] != ref[k]} or "bitwise equal")
    # Bitwise: causal_lm's global block order resumes at the saved position and each rank restores its own RNG
    # states (docs/data.md, elastic resume), so the requeued job is the uninterrupted one.
    assert got == ref


# ---- torchrun, a run dir that is not shared ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun_nodes(log_dir: Path, rdzv_id: str, private_node1: bool = False, **env: str) -> list[subprocess.Popen]:
    """Two torchrun agents on the loopback address, one process each: two "nodes" that meet through the c10d
    rendezvous. `private_node1`: node 1 runs in its own mount namespace with an empty tmpfs over `log_dir`."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    port = _free_port()
    cmd = [
        torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", rdzv_id, str(ROOT / "train.py"),
        *LM, *TWO_NODES, f"paths.log_dir={log_dir}",
    ]  # fmt: skip
    run_env = {k: v for k, v in _env().items() if not k.startswith("SLURM")}
    procs = []
    for node in (0, 1):
        argv = cmd
        if node == 1 and private_node1:
            script = f'mount -t tmpfs lmlab-private "{log_dir}" && exec "$@"'
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *cmd]
        procs.append(
            subprocess.Popen(
                argv, cwd=ROOT, env={**run_env, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    return procs


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    errs = [p.communicate(timeout=timeout)[1] for p in procs]
    return [(p.returncode, err) for p, err in zip(procs, errs)]


@pytest.mark.slurm
@needs_cluster
def test_torchrun_two_local_nodes_one_run_dir_same_metrics(reference: Path, tmp_path: Path) -> None:
    """torchrun --nnodes 2 without SLURM: one run dir named by the rendezvous id, rank 0 writes, the same metrics
    as the SLURM two-node run."""
    results = _wait_all(_torchrun_nodes(tmp_path, "lmlab-test"), timeout=600)
    assert all(rc == 0 for rc, _ in results), [err[-2000:] for _, err in results]
    run_dir = tmp_path / "train" / "runs" / "torchrun-lmlab-test"
    assert sorted(p.name for p in (tmp_path / "train" / "runs").iterdir()) == [run_dir.name]
    ranks = json.loads((run_dir / "manifest.json").read_text())["ranks"]
    assert [(r["rank"], r["torchrun_group_rank"]) for r in ranks] == [(0, 0), (1, 1)]
    assert (run_dir / "train_ddp_process_1.log").is_file()
    assert model_metrics(run_dir) == model_metrics(reference)


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", "mount -t tmpfs x /mnt"],
        capture_output=True,
        timeout=10,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root and `unshare --mount` (a private mount namespace)")
def test_run_dir_not_shared_across_nodes_is_refused(tmp_path: Path) -> None:
    """Node 1 sees an empty tmpfs where node 0 writes the run dir (as a node-local /tmp would be): rank 1 cannot
    see rank 0's marker file within LMLAB_SHARED_DIR_WAIT_S and the run stops with an error naming the dir."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    start = time.monotonic()
    results = _wait_all(
        _torchrun_nodes(log_dir, "lmlab-private", private_node1=True, LMLAB_SHARED_DIR_WAIT_S="3"), timeout=300
    )
    print(f"\nnot-shared run dir refused after {time.monotonic() - start:.1f} s")
    assert all(rc != 0 for rc, _ in results), [err[-2000:] for _, err in results]
    run_dir = log_dir / "train" / "runs" / "torchrun-lmlab-private"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed", status
    assert f"the run dir {run_dir} is not shared across nodes: rank 1" in status["error"], status
    assert "within 3 s" in status["error"]
    assert not (run_dir / "checkpoints").exists()
