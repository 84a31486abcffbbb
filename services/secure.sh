#!/usr/bin/env bash
# A SECOND, secured pair of services beside the shared ones, as labs run them:
#   * a Kafka 4.x broker (KRaft, one combined node) whose only client listener is SASL_SSL with
#     SCRAM-SHA-512 (TLS with a broker certificate from a self-signed CA this script makes);
#   * a SeaweedFS `weed mini` whose S3 endpoint speaks HTTPS only, with a certificate from the
#     same CA, SigV4 enforced.
# It reuses the installed Kafka jars (services/kafka.sh install) and weed binary
# (services/seaweedfs.sh install), and never touches the shared services, their state or ports.
#
#   bash services/secure.sh install|start|stop|status
#
# install  make sure the Kafka jars and the weed binary are there (the other scripts' install)
# start    make the CA, the server certificate and the credentials once, format the KRaft
#          storage once (with the SCRAM users), start both and wait until a SCRAM-authenticated
#          TLS Metadata request and a signed HTTPS bucket create/PUT/GET/DELETE answer; a no-op
#          when both already run and answer
# stop     SIGTERM, wait, then SIGKILL, for both; removes the pid files
# status   one line per service; exit 0 only when both run and answer
#
# Everything lives in S3TS_SECURE_STATE (default $S3TS_STATE/secure):
#   pki/ca.pem          the CA certificate: give it to clients (ssl.ca.location, [s3] ca_bundle)
#   pki/ca.key, pki/server.{key,pem}, pki/broker.p12   CA key, server key + certificate (SAN
#                       IP:127.0.0.1, DNS:localhost), the broker's PKCS12 keystore
#   credentials.env     the client identities (mode 600), shell syntax, read it with `.`:
#                       S3TS_SECURE_BOOTSTRAP, S3TS_SECURE_SASL_USERNAME, S3TS_SECURE_SASL_PASSWORD,
#                       S3TS_SECURE_ENDPOINT_URL, S3TS_SECURE_S3_ACCESS_KEY_ID,
#                       S3TS_SECURE_S3_SECRET_ACCESS_KEY, S3TS_SECURE_CA
#   kafka/, seaweedfs/  data, logs, pid files
# The secrets are random (made once with openssl rand) unless given in the environment on the
# first start; they reach the broker through its (mode 600) server.properties and the format
# command, and weed through its environment only.
#
# Ports, all on 127.0.0.1 (defaults; each may be set in the environment):
#   S3TS_SECURE_KAFKA_PORT=39192 (SASL_SSL), S3TS_SECURE_KAFKA_CONTROLLER_PORT=39193 (KRaft
#   controller, PLAINTEXT: internal, SCRAM cannot secure a KRaft controller listener),
#   S3TS_SECURE_S3_PORT=38433 (HTTPS), S3TS_SECURE_SEAWEEDFS_PORT_BASE=28433 (weed's internal
#   ports B+1..B+9, as in seaweedfs.sh).
# Also: S3TS_SECURE_START_TIMEOUT (seconds, default 120), S3TS_KAFKA_HEAP_OPTS
# (default -Xms256m -Xmx512m here), JAVA_HOME or JAVA.
set -euo pipefail

export S3TS_SERVICE_NAME=secure
# shellcheck source=lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

SSTATE=${S3TS_SECURE_STATE:-$S3TS_STATE/secure}
PKI=$SSTATE/pki
CREDS=$SSTATE/credentials.env
K_PORT=${S3TS_SECURE_KAFKA_PORT:-39192}
K_CPORT=${S3TS_SECURE_KAFKA_CONTROLLER_PORT:-39193}
S_PORT=${S3TS_SECURE_S3_PORT:-38433}
S_BASE=${S3TS_SECURE_SEAWEEDFS_PORT_BASE:-28433}
START_TIMEOUT=${S3TS_SECURE_START_TIMEOUT:-120}
HEAP_OPTS=${S3TS_KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}

