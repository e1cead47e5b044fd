# Shared by up.sh and down.sh (sourced, not executed).
# One state dir holds everything the local cluster owns: configs, keys, database, spool, logs and the PIDs
# of the daemons up.sh started, so down.sh can stop exactly those and `rm -rf` of the dir is a full reset.

STATE_DIR="${SLURM_STATE_DIR:-/tmp/lmlab-slurm}"
# Slurm ports are fixed numbers in slurm.conf; a base lets a laptop that already runs a real Slurm (6817-6819)
# or MariaDB move this cluster out of the way: ctld=base, slurmd=base+1, slurmdbd=base+2, mariadb=base+3.
PORT_BASE="${LMLAB_SLURM_PORT_BASE:-6817}"
CTLD_PORT=$((PORT_BASE))
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
DB_PORT=$((PORT_BASE + 3))
CLUSTER_NAME=lmlab
ACCOUNT_NAME=lmlab

PID_DIR="$STATE_DIR/pids"
LOG_DIR="$STATE_DIR/log"
# Start order; down.sh walks it backwards so nothing loses a server it still talks to.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

log() { printf '[slurm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# True while PID runs, zombies excluded: the daemons are orphans (up.sh has exited), and in containers whose
# PID 1 reaps orphans only every few seconds a dead daemon lingers as a zombie that `kill -0` calls alive.
running() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"   # the state letter follows the parenthesised command name
  [[ "${stat%% *}" != [ZX] ]]
}

# PID recorded for a daemon, if that PID is alive AND still runs that program. Checking the name guards
# against PID reuse after a reboot or crash (a /tmp state dir can outlive its processes), so we never signal
# an unrelated process.
live_pid() {
  local name="$1" pid comm
  [[ -f "$PID_DIR/$name.pid" ]] || return 1
  pid="$(<"$PID_DIR/$name.pid")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  running "$pid" || return 1
  comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
  # /proc/PID/comm is cut to 15 characters; the daemon names here are shorter.
  [[ "$comm" == "$name" ]] || return 1
  echo "$pid"
}
