#!/usr/bin/env bash
# Bring up a real two-node SLURM cluster (munge + MariaDB + slurmdbd + slurmctld + one slurmd per node, nodes n1
# and n2 with 1 CPU each) on this machine, for the SLURM tests and for trying the SLURM launcher on a laptop. Needs root (apt-get, munge user) and no
# systemd: every daemon is started by hand, in the foreground under setsid, and its PID recorded.
#
#   SLURM_STATE_DIR        state dir (default /tmp/lmlab-slurm); everything lives there
#   LMLAB_SLURM_PORT_BASE  first of 5 TCP ports (default 6817): slurmctld, slurmd n1, slurmdbd, mariadb, slurmd n2
#
# Two nodes on one host: both slurmd run here, told apart by `slurmd -N <node>` and a per-node `Port=` in
# slurm.conf. Debian's slurm-wlm is built with --enable-multiple-slurmd (checked: with 22.05.8 two slurmd on one
# host register as two nodes, and a 2-node job gets one task on each), so no network namespaces, veth pairs or
# bridge are needed: nothing outside the state dir to set up or tear down, and the start costs one more slurmd.
# The price: both "nodes" share one filesystem, one clock and one loopback address, so what differs between real
# nodes (hostname, a node-local /tmp) is not exercised by the cluster itself; SLURMD_NODENAME/SLURM_NODEID do differ.
#
# Afterwards: `source $SLURM_STATE_DIR/env` (sets SLURM_CONF) and use sbatch/squeue/sacct/submitit.
# Idempotent: when the cluster is already up it only reprints the guidance. A stale state (daemons dead after a
# crash or reboot) is cleaned up and the cluster restarted on the same database and job state.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/slurm/common.sh
source "$HERE/common.sh"

T0=$SECONDS
[[ $EUID -eq 0 ]] || die "must run as root (installs packages, runs munged as the munge user); try: sudo $0"

CONF="$STATE_DIR/slurm.conf"
DBD_CONF="$STATE_DIR/slurmdbd.conf"
export SLURM_CONF="$CONF"   # slurmdbd, sacctmgr and sinfo below all find the configs through it

print_guidance() {
  cat <<EOF
SLURM cluster '$CLUSTER_NAME' is up (state in $STATE_DIR). To use it:
  export SLURM_CONF=$CONF        # or: source $STATE_DIR/env
  sinfo; sbatch --wrap 'hostname'; sacct
Stop it with tests/slurm/down.sh (same SLURM_STATE_DIR).
EOF
}

# Every node registered and usable, and accounting answers.
cluster_answers() {
  local up
  up="$(timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null | grep -cE ' (idle|mixed|allocated|completing)$')" || true
  [[ "$up" == "${#NODES[@]}" ]] && timeout 10 sacct -n -X -S now >/dev/null 2>&1
}

# ---- already up? ----------------------------------------------------------------------------------------
all_alive=1
for d in "${DAEMONS[@]}"; do
  if [[ $d == munged && -f "$STATE_DIR/munge-external" ]]; then continue; fi
  live_pid "$d" >/dev/null || all_alive=0
done
if [[ $all_alive == 1 && -f "$CONF" ]] && cluster_answers; then
  log "already up; nothing to do"
  print_guidance
  exit 0
fi

# Anything left from an earlier run that is half alive (a crash, a killed daemon) is stopped first so the
# restart below starts from a known state; down.sh only touches PIDs it recorded and removes stale pid files.
if compgen -G "$PID_DIR/*.pid" >/dev/null; then
  log "stale or partial state in $STATE_DIR: stopping what is left before restarting"
  "$HERE/down.sh"
fi