K_VERSION=$S3TS_KAFKA_VERSION
K_LIBS=$S3TS_HOME/kafka-$K_VERSION/libs
K_STATE=$SSTATE/kafka
K_DATA=$K_STATE/data
K_LOGS=$K_STATE/logs
K_PROPS=$K_STATE/server.properties
K_PIDFILE=$K_STATE/kafka.pid
K_ADDRESS=127.0.0.1:$K_PORT
# the pid-reuse guard: our broker's command line names our own properties file
K_MATCH=$K_PROPS

W_VERSION=$(awk '$1 == "require" && $2 == "github.com/seaweedfs/seaweedfs" { print $3 }' "$S3TS_SERVICES_DIR/seaweedfs/go.mod")
W_BIN=$S3TS_HOME/bin/weed-$W_VERSION
W_STATE=$SSTATE/seaweedfs
W_DATA=$W_STATE/data
W_LOGS=$W_STATE/logs
W_PIDFILE=$W_STATE/weed.pid
W_MATCH="-dir=$W_DATA"
ENDPOINT=https://127.0.0.1:$S_PORT

W_PORTS=("$S_PORT")
for ((i = 1; i <= 9; i++)); do W_PORTS+=($((S_BASE + i))); done

# Never the shared services' ports (a mistyped variable must not take them over).
for p in "$K_PORT" "$K_CPORT" "${W_PORTS[@]}"; do
    case " $S3TS_KAFKA_PORT $S3TS_KAFKA_CONTROLLER_PORT $S3TS_S3_PORT " in
        *" $p "*) s3ts_die "port $p is one of the shared services' ports; choose other S3TS_SECURE_* ports" ;;
    esac
done
[ "$SSTATE" != "$S3TS_STATE" ] || s3ts_die "S3TS_SECURE_STATE must not be the shared S3TS_STATE"

find_java() { s3ts_find_java; }

cmd_install() {
    bash "$S3TS_SERVICES_DIR/kafka.sh" install
    bash "$S3TS_SERVICES_DIR/seaweedfs.sh" install
}

# ------------------------------------------------------------------ CA, certificate, secrets

rand_hex() { openssl rand -hex "$1"; }

make_credentials() {
    [ -s "$CREDS" ] && return 0
    mkdir -p "$SSTATE"
    local tmp=$CREDS.tmp.$$
    (
        umask 077
        cat >"$tmp" <<EOF
# written once by services/secure.sh; the secrets of the secured test services (loopback only)
S3TS_SECURE_BOOTSTRAP=$K_ADDRESS
S3TS_SECURE_SASL_USERNAME=${S3TS_SECURE_SASL_USERNAME:-s3ts-client}
S3TS_SECURE_SASL_PASSWORD=${S3TS_SECURE_SASL_PASSWORD:-$(rand_hex 24)}
S3TS_SECURE_KAFKA_ADMIN_PASSWORD=$(rand_hex 24)
S3TS_SECURE_KEYSTORE_PASSWORD=$(rand_hex 16)
S3TS_SECURE_ENDPOINT_URL=$ENDPOINT
S3TS_SECURE_S3_ACCESS_KEY_ID=${S3TS_SECURE_S3_ACCESS_KEY_ID:-s3ts-secure}
S3TS_SECURE_S3_SECRET_ACCESS_KEY=${S3TS_SECURE_S3_SECRET_ACCESS_KEY:-$(rand_hex 24)}
S3TS_SECURE_CA=$PKI/ca.pem
EOF
    )
    mv "$tmp" "$CREDS"
}

load_credentials() {
    # shellcheck disable=SC1090
    . "$CREDS"
}

