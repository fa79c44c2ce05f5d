#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost (Debian 12, as root, no systemd), for the tests
# marked `slurm` and for trying the launchers before a real cluster:
#
#   slurm/local_cluster.sh start    # install slurm-wlm, munge, slurmdbd, MariaDB if missing; start
#   slurm/local_cluster.sh status   # daemons, sinfo; exit 0 when the node is idle/mixed/allocated
#   slurm/local_cluster.sh stop     # stop every daemon by the PID in its pid file
#
# Idempotent: start on a running cluster only checks it; stop on a stopped one does nothing.
# Node: CPUs=$(nproc), RealMemory = 80% of `free -m`'s free memory. Accounting (slurmdbd +
# MariaDB) is on because submitit polls `sacct` for job states.
set -euo pipefail

ETC=/etc/slurm
RUN=/run/odelab-slurm
LOG=/var/log/slurm
CLUSTER=odelab
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server mariadb-client)
PIDS=("$RUN/slurmd.pid" "$RUN/slurmctld.pid" "$RUN/slurmdbd.pid" /run/mysqld/mysqld.pid
      /run/munge/munged.pid)

say() { echo "[local_cluster] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (the daemons run as root on this test node)"; }

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for <seconds> <description> <command...>
  local t=$1 what=$2; shift 2
  for _ in $(seq "$((t * 5))"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what did not come up within ${t}s (logs: $LOG, /var/log/mysql)"
}

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # no init system here: package scripts must not try to start daemons (we start them below)
  local policy=/usr/sbin/policy-rc.d ours=0
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' > $policy; chmod +x $policy; ours=1; fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ $ours = 1 ]; then rm -f $policy; fi
}

write_configs() {
  local cpus mem
  cpus=$(nproc)
  mem=$(free -m | awk '/^Mem:/ {print int($4 * 0.8)}')
  mkdir -p "$ETC" "$RUN" "$LOG" /var/spool/slurmctld /var/spool/slurmd
  cat > "$ETC/slurm.conf" <<EOF
# written by slurm/local_cluster.sh: one node on localhost
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits cred_expire seconds before it may start again (default 120)
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SchedulerType=sched/backfill
JobRequeue=1
KillWait=10
MinJobAge=300
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
EOF
  chmod 600 "$ETC/slurmdbd.conf"
}

start_mariadb() {
  alive /run/mysqld/mysqld.pid && return 0
  install -d -o mysql -g mysql /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
  nohup mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid --socket=/run/mysqld/mysqld.sock \
    --skip-networking=0 --bind-address=127.0.0.1 > "$LOG/mariadb.log" 2>&1 &
  wait_for 60 MariaDB mariadb -e 'select 1'
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

start() {
  need_root
  if status >/dev/null 2>&1; then say "already up"; return 0; fi
  local t0=$SECONDS
  install_packages
  write_configs
  if ! alive /run/munge/munged.pid; then
    install -d -o munge -g munge -m 0755 /run/munge
    [ -s /etc/munge/munge.key ] || { mungekey -c -f -k /etc/munge/munge.key 2>/dev/null ||
      create-munge-key -f; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    runuser -u munge -- munged
    wait_for 20 munge sh -c 'munge -n | unmunge'
  fi
  start_mariadb
  alive "$RUN/slurmdbd.pid" || slurmdbd
  wait_for 60 slurmdbd sacctmgr -n list cluster
  sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER" ||
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  alive "$RUN/slurmctld.pid" || slurmctld
  alive "$RUN/slurmd.pid" || slurmd -N localhost
  wait_for 60 "the node (sinfo says idle)" sh -c 'sinfo -h -o %t | grep -Eq "^(idle|mix|alloc)"'
  say "up in $((SECONDS - t0)) s: $(sinfo -h -o '%P %D %t %c CPUs %m MB')"
}

stop() {
  need_root
  for f in "${PIDS[@]}"; do
    if alive "$f"; then
      local pid; pid=$(cat "$f")
      kill "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && { say "pid $pid ($f) ignored SIGTERM; SIGKILL"; kill -9 "$pid"; }
      say "stopped $(basename "$f" .pid) (pid $pid)"
    fi
  done
  return 0
}

status() {
  local ok=0
  for f in "${PIDS[@]}"; do
    if alive "$f"; then echo "$(basename "$f" .pid): running (pid $(cat "$f"))"
    else echo "$(basename "$f" .pid): stopped"; ok=1; fi
  done
  [ $ok = 0 ] || return 1
  sinfo -h -o '%P %D %t' | tee /dev/stderr | grep -Eq ' (idle|mix|alloc)$'
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
