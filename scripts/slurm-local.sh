#!/usr/bin/env bash
# Start or stop a one-node SLURM (munge + slurmctld + slurmd) on this machine, for tests.
#
#   scripts/slurm-local.sh install   apt-get install the Debian SLURM and munge packages
#                                    (does nothing when they are already there)
#   scripts/slurm-local.sh start     write a localhost slurm.conf, start the daemons, wait until
#                                    the node is idle, record the PIDs that this script started
#   scripts/slurm-local.sh status    print the recorded daemons and `sinfo`; exit 1 when not up
#   scripts/slurm-local.sh stop      cancel the jobs of this local SLURM and stop exactly the
#                                    recorded PIDs
#
# Needs root (SlurmUser=root) and no systemd: munged runs as the munge user, the SLURM daemons
# daemonize themselves, proctrack/linuxproc and task/none avoid cgroups.
#
# Environment:
#   SCDASK_SLURM_STATE     state folder (PID file, spool, logs); default /var/tmp/scdask-slurm
#   SCDASK_SLURM_MIN_CPUS  CPUs declared for the node when nproc is smaller (slurmd then runs with
#                          SlurmdParameters=config_overrides); default 8, so that several 1-core jobs
#                          (cluster workers, an sbatch scheduler) fit at once
#   SCDASK_SLURM_FORCE=1   replace an /etc/slurm/slurm.conf that this script did not write (the
#                          old file is kept as slurm.conf.scdask-backup)
set -euo pipefail

STATE_DIR="${SCDASK_SLURM_STATE:-/var/tmp/scdask-slurm}"
PID_FILE="${STATE_DIR}/pids"
CONF_DIR=/etc/slurm
CONF="${CONF_DIR}/slurm.conf"
MARKER="# written by scdask scripts/slurm-local.sh"
PARTITION=debug
MIN_CPUS="${SCDASK_SLURM_MIN_CPUS:-8}"
PACKAGES=(slurmctld slurmd slurm-client munge)

log() { printf 'slurm-local: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "must run as root (or with passwordless sudo): $*"
    fi
}

have_packages() {
    local cmd
    for cmd in slurmctld slurmd sinfo sbatch munged munge unmunge; do
        command -v "$cmd" >/dev/null 2>&1 || [[ -x "/usr/sbin/$cmd" ]] || return 1
    done
}

sbin() {
    # Debian puts the daemons in /usr/sbin, which is not always on a non-root PATH.
    if command -v "$1" >/dev/null 2>&1; then command -v "$1"; else echo "/usr/sbin/$1"; fi
}

cmd_install() {
    if have_packages; then
        log "SLURM and munge are already installed; nothing to do"
        return 0
    fi
    log "installing ${PACKAGES[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${PACKAGES[@]}"
    have_packages || die "the packages installed but the SLURM commands are still missing"
}