make_pki() {
    [ -s "$PKI/broker.p12" ] && [ -s "$PKI/server.pem" ] && [ -s "$PKI/ca.pem" ] && return 0
    command -v openssl >/dev/null 2>&1 || s3ts_die "openssl not found"
    rm -rf "$PKI.tmp"
    mkdir -p "$PKI.tmp"
    local d=$PKI.tmp log=$PKI.tmp/openssl.log
    (
        umask 077
        set -e
        openssl req -x509 -newkey rsa:2048 -nodes -keyout "$d/ca.key" -out "$d/ca.pem" -days 3650 \
            -subj "/CN=s3transfer-stream test CA" -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -newkey rsa:2048 -nodes -keyout "$d/server.key" -out "$d/server.csr" \
            -subj "/CN=127.0.0.1"
        printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
            "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >"$d/server.ext"
        openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
            -out "$d/server.pem" -days 825 -extfile "$d/server.ext"
        openssl pkcs12 -export -in "$d/server.pem" -inkey "$d/server.key" -certfile "$d/ca.pem" \
            -name broker -out "$d/broker.p12" -passout "pass:$S3TS_SECURE_KEYSTORE_PASSWORD"
    ) >"$log" 2>&1 || { s3ts_tail_log "$log"; s3ts_die "making the CA and server certificate failed"; }
    chmod 644 "$d/ca.pem" "$d/server.pem"
    rm -rf "$PKI"
    mv "$d" "$PKI"
    s3ts_log "made a CA ($PKI/ca.pem) and a server certificate for 127.0.0.1/localhost"
}

# ------------------------------------------------------------------ Kafka

k_write_config() {
    mkdir -p "$K_DATA" "$K_LOGS"
    cp "$S3TS_SERVICES_DIR/kafka/log4j2.properties" "$K_STATE/log4j2.properties"
    (
        umask 077
        cat >"$K_PROPS.tmp" <<EOF
# written by services/secure.sh on every start; edit the script, not this file
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$K_CPORT
listeners=SASL_SSL://127.0.0.1:$K_PORT,CONTROLLER://127.0.0.1:$K_CPORT
advertised.listeners=SASL_SSL://127.0.0.1:$K_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
log.dirs=$K_DATA

# SASL/SCRAM-SHA-512 over TLS; the broker itself logs in as the SCRAM user "admin"
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$S3TS_SECURE_KAFKA_ADMIN_PASSWORD";
ssl.keystore.type=PKCS12
ssl.keystore.location=$PKI/broker.p12
ssl.keystore.password=$S3TS_SECURE_KEYSTORE_PASSWORD
ssl.key.password=$S3TS_SECURE_KEYSTORE_PASSWORD
ssl.truststore.type=PEM
ssl.truststore.location=$PKI/ca.pem
ssl.client.auth=none
ssl.enabled.protocols=TLSv1.3,TLSv1.2
ssl.endpoint.identification.algorithm=https
EOF
        s3ts_kafka_node_props 3 >>"$K_PROPS.tmp"
    )
    mv "$K_PROPS.tmp" "$K_PROPS"
}

java_opts() {
    # shellcheck disable=SC2086
    printf '%s\n' $HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:TieredStopAtLevel=1 \
        -Djava.awt.headless=true -Dlog4j2.configurationFile="$K_STATE/log4j2.properties" \
        -Dkafka.logs.dir="$K_LOGS"
}

k_format() {
    # The passwords are on this one command line for a moment (loopback test services only).
    s3ts_kafka_format "$1" "$K_LIBS" "$K_STATE" "$K_DATA" "$K_LOGS" "$K_PROPS" \
        " with SCRAM-SHA-512 users admin and $S3TS_SECURE_SASL_USERNAME" \
        --add-scram "SCRAM-SHA-512=[name=admin,password=$S3TS_SECURE_KAFKA_ADMIN_PASSWORD]" \
        --add-scram "SCRAM-SHA-512=[name=$S3TS_SECURE_SASL_USERNAME,password=$S3TS_SECURE_SASL_PASSWORD]"
}

k_ready() {
    S3TS_SECURE_SASL_PASSWORD=$S3TS_SECURE_SASL_PASSWORD python3 "$S3TS_SERVICES_DIR/kafka_ready.py" \
        "$K_ADDRESS" --tls-ca "$PKI/ca.pem" --sasl-scram-sha-512 "$S3TS_SECURE_SASL_USERNAME" \
        --password-env S3TS_SECURE_SASL_PASSWORD --timeout 3 "$@"
}