# ---- packages -------------------------------------------------------------------------------------------
need=()
for pkg in slurm-wlm munge slurmdbd mariadb-server; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if ((${#need[@]})); then
  log "installing ${need[*]}"
  # Without systemd, package scripts would try to start the system-wide services through invoke-rc.d;
  # we run our own instances, so forbid that (policy-rc.d exit 101) unless the machine already has a policy.
  made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >"/tmp/lmlab-slurm-apt.log" 2>&1 \
    || { tail -20 /tmp/lmlab-slurm-apt.log >&2; die "apt-get install ${need[*]} failed (log above)"; }
  [[ $made_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
  log "packages installed ($((SECONDS - T0)) s)"
fi

# ---- ports ----------------------------------------------------------------------------------------------
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$CTLD_PORT" "$SLURMD_PORT" "$DBD_PORT" "$DB_PORT" "$SLURMD2_PORT"; do
  port_busy "$p" && die "TCP port $p on 127.0.0.1 is already in use (another Slurm or MariaDB?); \
set LMLAB_SLURM_PORT_BASE to a free range (uses 5 ports from it), e.g. LMLAB_SLURM_PORT_BASE=16817"
done

# ---- state dir layout -----------------------------------------------------------------------------------
mkdir -p "$STATE_DIR" "$PID_DIR" "$LOG_DIR" "$STATE_DIR/ctld" "$STATE_DIR/slurmd" "$STATE_DIR/run"
# munged refuses a key or seed in a dir others can write; mariadbd wants its dirs owned by mysql.
chmod 755 "$STATE_DIR"
install -d -o munge -g munge -m 700 "$STATE_DIR/munge"
install -d -o mysql -g mysql -m 750 "$STATE_DIR/mysql" "$STATE_DIR/mysqld"
install -d -o munge -g munge -m 755 /run/munge   # munged's default socket, where Slurm's auth/munge looks

HOST="$(hostname -s)"
# Slurm's own probe of the hardware: each of the two nodes gets 1 CPU and half the memory. slurmd reports the
# configured sizes (SlurmdParameters=config_overrides below), so sharing the host does not drain them as INVAL.
read -r -a HW <<<"$(slurmd -C | head -1)"
hw() { local kv; for kv in "${HW[@]}"; do [[ $kv == "$1="* ]] && { echo "${kv#*=}"; return; }; done; die "slurmd -C lacks $1"; }
MEM=$(hw RealMemory)
NODE_MEM=$((MEM / ${#NODES[@]}))

# ---- configs (regenerated on every start: hardware or hostname may have changed) -------------------------
DB_PASS_FILE="$STATE_DIR/db.pass"
[[ -s "$DB_PASS_FILE" ]] || (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$DB_PASS_FILE")
DB_PASS="$(<"$DB_PASS_FILE")"

cat >"$CONF" <<EOF
# Generated by tests/slurm/up.sh; rewritten on every start.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
# Root runs everything: a test/laptop cluster, no separate slurm user to set up.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Credentials expire after 10 s instead of 120 s: a requeued job may only start again after the old
# credential expired, so this is what bounds the requeue delay.
AuthInfo=cred_expire=10
CryptoType=crypto/munge
StateSaveLocation=$STATE_DIR/ctld
# One slurmd per node on this host (--enable-multiple-slurmd build): %n = the node name keeps their files apart.
SlurmdSpoolDir=$STATE_DIR/slurmd/%n
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
# Both nodes share the host's 2 CPUs and memory; each reports its configured 1 CPU / half the memory.
SlurmdParameters=config_overrides
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups here (containers, gVisor, no systemd): track processes by parent PID, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
PropagateResourceLimits=NONE
SchedulerType=sched/backfill
# A requeued job only becomes eligible cred_expire+1 s after the requeue, and no event wakes the scheduler
# then (backfill skips passes when nothing changed): the periodic main loop (default every 60 s) starts it.
# Run both every 2 s (cheap on one node) so a requeue takes ~13 s instead of up to a minute more.
SchedulerParameters=sched_interval=2,bf_interval=2
# Cores and memory are consumable, so several small jobs share the node instead of queueing;
# DefMemPerCPU keeps a job without --mem from taking all the memory (which serialises every job).
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
# Reject at submit time a request no partition can ever satisfy, instead of pending forever.
EnforcePartLimits=ALL
# Batch jobs may be requeued (submitit requeues itself on preemption/timeout signals).
JobRequeue=1
# A node that went down (daemon restart, crash) comes back by itself once slurmd registers.
ReturnToService=2
# Short timings so tests don't wait: finished jobs leave squeue after 10 s (sacct keeps them),
# SIGKILL follows SIGTERM after 2 s.
MinJobAge=10
KillWait=2
InactiveLimit=0
Waittime=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
NodeName=n1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$SLURMD_PORT CPUs=1 Sockets=1 CoresPerSocket=1 ThreadsPerCore=1 RealMemory=$NODE_MEM State=UNKNOWN
NodeName=n2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$SLURMD2_PORT CPUs=1 Sockets=1 CoresPerSocket=1 ThreadsPerCore=1 RealMemory=$NODE_MEM State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF

# slurmdbd insists on its config being private (it holds the DB password) and owned by SlurmUser.
(umask 077 && cat >"$DBD_CONF" <<EOF
# Generated by tests/slurm/up.sh; rewritten on every start.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE_DIR/run/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
)
chmod 600 "$DBD_CONF"

cat >"$STATE_DIR/env" <<EOF
# Source me to use the lmlab local SLURM cluster (written by tests/slurm/up.sh).
export SLURM_CONF=$CONF
export SLURM_STATE_DIR=$STATE_DIR
EOF

# Offer the conventional /etc/slurm/slurm.conf path to tools that ignore SLURM_CONF, but never replace a
# real config; a symlink of ours from an earlier state dir is fair game.
if [[ ! -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]] \
  || [[ -L /etc/slurm/slurm.conf && "$(readlink /etc/slurm/slurm.conf)" == */lmlab-slurm*/slurm.conf ]]; then
  mkdir -p /etc/slurm && ln -sfn "$CONF" /etc/slurm/slurm.conf
fi

# munge: reuse a munged that already answers on the default socket (a laptop with a real munge install);
# all daemons are on this one host, so its key is as good as ours. Otherwise run our own with our own key.
rm -f "$STATE_DIR/munge-external"
if timeout 5 bash -c 'munge -n | unmunge' >/dev/null 2>&1; then
  log "munge: reusing the munged already running on /run/munge"
  touch "$STATE_DIR/munge-external"
else
  if [[ ! -s "$STATE_DIR/munge/munge.key" ]]; then
    mungekey --create --keyfile="$STATE_DIR/munge/munge.key" --bits=1024
    chown munge:munge "$STATE_DIR/munge/munge.key"; chmod 400 "$STATE_DIR/munge/munge.key"
  fi
  # setpriv execs (unlike runuser/su), so the recorded PID is munged's own.
  start munged setpriv --reuid=munge --regid=munge --init-groups \
    munged --foreground --force --key-file="$STATE_DIR/munge/munge.key" \
    --log-file="$STATE_DIR/munge/munged.log" --seed-file="$STATE_DIR/munge/munged.seed" \
    --pid-file="$STATE_DIR/munge/munged.pid"
  wait_for munged 20 bash -c 'munge -n | unmunge'
fi
log "munge ready ($((SECONDS - T0)) s)"

# MariaDB: own datadir, socket and port; --no-defaults keeps /etc/mysql (system instance settings) out.
DB_SOCK="$STATE_DIR/mysqld/mysqld.sock"
DB_ARGS=(--no-defaults --datadir="$STATE_DIR/mysql" --socket="$DB_SOCK")
if [[ ! -d "$STATE_DIR/mysql/mysql" ]]; then
  log "initialising the accounting database"
  mariadb-install-db "${DB_ARGS[@]}" --user=mysql --skip-test-db --auth-root-authentication-method=socket \
    >"$LOG_DIR/mariadb-install.out" 2>&1 || { tail -20 "$LOG_DIR/mariadb-install.out" >&2; die "mariadb-install-db failed"; }
fi
start mariadbd mariadbd "${DB_ARGS[@]}" --user=mysql --pid-file="$STATE_DIR/mysqld/mariadbd.pid" \
  --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve --log-error="$LOG_DIR/mariadb.log" \
  --innodb-buffer-pool-size=64M
wait_for mariadbd 60 mariadb --no-defaults --socket="$DB_SOCK" -uroot -e 'SELECT 1'
# Idempotent grants; slurmdbd connects over TCP (libmariadb would otherwise look for the system socket).
mariadb --no-defaults --socket="$DB_SOCK" -uroot <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
log "mariadb ready ($((SECONDS - T0)) s)"

# slurmdbd finds slurmdbd.conf next to \$SLURM_CONF.
start slurmdbd slurmdbd -D
wait_for slurmdbd 60 sacctmgr -n list cluster
# Register cluster, account and users before slurmctld connects. Plain `add` fails when they exist.
sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER_NAME" \
  || sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT_NAME" \
  || sacctmgr -i add account "$ACCOUNT_NAME" cluster="$CLUSTER_NAME" Description=lmlab Organization=lmlab >/dev/null
for u in root ${SUDO_USER:-}; do
  sacctmgr -n -P list user format=user | grep -qx "$u" \
    || sacctmgr -i add user "$u" account="$ACCOUNT_NAME" cluster="$CLUSTER_NAME" >/dev/null
done
log "slurmdbd ready, cluster '$CLUSTER_NAME' registered ($((SECONDS - T0)) s)"

rm -f "$STATE_DIR/run/"*.pid
start slurmctld slurmctld -D -f "$CONF"
wait_for slurmctld 60 scontrol ping
for node in "${NODES[@]}"; do
  mkdir -p "$STATE_DIR/slurmd/$node"
  start "slurmd@$node" slurmd -D -N "$node" -f "$CONF"
done
for node in "${NODES[@]}"; do wait_for "slurmd@$node" 60 cluster_answers; done
log "cluster up in $((SECONDS - T0)) s: $(sinfo -h -N -o '%N %T cpus=%c mem=%m' | paste -sd ';' | sed 's/;/; /g')"
print_guidance
