#!/usr/bin/env bash
# A real Apache Kafka 4.x broker (KRaft, one combined broker+controller node) on 127.0.0.1.
#
#   bash services/kafka.sh install|start|stop|restart|status
#
# install  resolve the broker jars from Maven Central (services/kafka/pom.xml) into
#          $S3TS_HOME/kafka-<version>/libs (skipped when already there)
# start    install if needed, format the KRaft storage once, start the broker and wait until a
#          real Kafka request answers (services/kafka_ready.py); a no-op when already running
# stop     SIGTERM (controlled shutdown), wait, then SIGKILL; removes the pid file
# status   one line; exit 0 only when running and answering
# run-class CLASS [ARGS...]  run a Kafka tool on the broker's classpath, e.g.
#          bash services/kafka.sh run-class org.apache.kafka.tools.TopicCommand \
#              --bootstrap-server 127.0.0.1:39092 --list
#
# Env (defaults in services/env.sh): S3TS_HOME, S3TS_STATE, S3TS_KAFKA_VERSION, S3TS_KAFKA_PORT,
# S3TS_KAFKA_CONTROLLER_PORT; also S3TS_KAFKA_HEAP_OPTS (default -Xms256m -Xmx1g),
# S3TS_KAFKA_START_TIMEOUT (seconds, default 120), JAVA_HOME or JAVA.
set -euo pipefail

export S3TS_SERVICE_NAME=kafka
# shellcheck source=lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

VERSION=$S3TS_KAFKA_VERSION
PORT=$S3TS_KAFKA_PORT
CPORT=$S3TS_KAFKA_CONTROLLER_PORT
KAFKA_DIR=$S3TS_HOME/kafka-$VERSION
LIBS=$KAFKA_DIR/libs
STATE=$S3TS_STATE/kafka
DATA=$STATE/data
LOGS=$STATE/logs
PROPS=$STATE/server.properties
LOG4J=$STATE/log4j2.properties
PIDFILE=$STATE/kafka.pid
PID_MATCH=kafka.Kafka
START_TIMEOUT=${S3TS_KAFKA_START_TIMEOUT:-120}
HEAP_OPTS=${S3TS_KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}
ADDRESS=127.0.0.1:$PORT

find_java() { s3ts_find_java; }

is_installed() { [ -f "$KAFKA_DIR/.installed" ] && [ -f "$LIBS/kafka_2.13-$VERSION.jar" ]; }

cmd_install() {
    if is_installed; then
        s3ts_log "kafka $VERSION already installed in $KAFKA_DIR"
        return 0
    fi
    s3ts_lock "$S3TS_HOME/.kafka-$VERSION.install.lock" 8
    if is_installed; then return 0; fi  # installed by a concurrent run while we waited
    command -v mvn >/dev/null 2>&1 || s3ts_die "mvn not found: apt-get install maven"
    find_java >/dev/null
    local tmp=$KAFKA_DIR/libs.tmp.$$ t0=$SECONDS
    s3ts_log "resolving org.apache.kafka:kafka_2.13:$VERSION and dependencies from Maven Central into $LIBS"
    rm -rf "$tmp"
    mkdir -p "$KAFKA_DIR"
    if ! mvn -B -Dstyle.color=never -f "$S3TS_SERVICES_DIR/kafka/pom.xml" \
        -Dkafka.version="$VERSION" dependency:copy-dependencies -DoutputDirectory="$tmp" \
        >"$KAFKA_DIR/maven.log" 2>&1; then
        rm -rf "$tmp"
        grep -E 'ERROR|FAIL' "$KAFKA_DIR/maven.log" | tail -n 20 >&2 || true
        s3ts_die "maven could not resolve Kafka $VERSION (full output: $KAFKA_DIR/maven.log)"
    fi
    [ -f "$tmp/kafka_2.13-$VERSION.jar" ] || { rm -rf "$tmp"; s3ts_die "kafka_2.13-$VERSION.jar missing after maven run"; }
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    printf 'kafka %s installed %s from services/kafka/pom.xml\n' "$VERSION" "$(date -u +%FT%TZ)" >"$KAFKA_DIR/.installed"
    s3ts_log "installed kafka $VERSION ($(find "$LIBS" -name '*.jar' | wc -l) jars, $((SECONDS - t0))s)"
}

