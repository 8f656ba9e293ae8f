#!/usr/bin/env bash
# Start a real one-node SLURM cluster on this machine, for okd-bench's SLURM tests and for trying the
# SLURM launcher locally. Debian/Ubuntu, as root; no systemd or cgroups needed.
#   munged -> MariaDB -> slurmdbd -> slurmctld -> slurmd, then wait until the node is idle.
# Idempotent: installs missing Debian packages, (re)writes /etc/slurm/*.conf, starts only daemons that
# are not running (pid files in /run/okd-slurm). Stop with stop-local-cluster.sh.
# Accounting (slurmdbd) stays on: without sacct, submitit never sees a cancelled job end.
set -euo pipefail
PARTITION=${OKD_SLURM_PARTITION:-debug}
RUN=/run/okd-slurm SPOOL=/var/spool/okd-slurm LOG=/var/log/okd-slurm DB=/var/lib/okd-slurm/mysql
HOST=$(hostname -s)

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  # the SLURM tests then skip (they never skip in CI, where this must work)
  echo "start-local-cluster.sh: needs root and apt-get; no local SLURM cluster started" >&2
  if [ -n "${CI:-}" ]; then exit 1; fi
  exit 0
fi

# is_up NAME: the pid in $RUN/NAME.pid is a live process called NAME
is_up() { local pid; pid=$(cat "$RUN/$1.pid" 2>/dev/null) || return 1
          local comm stat; read -r comm stat < <(ps -o comm=,stat= -p "$pid" 2>/dev/null) || return 1
          [ "$comm" = "$1" ] && [ "${stat:0:1}" != Z ]; }
# retry SECONDS CMD...: run CMD every 0.2 s until it succeeds
retry() { local secs=$1 i; shift; for ((i = 0; i < secs * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
          echo "start-local-cluster.sh: gave up waiting for: $*" >&2; return 1; }
# launch NAME CMD...: start a self-daemonising NAME unless it is up (a stale pid file is removed first)
launch() { local name=$1; shift; is_up "$name" && return 0; rm -f "$RUN/$name.pid"; "$@"; retry 30 is_up "$name"; }

# 1. packages
need=""
for pkg in munge slurmctld slurmd slurm-client slurmdbd mariadb-server-core mariadb-client-core; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need="$need $pkg"
done
if [ -n "$need" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
fi

# 2. configuration (node line from slurmd -C; RealMemory fixed at 90% of MemTotal)
mkdir -p "$RUN" "$SPOOL/ctld" "$SPOOL/d" "$LOG" /etc/slurm
MEM=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
NODE=$(slurmd -C | head -n 1 | sed "s/RealMemory=[0-9]*/RealMemory=$MEM/")
cat > "$RUN/slurm.conf" <<CONF
# written by okd-bench slurm/start-local-cluster.sh
ClusterName=okdbench
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again after cred_expire seconds (default 120)
AuthInfo=cred_expire=5
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
ReturnToService=2
# submitit ignores SIGTERM: keep the wait before SIGKILL short
KillWait=5
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
$NODE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
cat > "$RUN/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=okdbench_acct_db
CONF
changed=0
for f in slurm.conf slurmdbd.conf; do
  cmp -s "$RUN/$f" "/etc/slurm/$f" || changed=1
done
if [ "$changed" = 1 ]; then
  if is_up slurmctld || is_up slurmd || is_up slurmdbd; then "$(dirname "$0")/stop-local-cluster.sh"; fi
  cp "$RUN/slurm.conf" "$RUN/slurmdbd.conf" /etc/slurm/
fi
chmod 600 /etc/slurm/slurmdbd.conf

# 3. munge (keep one that already answers)
if ! (munge -n | unmunge) >/dev/null 2>&1; then
  [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey -c
  install -d -o munge -g munge -m 755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  retry 10 sh -c 'munge -n | unmunge'
  cp /run/munge/munged.pid "$RUN/munged.pid"
fi

# 4. accounting: MariaDB on its unix socket only, then slurmdbd
if ! is_up mariadbd; then
  [ -d "$DB/mysql" ] || { mkdir -p "$DB"; mariadb-install-db --no-defaults --user=root --datadir="$DB" --skip-test-db >/dev/null; }
  mkdir -p /run/mysqld
  rm -f "$RUN/mariadbd.pid"
  setsid -f /usr/sbin/mariadbd --no-defaults --user=root --datadir="$DB" --socket=/run/mysqld/mysqld.sock \
    --skip-networking --pid-file="$RUN/mariadbd.pid" --log-error="$LOG/mariadbd.log" \
    --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1
  retry 60 mariadb --no-defaults -S /run/mysqld/mysqld.sock -uroot -e 'select 1'
fi
launch slurmdbd slurmdbd
retry 30 sacctmgr -n list cluster

# 5. controller and compute daemon
fresh=0
is_up slurmctld || fresh=1
launch slurmctld slurmctld
retry 30 scontrol ping
launch slurmd slurmd
# a fresh controller recovers the jobs of an earlier, killed cluster: cancel them
if [ "$fresh" = 1 ]; then squeue -h -o %i | xargs -r scancel; fi

# 6. wait until the node takes jobs
for _ in $(seq 1 60); do
  state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
  case "$state" in
    idle|mixed|allocated) echo "local SLURM cluster ready: partition $PARTITION, node $HOST ($state)"; exit 0 ;;
    down*|drain*|inval*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
echo "start-local-cluster.sh: node $HOST not ready (state: ${state:-unknown}); logs in $LOG" >&2
exit 1
