"""The process helpers of tests/slurm/common.sh that up.sh starts its daemons with, tried on plain processes.

No root, packages or cluster needed: `start` and `wait_for` are sourced into bash and pointed at a temporary
state dir. The daemons are started through launchers that exec (setsid, setpriv), so for a moment the recorded
PID still names a launcher; a CI run once failed because `wait_for` took that moment for a dead daemon.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

COMMON = Path(__file__).parent / "slurm" / "common.sh"


def _bash(script: str, state: Path) -> subprocess.CompletedProcess[str]:
    prologue = f'set -euo pipefail; SLURM_STATE_DIR="{state}"; source "{COMMON}"; mkdir -p "$PID_DIR" "$LOG_DIR"\n'
    return subprocess.run(["bash", "-c", prologue + script], capture_output=True, text=True, timeout=60)


def test_wait_for_waits_through_the_launcher_exec_chain(tmp_path: Path) -> None:
    # The "daemon" is called mydaemon, but for its first 1.5 s its PID runs bash (a launcher that has not
    # exec'd yet). It becomes ready (the flag file) only after the exec.
    flag = tmp_path / "ready"
    script = f"""
start mydaemon bash -c 'sleep 1.5; exec -a mydaemon bash -c "touch {flag}; sleep 30"'
wait_for mydaemon 20 test -e {flag}
echo READY
kill "$(<"$PID_DIR/mydaemon.pid")"
"""
    result = _bash(script, tmp_path / "state")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "READY"
    assert "exited during startup" not in result.stderr


def test_wait_for_reports_a_daemon_that_died_with_this_starts_log_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "log").mkdir(parents=True)
    # An earlier instance's lines in the same log must not be shown as this start's output.
    (state / "log" / "mydaemon.out").write_text("OLD INSTANCE LINE\n")
    script = f"""
start mydaemon bash -c 'echo NEW INSTANCE LINE; exit 3'
wait_for mydaemon 20 test -e {tmp_path / "never"}
echo NOT REACHED
"""
    result = _bash(script, state)
    assert result.returncode == 1
    assert "NOT REACHED" not in result.stdout
    assert "ERROR: mydaemon exited during startup" in result.stderr
    assert "NEW INSTANCE LINE" in result.stderr
    assert "OLD INSTANCE LINE" not in result.stderr
    # The log itself keeps both instances, each start opened by its marker line.
    log = (state / "log" / "mydaemon.out").read_text()
    assert log.startswith("OLD INSTANCE LINE\n--- ")
    assert ": up.sh starting mydaemon\nNEW INSTANCE LINE\n" in log


def test_wait_for_gives_up_after_its_limit(tmp_path: Path) -> None:
    script = f"""
start mydaemon sleep 30
wait_for mydaemon 1 test -e {tmp_path / "never"}
"""
    result = _bash(script, tmp_path / "state")
    assert result.returncode == 1
    assert "ERROR: mydaemon not ready after 1s" in result.stderr
    pid = (tmp_path / "state" / "pids" / "mydaemon.pid").read_text().strip()
    subprocess.run(["kill", pid], check=False)