write_config() {
    mkdir -p "$DATA" "$LOGS"
    cp "$S3TS_SERVICES_DIR/kafka/log4j2.properties" "$LOG4J"
    cat >"$PROPS.tmp" <<EOF
# written by services/kafka.sh on every start; edit the script, not this file
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA
EOF
    s3ts_kafka_node_props 10 >>"$PROPS.tmp"
    mv "$PROPS.tmp" "$PROPS"
}

java_opts() {
    # shellcheck disable=SC2086
    printf '%s\n' $HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 \
        -Djava.awt.headless=true -Dlog4j2.configurationFile="$LOG4J" -Dkafka.logs.dir="$LOGS"
}

format_storage() {
    s3ts_kafka_format "$1" "$LIBS" "$STATE" "$DATA" "$LOGS" "$PROPS" ""
}

ready() { python3 "$S3TS_SERVICES_DIR/kafka_ready.py" "$ADDRESS" --quiet --timeout 2; }

cmd_start() {
    local pid
    s3ts_lock "$STATE/.lock" 9
    if pid=$(s3ts_pid_alive "$PIDFILE" "$PID_MATCH"); then
        if ready; then
            s3ts_log "already running on $ADDRESS (pid $pid)"
            return 0
        fi
        s3ts_log "pid $pid is alive but $ADDRESS does not answer yet; waiting"
    else
        rm -f "$PIDFILE"
        s3ts_ports_free "not started by this script with S3TS_STATE=$S3TS_STATE; stop it or set S3TS_KAFKA_PORT/S3TS_KAFKA_CONTROLLER_PORT" "$PORT" "$CPORT"
        cmd_install
        local java opts
        java=$(find_java)
        write_config
        format_storage "$java"
        mapfile -t opts < <(java_opts)
        s3ts_log "starting kafka $VERSION on $ADDRESS (controller 127.0.0.1:$CPORT), logs in $LOGS"
        printf '\n===== %s starting kafka %s =====\n' "$(date -u +%FT%TZ)" "$VERSION" >>"$LOGS/stdout.log"
        # setsid: own session, so Ctrl-C in (or the end of) the calling shell does not stop the broker;
        # 8>&- 9>&-: the broker must not inherit our lock file descriptors.
        (cd "$STATE" && exec setsid nohup "$java" "${opts[@]}" -cp "$LIBS/*" kafka.Kafka "$PROPS" \
            >>"$LOGS/stdout.log" 2>&1 </dev/null 8>&- 9>&-) &
        pid=$!
        printf '%s\n' "$pid" >"$PIDFILE"
    fi
    local t0=$SECONDS
    until ready; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PIDFILE"
            s3ts_tail_log "$LOGS/stdout.log" "$LOGS/server.log"
            s3ts_die "kafka exited during startup (logs above, in $LOGS)"
        fi
        if ((SECONDS - t0 >= START_TIMEOUT)); then
            s3ts_tail_log "$LOGS/stdout.log" "$LOGS/server.log"
            s3ts_die "kafka did not answer on $ADDRESS within ${START_TIMEOUT}s (pid $pid still running; logs above, in $LOGS)"
        fi
        sleep 0.5
    done
    s3ts_log "ready on $ADDRESS (pid $pid, $((SECONDS - t0))s)"
}

cmd_stop() {
    s3ts_lock "$STATE/.lock" 9
    s3ts_stop_pid "$PIDFILE" "$PID_MATCH" kafka "${S3TS_KAFKA_STOP_TIMEOUT:-60}"
}

cmd_status() {
    local pid
    if pid=$(s3ts_pid_alive "$PIDFILE" "$PID_MATCH"); then
        if ready; then
            echo "kafka: running $ADDRESS (controller 127.0.0.1:$CPORT) pid $pid version $VERSION state $STATE"
            return 0
        fi
        echo "kafka: starting/not answering $ADDRESS pid $pid (logs in $LOGS)"
        return 1
    fi
    if s3ts_port_open "$PORT"; then
        echo "kafka: stopped (no pid file in $STATE) but 127.0.0.1:$PORT is in use by another process"
    else
        echo "kafka: stopped $ADDRESS"
    fi
    return 1
}

cmd_run_class() {
    is_installed || cmd_install >&2
    local java
    java=$(find_java)
    exec "$java" -Xmx512m -Dlog4j2.configurationFile="$S3TS_SERVICES_DIR/kafka/log4j2-tools.properties" \
        -cp "$LIBS/*" "$@"
}

case "${1:-}" in
    install) cmd_install ;;
    run-class) shift; cmd_run_class "$@" ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop && cmd_start ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 install|start|stop|restart|status|run-class CLASS [ARGS...]" >&2
        exit 2
        ;;
esac
