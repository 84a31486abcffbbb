# shellcheck shell=bash
# Helpers shared by the scripts under services/ (sourced, not run).

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

# s3ts_find_java: prints a java of version 17 or later (JAVA, JAVA_HOME, then PATH), or dies.
s3ts_find_java() {
    local j=${JAVA:-} major
    if [ -z "$j" ] && [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then j=$JAVA_HOME/bin/java; fi
    [ -n "$j" ] || j=$(command -v java || true)
    [ -n "$j" ] || s3ts_die "no java found (Kafka 4 needs Java 17+): install a JDK (apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
    major=$("$j" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p' | head -n1)
    case "$major" in 1.*) major=${major#1.} ;; esac
    [ "${major:-0}" -ge 17 ] 2>/dev/null || s3ts_die "$j is Java ${major:-?}; Kafka 4 needs Java 17+ (set JAVA_HOME)"
    printf '%s\n' "$j"
}

# s3ts_kafka_node_props OFFSETS_PARTITIONS: the broker settings both of our single-node brokers
# share (after their listener and security lines).
s3ts_kafka_node_props() {
    cat <<EOF
# one node: replication 1 everywhere
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=$1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# chunk messages are 512 KiB + headers and batches are bigger
message.max.bytes=67108864
replica.fetch.max.bytes=67108864
socket.request.max.bytes=104857600

auto.create.topics.enable=false
delete.topic.enable=true
group.initial.rebalance.delay.ms=0
EOF
}

# s3ts_kafka_format JAVA LIBS STATE DATA LOGS PROPS WHAT [FORMAT ARGS...]: formats the KRaft
# storage in DATA once (the cluster id is kept in STATE/cluster.id); WHAT ends the log line.
# The caller defines java_opts (its JVM options, one per line).
s3ts_kafka_format() {
    local java=$1 libs=$2 state=$3 data=$4 logs=$5 props=$6 what=$7 cid opts
    shift 7
    [ -f "$data/meta.properties" ] && return 0
    if [ -s "$state/cluster.id" ]; then
        cid=$(cat "$state/cluster.id")
    else
        cid=$("$java" -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>>"$logs/format.log" | tail -n1)
        [ -n "$cid" ] || { s3ts_tail_log "$logs/format.log"; s3ts_die "StorageTool random-uuid failed"; }
        printf '%s\n' "$cid" >"$state/cluster.id"
    fi
    s3ts_log "formatting KRaft storage in $data (cluster id $cid)$what"
    mapfile -t opts < <(java_opts)
    if ! "$java" "${opts[@]}" -cp "$libs/*" kafka.tools.StorageTool format -t "$cid" -c "$props" "$@" \
        >>"$logs/format.log" 2>&1; then
        s3ts_tail_log "$logs/format.log" "$logs/server.log"
        s3ts_die "kafka.tools.StorageTool format failed"
    fi
}

# s3ts_weed_mini_args BASE S3_PORT DATA LOGS STATE: the `weed` arguments of a one-process
# SeaweedFS on 127.0.0.1 (internal ports BASE+1..BASE+9), one per line; callers add their own.
s3ts_weed_mini_args() {
    local b=$1
    printf '%s\n' -logdir="$4" -config_dir="$5/config" mini -dir="$3" \
        -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port="$2" -s3.port.grpc=$((b + 1)) \
        -master.port=$((b + 2)) -master.port.grpc=$((b + 3)) \
        -volume.port=$((b + 4)) -volume.port.grpc=$((b + 5)) \
        -filer.port=$((b + 6)) -filer.port.grpc=$((b + 7)) \
        -admin.ui=false -admin.port=$((b + 8)) -admin.port.grpc=$((b + 9)) -admin.port.legacy=0 \
        -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false \
        -s3.autoCreateBucket=false
}

# s3ts_ports_free HINT PORT...: dies naming the first port on 127.0.0.1 that is taken.
s3ts_ports_free() {
    local hint=$1 q
    shift
    for q in "$@"; do
        if s3ts_port_open "$q"; then s3ts_die "port $q on 127.0.0.1 is in use by another process ($hint)"; fi
    done
}
