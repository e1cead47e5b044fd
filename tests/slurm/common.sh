# Shared by up.sh and down.sh (sourced, not executed).
# One state dir holds everything the local cluster owns: configs, keys, database, spool, logs and the PIDs
# of the daemons up.sh started, so down.sh can stop exactly those and `rm -rf` of the dir is a full reset.

STATE_DIR="${SLURM_STATE_DIR:-/tmp/lmlab-slurm}"
# Slurm ports are fixed numbers in slurm.conf; a base lets a laptop that already runs a real Slurm (6817-6819)
# or MariaDB move this cluster out of the way: ctld=base, slurmd n1=base+1, slurmdbd=base+2, mariadb=base+3,
# slurmd n2=base+4.
PORT_BASE="${LMLAB_SLURM_PORT_BASE:-6817}"
CTLD_PORT=$((PORT_BASE))
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
DB_PORT=$((PORT_BASE + 3))
SLURMD2_PORT=$((PORT_BASE + 4))
# The cluster's nodes: two slurmd on this one host, each its own SLURM node with 1 CPU (see up.sh for why).
NODES=(n1 n2)
CLUSTER_NAME=lmlab
ACCOUNT_NAME=lmlab

PID_DIR="$STATE_DIR/pids"
LOG_DIR="$STATE_DIR/log"
# Start order; down.sh walks it backwards so nothing loses a server it still talks to. A daemon's record name is
# PROGRAM or PROGRAM@INSTANCE (one slurmd per node: slurmd@n1, slurmd@n2); its pid and log files carry that name.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd@n1 slurmd@n2)
# Names an older up.sh recorded (one slurmd); down.sh still stops them.
LEGACY_DAEMONS=(slurmd)

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
  # /proc/PID/comm is cut to 15 characters; the program names here are shorter.
  [[ "$comm" == "${name%%@*}" ]] || return 1
  echo "$pid"
}

# start NAME CMD...: run CMD detached (own session, no terminal, output to the log dir) and record its PID.
# The daemons run in the foreground (-D/-F) and every launcher in front of them (setsid, setpriv) execs, so
# $! ends up being the daemon itself, not a launcher that forks away. A marker line opens this start's part of
# the log, so a failure shows this attempt's output rather than an earlier instance's.
start() {
  local name="$1"; shift
  rm -f "$PID_DIR/$name.pid"
  printf -- '--- %s: up.sh starting %s\n' "$(date '+%F %T')" "$name" >>"$LOG_DIR/$name.out"
  setsid "$@" </dev/null >>"$LOG_DIR/$name.out" 2>&1 &
  echo $! >"$PID_DIR/$name.pid"
}

# The last 20 lines NAME logged since its latest start.
show_this_start() {
  local log="$LOG_DIR/$1.out" from
  from="$(grep -n -- "^--- .*: up.sh starting $1\$" "$log" 2>/dev/null | tail -1 | cut -d: -f1)"
  tail -n +"${from:-1}" "$log" 2>/dev/null | tail -20 >&2 || true
}

# wait_for NAME SECONDS CHECK...: poll CHECK until it succeeds; fail early, with the log, if NAME died.
# Liveness is the recorded PID running, not live_pid's name check: until the exec chain bash → setsid →
# setpriv → daemon has finished, /proc/PID/comm still names a launcher, and checking the name then reported a
# healthy munged as "exited during startup" (a CI run failed that way). The PID is ours, just recorded, so
# PID reuse (what the name check guards against) cannot apply here.
wait_for() {
  local name="$1" limit="$2"; shift 2
  local end=$((SECONDS + limit)) pid
  pid="$(<"$PID_DIR/$name.pid")"
  until "$@" >/dev/null 2>&1; do
    if ! running "$pid"; then
      show_this_start "$name"
      die "$name exited during startup; logs in $LOG_DIR"
    fi
    ((SECONDS < end)) || { show_this_start "$name"; die "$name not ready after ${limit}s; logs in $LOG_DIR"; }
    sleep 0.5
  done
}