k_launch() {
    local java opts
    java=$(find_java)
    k_write_config
    k_format "$java"
    mapfile -t opts < <(java_opts)
    s3ts_log "starting kafka $K_VERSION with SASL_SSL on $K_ADDRESS (controller 127.0.0.1:$K_CPORT), logs in $K_LOGS"
    printf '\n===== %s starting kafka %s (SASL_SSL) =====\n' "$(date -u +%FT%TZ)" "$K_VERSION" >>"$K_LOGS/stdout.log"
    (cd "$K_STATE" && exec setsid nohup "$java" "${opts[@]}" -cp "$K_LIBS/*" kafka.Kafka "$K_PROPS" \
        >>"$K_LOGS/stdout.log" 2>&1 </dev/null 8>&- 9>&-) &
    printf '%s\n' "$!" >"$K_PIDFILE"
}

# ------------------------------------------------------------------ SeaweedFS

w_ready() {
    SSL_CERT_FILE=$PKI/ca.pem S3TS_S3_ACCESS_KEY_ID=$S3TS_SECURE_S3_ACCESS_KEY_ID \
        S3TS_S3_SECRET_ACCESS_KEY=$S3TS_SECURE_S3_SECRET_ACCESS_KEY \
        python3 "$S3TS_SERVICES_DIR/s3_ready.py" "$ENDPOINT" "$@"
}

w_launch() {
    mkdir -p "$W_DATA" "$W_LOGS" "$W_STATE/config"
    local b=$S_BASE args
    mapfile -t args < <(s3ts_weed_mini_args "$b" "$S_PORT" "$W_DATA" "$W_LOGS" "$W_STATE")
    args+=(-s3.cert.file="$PKI/server.pem" -s3.key.file="$PKI/server.key"
        -master.volumeSizeLimitMB=64 -volume.max=100)
    s3ts_log "starting weed mini $W_VERSION, S3 over HTTPS on $ENDPOINT (internal ports $((b + 1))-$((b + 9))), data in $W_DATA"
    printf '\n===== %s starting weed %s (HTTPS) =====\n' "$(date -u +%FT%TZ)" "$W_VERSION" >>"$W_LOGS/stdout.log"
    (cd "$W_STATE" && AWS_ACCESS_KEY_ID=$S3TS_SECURE_S3_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$S3TS_SECURE_S3_SECRET_ACCESS_KEY \
        WEED_MASTER_VOLUME_GROWTH_FREEZE_ON_TOPOLOGY_MISMATCH=false \
        exec setsid nohup "$W_BIN" "${args[@]}" >>"$W_LOGS/stdout.log" 2>&1 </dev/null 8>&- 9>&-) &
    printf '%s\n' "$!" >"$W_PIDFILE"
}

# ------------------------------------------------------------------ verbs