pid_alive() {
    [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null
}

# pid_is NAME PID: the process PID is alive and its command name is NAME (guards against a
# PID that was reused by an unrelated process after our daemon exited).
pid_is() {
    local name="$1" pid="$2" comm
    pid_alive "$pid" || return 1
    comm="$(cat "/proc/${pid}/comm" 2>/dev/null || true)"
    [[ "$comm" == "$name" ]]
}

record_pid() {
    mkdir -p "$STATE_DIR"
    printf '%s %s\n' "$1" "$2" >>"$PID_FILE"
}

recorded_up() {
    # True when a PID file exists and every daemon recorded in it is alive.
    [[ -s "$PID_FILE" ]] || return 1
    local name pid
    while read -r name pid; do
        pid_is "$name" "$pid" || return 1
    done <"$PID_FILE"
}

munge_works() {
    "$(sbin munge)" -n 2>/dev/null | "$(sbin unmunge)" >/dev/null 2>&1
}

start_munge() {
    if munge_works; then
        log "munged is already running (not started by this script, will not be stopped by it)"
        return 0
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null 2>&1 || [[ -x /usr/sbin/mungekey ]]; then
            "$(sbin mungekey)" --create --force
        else
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        fi
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    rm -f /run/munge/munged.pid
    runuser -u munge -- "$(sbin munged)"
    local i pid=""
    for i in $(seq 50); do
        pid="$(cat /run/munge/munged.pid 2>/dev/null || true)"
        if pid_alive "$pid" && munge_works; then break; fi
        sleep 0.2
    done
    munge_works || die "munged did not start (see /var/log/munge/munged.log)"
    record_pid munged "$pid"
    log "munged started (pid $pid)"
}

write_conf() {
    local host cpus nproc_ mem_kb real_mem overrides=""
    host="$(hostname -s)"
    nproc_="$(nproc)"
    cpus="$nproc_"
    if ((cpus < MIN_CPUS)); then
        cpus="$MIN_CPUS"
        overrides="SlurmdParameters=config_overrides"
    fi
    mem_kb="$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
    # 90% of the physical memory: slurmd drains a node that has less than it declares.
    real_mem="$((mem_kb / 1024 * 9 / 10))"

    if [[ -e "$CONF" ]] && ! grep -qF "$MARKER" "$CONF"; then
        if [[ "${SCDASK_SLURM_FORCE:-0}" == "1" ]]; then
            cp -p "$CONF" "${CONF}.scdask-backup"
            log "kept the existing ${CONF} as ${CONF}.scdask-backup"
        else
            die "${CONF} exists and was not written by this script; set SCDASK_SLURM_FORCE=1 to replace it"
        fi
    fi
    mkdir -p "$CONF_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd" "$STATE_DIR/log"
    cat >"$CONF" <<EOF
$MARKER
# A one-node SLURM on localhost for scdask's tests (nproc=${nproc_}, MemTotal=${mem_kb} kB).
ClusterName=scdask-local
SlurmctldHost=${host}(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SlurmdUser=root
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
SchedulerType=sched/backfill
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=${STATE_DIR}/slurmctld
SlurmdSpoolDir=${STATE_DIR}/slurmd
SlurmctldPidFile=${STATE_DIR}/slurmctld.pid
SlurmdPidFile=${STATE_DIR}/slurmd.pid
SlurmctldLogFile=${STATE_DIR}/log/slurmctld.log
SlurmdLogFile=${STATE_DIR}/log/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=60
${overrides}
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${real_mem} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
    log "wrote ${CONF}: node ${host}, CPUs=${cpus}, RealMemory=${real_mem} MB"
}

wait_pidfile() {
    # wait_pidfile NAME FILE: wait until FILE holds the PID of a live NAME process; print it.
    local name="$1" file="$2" i pid=""
    for i in $(seq 100); do
        pid="$(cat "$file" 2>/dev/null || true)"
        if pid_is "$name" "$pid"; then
            echo "$pid"
            return 0
        fi
        sleep 0.1
    done
    return 1
}

node_state() {
    sinfo -h -N -n "$(hostname -s)" -o '%T' 2>/dev/null | head -n1
}

cmd_start() {
    have_packages || die "SLURM is not installed; run: $0 install"
    [[ "$(id -u)" -eq 0 ]] || die "start must run as root (SlurmUser=root)"
    if recorded_up; then
        log "already running (pids in ${PID_FILE})"
        cmd_status
        return 0
    fi
    if [[ -s "$PID_FILE" ]]; then
        log "a previous start left daemons behind; stopping them first"
        cmd_stop
    fi
    if pgrep -x slurmctld >/dev/null 2>&1 || pgrep -x slurmd >/dev/null 2>&1; then
        die "a slurmctld or slurmd that this script did not start is running; stop it first"
    fi
    mkdir -p "$STATE_DIR"
    : >"$PID_FILE"
    # If anything below fails (a failed command or die), stop what was started so far.
    trap 'rc=$?; if ((rc != 0)); then log "start failed; stopping what was started"; cmd_stop || true; fi' EXIT

    start_munge
    write_conf

    local pid
    # -c: start with a clean state (no jobs or node states left from an earlier run).
    "$(sbin slurmctld)" -c
    pid="$(wait_pidfile slurmctld "$STATE_DIR/slurmctld.pid")" ||
        die "slurmctld did not start; see $STATE_DIR/log/slurmctld.log"
    record_pid slurmctld "$pid"
    log "slurmctld started (pid $pid)"

    "$(sbin slurmd)" -c
    pid="$(wait_pidfile slurmd "$STATE_DIR/slurmd.pid")" ||
        die "slurmd did not start; see $STATE_DIR/log/slurmd.log"
    record_pid slurmd "$pid"
    log "slurmd started (pid $pid)"

    local i state=""
    for i in $(seq 120); do
        state="$(node_state)"
        case "$state" in
        idle) break ;;
        down* | drain* | drained*)
            scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
            ;;
        esac
        sleep 0.5
    done
    if [[ "$state" != idle ]]; then
        tail -n 20 "$STATE_DIR/log/slurmctld.log" "$STATE_DIR/log/slurmd.log" >&2 || true
        die "the node did not become idle within 60 s (state: '${state:-unknown}')"
    fi
    trap - EXIT
    log "up: partition ${PARTITION}, node $(hostname -s) idle"
    sinfo
}

cmd_stop() {
    if [[ ! -e "$PID_FILE" ]]; then
        log "nothing recorded in ${PID_FILE}; nothing to stop"
        return 0
    fi
    # Jobs first: their worker processes live under slurmstepd, not under the daemons.
    if grep -q '^slurmctld ' "$PID_FILE" && command -v squeue >/dev/null 2>&1; then
        local jobs
        jobs="$(squeue -h -o '%i' 2>/dev/null || true)"
        if [[ -n "$jobs" ]]; then
            log "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            local i
            for i in $(seq 40); do
                [[ -z "$(squeue -h -o '%i' 2>/dev/null || true)" ]] && break
                sleep 0.25
            done
        fi
    fi
    local name pid order
    # Stop in reverse start order: slurmd, slurmctld, munged.
    for order in slurmd slurmctld munged; do
        while read -r name pid; do
            [[ "$name" == "$order" ]] || continue
            if pid_is "$name" "$pid"; then
                kill -TERM "$pid" 2>/dev/null || true
                local i
                for i in $(seq 50); do
                    pid_alive "$pid" || break
                    sleep 0.2
                done
                if pid_alive "$pid"; then
                    log "$name ($pid) ignored SIGTERM; sending SIGKILL"
                    kill -KILL "$pid" 2>/dev/null || true
                fi
                log "stopped $name (pid $pid)"
            else
                log "$name (pid $pid) is no longer running"
            fi
        done <"$PID_FILE"
    done
    rm -f "$PID_FILE"
}

cmd_status() {
    local rc=0 name pid
    if [[ -s "$PID_FILE" ]]; then
        while read -r name pid; do
            if pid_is "$name" "$pid"; then
                echo "$name $pid running"
            else
                echo "$name $pid NOT running"
                rc=1
            fi
        done <"$PID_FILE"
    else
        echo "no daemons recorded in ${PID_FILE}"
        rc=1
    fi
    if command -v sinfo >/dev/null 2>&1 && sinfo >/dev/null 2>&1; then
        sinfo
        [[ "$(node_state)" == idle || "$(node_state)" == mixed || "$(node_state)" == allocated ]] || rc=1
    else
        echo "sinfo: no controller answers"
        rc=1
    fi
    return "$rc"
}

case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 install|start|stop|status" >&2
    exit 2
    ;;
esac
