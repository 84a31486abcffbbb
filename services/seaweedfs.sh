#!/usr/bin/env bash
# A real S3 server: SeaweedFS `weed mini` (master + volume + filer + S3 gateway in one process)
# on 127.0.0.1, SigV4 enforced with the keys from services/env.sh.
#
#   bash services/seaweedfs.sh install|start|stop|restart|status
#
# install  build weed from the Go module proxy through our wrapper module services/seaweedfs/
#          (go.mod + go.sum pin SeaweedFS and its whole dependency graph) into
#          $S3TS_HOME/bin/weed-<module version>; skipped when that binary exists
# start    install if needed, start `weed mini` and wait until a signed ListBuckets answers and a
#          bucket create + object put/get/delete round trip works; a no-op when already running
# stop     SIGTERM, wait, then SIGKILL; removes the pid file
# status   one line; exit 0 only when running and answering
#
# Ports, all on 127.0.0.1: S3 on S3TS_S3_PORT (default 38333); the internal ones at
# B = S3TS_SEAWEEDFS_PORT_BASE (default 28333, below the Linux ephemeral range 32768-60999 so that
# no outgoing connection can take them; a second instance needs both variables set to other
# values): S3 gRPC B+1, master B+2,
# master gRPC B+3, volume B+4, volume gRPC B+5, filer B+6, filer gRPC B+7, admin server (its UI
# is off) B+8, admin gRPC B+9. WebDAV, Iceberg, Lance, the admin legacy port, metrics and
# telemetry are off.
# Env: S3TS_HOME, S3TS_STATE, S3TS_S3_PORT, S3TS_S3_ACCESS_KEY_ID, S3TS_S3_SECRET_ACCESS_KEY,
# S3TS_SEAWEEDFS_START_TIMEOUT (seconds, default 120), S3TS_SEAWEEDFS_VOLUME_SIZE_MB (default 256),
# S3TS_SEAWEEDFS_VOLUME_MAX (volume slots, default 1000; each bucket takes at least one).
set -euo pipefail

export S3TS_SERVICE_NAME=seaweedfs
# shellcheck source=lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

MODDIR=$S3TS_SERVICES_DIR/seaweedfs
VERSION=$(awk '$1 == "require" && $2 == "github.com/seaweedfs/seaweedfs" { print $3 }' "$MODDIR/go.mod")
[ -n "$VERSION" ] || s3ts_die "cannot read the seaweedfs version from $MODDIR/go.mod"
BIN=$S3TS_HOME/bin/weed-$VERSION
STATE=$S3TS_STATE/seaweedfs
DATA=$STATE/data
LOGS=$STATE/logs
PIDFILE=$STATE/weed.pid
PID_MATCH=" mini "
START_TIMEOUT=${S3TS_SEAWEEDFS_START_TIMEOUT:-120}
S3_PORT=$S3TS_S3_PORT
ENDPOINT=http://127.0.0.1:$S3_PORT
PORT_BASE=${S3TS_SEAWEEDFS_PORT_BASE:-28333}
PORTS=("$S3_PORT")
for ((i = 1; i <= 9; i++)); do PORTS+=($((PORT_BASE + i))); done
WEED_LOG=$LOGS/$(basename "$BIN")

cmd_install() {
    if [ -x "$BIN" ]; then
        s3ts_log "weed $VERSION already built: $BIN"
        return 0
    fi
    s3ts_lock "$S3TS_HOME/.seaweedfs-$VERSION.build.lock" 8
    if [ -x "$BIN" ]; then return 0; fi  # built by a concurrent run while we waited
    command -v go >/dev/null 2>&1 || s3ts_die "go not found (SeaweedFS is built from the Go module proxy; needs Go >= $(awk '$1 == "go" { print $2 }' "$MODDIR/go.mod"))"
    mkdir -p "$S3TS_HOME/bin"
    local t0=$SECONDS tmp=$BIN.tmp.$$ log=$S3TS_HOME/bin/weed-$VERSION.build.log
    s3ts_log "building github.com/seaweedfs/seaweedfs/weed@$VERSION (first time: a large download and several minutes on 2 cores; log: $log)"
    # -mod=readonly: go.mod/go.sum in services/seaweedfs are complete and must not change
    if ! (cd "$MODDIR" && GOFLAGS="-mod=readonly -buildvcs=false" \
        go build -o "$tmp" github.com/seaweedfs/seaweedfs/weed) >"$log" 2>&1; then
        rm -f "$tmp"
        grep -v '^go: downloading' "$log" | tail -n 30 >&2 || true
        s3ts_die "go build of seaweedfs failed (full log: $log)"
    fi
    mv "$tmp" "$BIN"
    s3ts_log "built $BIN in $((SECONDS - t0))s"
}

ready() { python3 "$S3TS_SERVICES_DIR/s3_ready.py" "$ENDPOINT" --quiet --timeout 3; }