cmd_start() {
    s3ts_lock "$SSTATE/.lock" 9
    make_credentials
    load_credentials
    make_pki
    local kpid wpid
    if ! kpid=$(s3ts_pid_alive "$K_PIDFILE" "$K_MATCH"); then
        rm -f "$K_PIDFILE"
        s3ts_ports_free "not this script's broker with S3TS_SECURE_STATE=$SSTATE; set S3TS_SECURE_KAFKA_PORT/S3TS_SECURE_KAFKA_CONTROLLER_PORT" "$K_PORT" "$K_CPORT"
        [ -f "$S3TS_HOME/kafka-$K_VERSION/.installed" ] || bash "$S3TS_SERVICES_DIR/kafka.sh" install
        k_launch
        kpid=$(cat "$K_PIDFILE")
    fi
    if ! wpid=$(s3ts_pid_alive "$W_PIDFILE" "$W_MATCH"); then
        rm -f "$W_PIDFILE"
        s3ts_ports_free "not this script's weed with S3TS_SECURE_STATE=$SSTATE; set S3TS_SECURE_S3_PORT/S3TS_SECURE_SEAWEEDFS_PORT_BASE (ports used: ${W_PORTS[*]})" "${W_PORTS[@]}"
        [ -x "$W_BIN" ] || bash "$S3TS_SERVICES_DIR/seaweedfs.sh" install
        w_launch
        wpid=$(cat "$W_PIDFILE")
    fi
    local t0=$SECONDS k_ok="" w_ok="" kerr="" werr=""
    while [ -z "$k_ok" ] || [ -z "$w_ok" ]; do
        if [ -z "$k_ok" ]; then
            if kerr=$(k_ready 2>&1); then
                k_ok=1
                s3ts_log "kafka ready on $K_ADDRESS (SASL_SSL, SCRAM-SHA-512; pid $kpid, $((SECONDS - t0))s)"
            elif ! kill -0 "$kpid" 2>/dev/null; then
                rm -f "$K_PIDFILE"
                s3ts_tail_log "$K_LOGS/stdout.log" "$K_LOGS/server.log"
                s3ts_die "kafka exited during startup (logs above, in $K_LOGS)"
            fi
        fi
        if [ -z "$w_ok" ]; then
            if werr=$(w_ready --write --timeout 20 2>&1); then
                w_ok=1
                s3ts_log "s3 ready on $ENDPOINT (HTTPS; pid $wpid, $((SECONDS - t0))s)"
            elif ! kill -0 "$wpid" 2>/dev/null; then
                rm -f "$W_PIDFILE"
                s3ts_tail_log "$W_LOGS/stdout.log"
                s3ts_die "weed exited during startup (logs above, in $W_LOGS)"
            fi
        fi
        if ((SECONDS - t0 >= START_TIMEOUT)); then
            [ -n "$k_ok" ] || s3ts_tail_log "$K_LOGS/stdout.log" "$K_LOGS/server.log"
            [ -n "$w_ok" ] || s3ts_tail_log "$W_LOGS/stdout.log"
            s3ts_die "not ready within ${START_TIMEOUT}s (kafka: ${k_ok:+ok}${k_ok:-${kerr##*not ready: }}; s3: ${w_ok:+ok}${w_ok:-${werr##*not ready: }}); still running, logs above"
        fi
        if [ -z "$k_ok" ] || [ -z "$w_ok" ]; then sleep 0.5; fi
    done
    s3ts_log "ready: credentials in $CREDS, CA $PKI/ca.pem"
}

cmd_stop() {
    s3ts_lock "$SSTATE/.lock" 9
    s3ts_stop_pid "$K_PIDFILE" "$K_MATCH" "secure kafka" "${S3TS_KAFKA_STOP_TIMEOUT:-30}" &
    local k=$!
    s3ts_stop_pid "$W_PIDFILE" "$W_MATCH" "secure seaweedfs" "${S3TS_SEAWEEDFS_STOP_TIMEOUT:-30}"
    wait "$k"
}

cmd_status() {
    local rc=0 pid
    if [ -s "$CREDS" ]; then load_credentials; fi
    if pid=$(s3ts_pid_alive "$K_PIDFILE" "$K_MATCH"); then
        if [ -s "$CREDS" ] && k_ready --quiet; then
            echo "secure kafka: running $K_ADDRESS (SASL_SSL, SCRAM-SHA-512) pid $pid state $K_STATE"
        else
            echo "secure kafka: starting/not answering $K_ADDRESS pid $pid (logs in $K_LOGS)"
            rc=1
        fi
    else
        echo "secure kafka: stopped $K_ADDRESS"
        rc=1
    fi
    if pid=$(s3ts_pid_alive "$W_PIDFILE" "$W_MATCH"); then
        if [ -s "$CREDS" ] && w_ready --quiet --timeout 3; then
            echo "secure seaweedfs: running $ENDPOINT (HTTPS, CA $PKI/ca.pem) pid $pid state $W_STATE"
        else
            echo "secure seaweedfs: starting/not answering $ENDPOINT pid $pid (logs in $W_LOGS)"
            rc=1
        fi
    else
        echo "secure seaweedfs: stopped $ENDPOINT"
        rc=1
    fi
    [ $rc -ne 0 ] || echo "credentials: $CREDS"
    return $rc
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
