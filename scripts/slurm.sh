#!/usr/bin/env bash
# A private single-node Slurm (slurmctld + slurmd + munged) for tests and for trying
# `pipeline run --executor slurm` on one machine. Facts it relies on: ../shared/notes/
# slurm-single-node.md (Debian 12, root, no systemd).
#
#   scripts/slurm.sh start     install (apt, if missing), configure and start; idempotent
#   scripts/slurm.sh stop      stop exactly the daemons it started (PIDs from its files)
#   scripts/slurm.sh status    running or not (exit 0 when the node is idle or busy)
#   scripts/slurm.sh conf      print the slurm.conf path (export SLURM_CONF=$(... conf))
#
# Everything lives in $SHAPEFLOW_SLURM_DIR (default /tmp/shapeflow-slurm); every parent of
# munge's socket must be world-executable, so the folder is made 0755.
set -euo pipefail

DIR="${SHAPEFLOW_SLURM_DIR:-/tmp/shapeflow-slurm}"
CONF="$DIR/slurm.conf"
NODE=sfnode

log() { echo "slurm.sh: $*" >&2; }

alive() { # pid file -> 0 if that exact process runs (a zombie counts as gone)
  local f=$1 pid state
  [[ -s $f ]] || return 1
  pid=$(cat "$f")
  [[ -d /proc/$pid ]] || return 1
  state=$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo Z)
  [[ $state != Z ]]
}

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    return
  fi
  if [[ $(id -u) != 0 ]]; then
    log "Slurm is not installed and installing it needs root (apt-get): install slurmctld slurmd slurm-client munge"
    exit 1
  fi
  log "installing Slurm and munge (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client slurm-wlm-basic-plugins munge >/dev/null
}

configure() {
  mkdir -p "$DIR"/{munge,state,spool,log}
  chmod 0755 "$DIR" "$DIR/munge"
  if [[ ! -s $DIR/munge/munge.key ]]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$DIR/munge/munge.key"
  fi
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  cat > "$CONF.new" <<EOF
ClusterName=shapeflow
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
MinJobAge=3600
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job that does not ask for memory is given the whole node's, and jobs
# run one at a time.
DefMemPerCPU=$((mem / cpus))
DependencyParameters=kill_invalid_depend
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ReturnToService=2
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  mv "$CONF.new" "$CONF"
}

node_state() {
  SLURM_CONF=$CONF sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1 || true
}

start() {
  install
  configure
  if ! alive "$DIR/munged.pid"; then
    munged --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
      --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" \
      --seed-file="$DIR/munge/munge.seed" --force
  fi
  if ! alive "$DIR/slurmctld.pid"; then
    SLURM_CONF=$CONF slurmctld -f "$CONF"
  fi
  if ! alive "$DIR/slurmd.pid"; then
    SLURM_CONF=$CONF slurmd -f "$CONF" -N "$NODE"
  fi
  local state=""
  for _ in $(seq 1 100); do
    state=$(node_state)
    case $state in idle* | mixed* | allocated*) break ;; esac
    sleep 0.1
  done
  case $state in
    idle* | mixed* | allocated*) ;;
    *)
      # A node left DOWN by an earlier unclean stop returns to service on request.
      SLURM_CONF=$CONF scontrol update nodename="$NODE" state=resume 2>/dev/null || true
      sleep 0.5
      state=$(node_state)
      ;;
  esac
  case $state in
    idle* | mixed* | allocated*) log "running ($state); SLURM_CONF=$CONF" ;;
    *)
      log "the node did not come up (state '$state'); logs in $DIR/log"
      exit 1
      ;;
  esac
}

stop_one() {
  local f=$1 pid
  alive "$f" || { rm -f "$f"; return 0; }
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    alive "$f" || { rm -f "$f"; return 0; }
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

stop() {
  stop_one "$DIR/slurmd.pid"
  stop_one "$DIR/slurmctld.pid"
  stop_one "$DIR/munged.pid"
  log "stopped"
}

status() {
  if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && alive "$DIR/munged.pid"; then
    local s
    s=$(node_state)
    echo "running: node $NODE $s; SLURM_CONF=$CONF"
    case $s in idle* | mixed* | allocated*) return 0 ;; esac
  fi
  echo "not running"
  return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  conf) echo "$CONF" ;;
  *)
    echo "usage: $0 start|stop|status|conf" >&2
    exit 2
    ;;
esac
