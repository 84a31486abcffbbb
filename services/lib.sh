# shellcheck shell=bash
# Helpers shared by services/kafka.sh and services/seaweedfs.sh (sourced, not run).

S3TS_SERVICES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
. "$S3TS_SERVICES_DIR/env.sh"

s3ts_log() { printf '[%s] %s\n' "${S3TS_SERVICE_NAME:-services}" "$*" >&2; }
s3ts_die() { s3ts_log "ERROR: $*"; exit 1; }

# s3ts_pid_alive PIDFILE -> prints the pid and returns 0 if the process in PIDFILE is alive
# and still runs the command line we started (pid reuse guard: MATCH must occur in cmdline).
s3ts_pid_alive() {
    local pidfile=$1 match=$2 pid
    [ -s "$pidfile" ] || return 1
    pid=$(cat "$pidfile" 2>/dev/null) || return 1
    case "$pid" in '' | *[!0-9]*) return 1 ;; esac
    kill -0 "$pid" 2>/dev/null || return 1
    if [ -n "$match" ] && [ -r "/proc/$pid/cmdline" ]; then
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$match" || return 1
    fi
    printf '%s\n' "$pid"
}

# s3ts_port_open PORT -> 0 if something accepts TCP connections on 127.0.0.1:PORT
s3ts_port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# s3ts_stop_pid PIDFILE MATCH NAME [GRACE_SECONDS]: SIGTERM, wait, then SIGKILL; removes PIDFILE.
s3ts_stop_pid() {
    local pidfile=$1 match=$2 name=$3 grace=${4:-30} pid i
    if ! pid=$(s3ts_pid_alive "$pidfile" "$match"); then
        rm -f "$pidfile"
        s3ts_log "$name: not running"
        return 0
    fi
    s3ts_log "$name: stopping pid $pid (SIGTERM)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        s3ts_log "$name: still alive after ${grace}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$pidfile"
    s3ts_log "$name: stopped"
}

# s3ts_tail_log FILE...: show the end of the given log files on stderr
s3ts_tail_log() {
    local f
    for f in "$@"; do
        [ -s "$f" ] || continue
        printf -- '----- last lines of %s -----\n' "$f" >&2
        tail -n "${S3TS_LOG_TAIL_LINES:-40}" "$f" >&2
    done
    printf -- '-----\n' >&2
}

# s3ts_lock FILE FD: take an exclusive lock on FILE, held on file descriptor FD until the script
# exits, so that two concurrent installs/starts (e.g. parallel test sessions) do not race.
s3ts_lock() {
    local file=$1 fd=$2
    mkdir -p "$(dirname "$file")"
    eval "exec $fd>\"\$file\""
    if command -v flock >/dev/null 2>&1; then
        flock -w "${S3TS_LOCK_TIMEOUT:-1800}" "$fd" || s3ts_die "could not lock $file"
    fi
}
