#!/usr/bin/env bash
# Stop the local SLURM cluster started by tests/slurm/up.sh: exactly the daemons whose PIDs up.sh recorded
# in the state dir (never by process name, so a real Slurm/MariaDB on the machine is untouched), newest first,
# waiting for each to exit. Leaves no pid files behind. Idempotent: with nothing running it just says so.
# Configs, munge key, database and job history stay in the state dir; `rm -rf` it for a full reset.
#
#   SLURM_STATE_DIR   state dir (default /tmp/lmlab-slurm), the same as given to up.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/slurm/common.sh
source "$HERE/common.sh"

T0=$SECONDS
export SLURM_CONF="$STATE_DIR/slurm.conf"

# Cancel jobs first while slurmctld and slurmd still run: otherwise their slurmstepd and user processes would
# outlive the daemons and still be running when the cluster comes back.
if live_pid slurmctld >/dev/null && live_pid slurmd@n1 >/dev/null; then
  jobs_left="$(timeout 10 squeue -h -o %A 2>/dev/null || true)"
  if [[ -n "$jobs_left" ]]; then
    log "cancelling jobs: $(echo $jobs_left)"
    # shellcheck disable=SC2086  # one argument per job id
    timeout 10 scancel $jobs_left || true
    end=$((SECONDS + 15))
    while [[ -n "$(timeout 10 squeue -h -t R,CG -o %A 2>/dev/null || true)" ]] && ((SECONDS < end)); do sleep 0.5; done
  fi
fi

stopped=0
ALL=("${DAEMONS[@]}" "${LEGACY_DAEMONS[@]}")
for ((i = ${#ALL[@]} - 1; i >= 0; i--)); do
  name="${ALL[i]}"
  if pid="$(live_pid "$name")"; then
    kill -TERM "$pid" 2>/dev/null || true
    # Slurm daemons and MariaDB save state on SIGTERM; give them time, then insist.
    end=$((SECONDS + 30))
    while running "$pid" && ((SECONDS < end)); do sleep 0.2; done
    if running "$pid"; then
      log "$name (pid $pid) ignored SIGTERM for 30 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      end=$((SECONDS + 10))
      while running "$pid" && ((SECONDS < end)); do sleep 0.2; done
      # Only a process stuck in the kernel (D state) survives SIGKILL; keep its pid file for a later retry.
      running "$pid" && die "$name (pid $pid) survived SIGKILL; check 'ps -o stat,wchan -p $pid'"
    fi
    log "stopped $name (pid $pid)"
    stopped=$((stopped + 1))
  fi
  rm -f "$PID_DIR/$name.pid"
done

# Pid files the daemons write themselves (normally removed on clean exit, left behind after a SIGKILL/crash).
rm -f "$STATE_DIR/run/"*.pid "$STATE_DIR/mysqld/mariadbd.pid" "$STATE_DIR/munge/munged.pid" \
  "$STATE_DIR/munge-external"

if ((stopped)); then
  log "cluster down ($stopped daemons stopped in $((SECONDS - T0)) s)"
else
  log "nothing running under $STATE_DIR; nothing to do"
fi