launch() {
    mkdir -p "$DATA" "$LOGS" "$STATE/config"
    local b=$PORT_BASE args
    mapfile -t args < <(s3ts_weed_mini_args "$b" "$S3_PORT" "$DATA" "$LOGS" "$STATE")
    args+=(-master.volumeSizeLimitMB="${S3TS_SEAWEEDFS_VOLUME_SIZE_MB:-256}"
        -volume.max="${S3TS_SEAWEEDFS_VOLUME_MAX:-1000}")
    s3ts_log "starting weed mini $VERSION, S3 on $ENDPOINT (internal ports $((b + 1))-$((b + 9))), data in $DATA, logs in $LOGS"
    printf '\n===== %s starting weed %s =====\n' "$(date -u +%FT%TZ)" "$VERSION" >>"$LOGS/stdout.log"
    # The credentials reach weed through its environment only (AWS_* is how `weed mini` creates
    # its admin identity; with an identity present, anonymous requests are refused).
    # setsid: own session, so the end of the calling shell does not stop the server;
    # 8>&- 9>&-: the server must not inherit our lock file descriptors.
    # WEED_MASTER_VOLUME_GROWTH_FREEZE_ON_TOPOLOGY_MISMATCH=false: the master keeps its raft state in
    # data/m<master port>; after a port change it would mint a new topology id, see the volume
    # server report the old one and freeze volume growth for good ("volume growth is frozen after
    # master state loss"), i.e. every PUT to a new bucket would fail. One node, one disk: no risk.
    (cd "$STATE" && AWS_ACCESS_KEY_ID=$S3TS_S3_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$S3TS_S3_SECRET_ACCESS_KEY \
        WEED_MASTER_VOLUME_GROWTH_FREEZE_ON_TOPOLOGY_MISMATCH=false \
        exec setsid nohup "$BIN" "${args[@]}" >>"$LOGS/stdout.log" 2>&1 </dev/null 8>&- 9>&-) &
    printf '%s\n' "$!" >"$PIDFILE"
}

cmd_start() {
    local pid
    s3ts_lock "$STATE/.lock" 9
    if pid=$(s3ts_pid_alive "$PIDFILE" "$PID_MATCH"); then
        if ready; then
            s3ts_log "already running on $ENDPOINT (pid $pid)"
            return 0
        fi
        s3ts_log "pid $pid is alive but $ENDPOINT does not answer yet; waiting"
    else
        rm -f "$PIDFILE"
        s3ts_ports_free "not started by this script with S3TS_STATE=$S3TS_STATE; stop it or set S3TS_S3_PORT / S3TS_SEAWEEDFS_PORT_BASE (ports used: ${PORTS[*]})" "${PORTS[@]}"
        cmd_install
        launch
        pid=$(cat "$PIDFILE")
    fi
    local t0=$SECONDS err=""
    until err=$(python3 "$S3TS_SERVICES_DIR/s3_ready.py" "$ENDPOINT" --write --timeout 20 2>&1); do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PIDFILE"
            s3ts_tail_log "$LOGS/stdout.log" "$WEED_LOG.WARNING"
            s3ts_die "weed exited during startup (logs above, in $LOGS)"
        fi
        if ((SECONDS - t0 >= START_TIMEOUT)); then
            s3ts_tail_log "$LOGS/stdout.log" "$WEED_LOG.INFO"
            s3ts_die "S3 on $ENDPOINT not ready within ${START_TIMEOUT}s (pid $pid still running; last check: ${err##*not ready: }; logs above, in $LOGS)"
        fi
        sleep 0.5
    done
    s3ts_log "ready on $ENDPOINT (pid $pid, $((SECONDS - t0))s)"
}

cmd_stop() {
    s3ts_lock "$STATE/.lock" 9
    s3ts_stop_pid "$PIDFILE" "$PID_MATCH" seaweedfs "${S3TS_SEAWEEDFS_STOP_TIMEOUT:-30}"
}

cmd_status() {
    local pid
    if pid=$(s3ts_pid_alive "$PIDFILE" "$PID_MATCH"); then
        if ready; then
            echo "seaweedfs: running $ENDPOINT (S3, region $S3TS_S3_REGION, path-style) pid $pid version $VERSION state $STATE"
            return 0
        fi
        echo "seaweedfs: starting/not answering $ENDPOINT pid $pid (logs in $LOGS)"
        return 1
    fi
    if s3ts_port_open "$S3_PORT"; then
        echo "seaweedfs: stopped (no pid file in $STATE) but 127.0.0.1:$S3_PORT is in use by another process"
    else
        echo "seaweedfs: stopped $ENDPOINT"
    fi
    return 1
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop && cmd_start ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 install|start|stop|restart|status" >&2
        exit 2
        ;;
esac
