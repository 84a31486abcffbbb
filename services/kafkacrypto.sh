#!/usr/bin/env bash
# KafkaCrypto (message-layer encryption, as OpenMSIStream's [kafkacrypto] section uses it):
# installs the project's optional `crypto` extra and provisions fresh test nodes.
#
# Usage:
#   bash services/kafkacrypto.sh install     # the crypto extra into the project venv (idempotent)
#   bash services/kafkacrypto.sh check       # exit 0 iff kafkacrypto imports (libsodium included)
#   bash services/kafkacrypto.sh version     # the kafkacrypto version pyproject.toml pins
#   bash services/kafkacrypto.sh provision DIR --topic TOPIC [--topic TOPIC2 ...]
#                                [--prefix NAME] [--bootstrap HOST:PORT] [--sub-interval S]
#       Makes three nodes in OpenMSIStream's layout (DIR/<node_id>/<node_id>.config,
#       .crypto, .seed), printing "<node_id><TAB><config path>" for each:
#         NAME_producer   may encrypt for the topics
#         NAME_consumer   may request their keys; same root of trust as the producer
#         NAME_outsider   a consumer under a root of trust of its own: it never gets keys
#       A config file beside DIR's node directories points at one with
#         [kafkacrypto]
#         node_id = NAME_producer
#
# Environment:
#   S3TS_VENV                      the venv (default: <repo>/.venv)
#   S3TS_KC_ROT_PASSWORD           root-of-trust password (12+ chars) for producer+consumer;
#   S3TS_KC_PROVISIONING_PASSWORD  provisioning password (6+ chars); both default to random
#                                  values, so each `provision` is a trust domain of its own.
#                                  Set both to provision more nodes into the same domain later.
#   LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS  default for --bootstrap (services/env.sh sets it)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${S3TS_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

log() { echo "[kafkacrypto] $*" >&2; }

# The pin lives in one place, the `crypto` extra of pyproject.toml.
pinned_version() {
    sed -n 's/^crypto *= *\[ *"kafkacrypto==\([^"]*\)".*/\1/p' "$ROOT/pyproject.toml" | head -n1
}

is_ok() {
    [ -x "$PY" ] || return 1
    "$PY" - "$(pinned_version)" <<'EOF' >/dev/null 2>&1
import sys, warnings
from importlib.metadata import version
warnings.simplefilter("ignore")
import pysodium  # noqa: F401  (loads libsodium through ctypes)
import kafkacrypto  # noqa: F401
sys.exit(0 if version("kafkacrypto") == sys.argv[1] else 1)
EOF
}

do_install() {
    local want
    want="$(pinned_version)"
    [ -n "$want" ] || { log "no crypto = [\"kafkacrypto==...\"] extra in pyproject.toml"; return 1; }
    [ -x "$PY" ] || { log "no venv at $VENV: run ./run install first"; return 1; }
    if is_ok; then
        log "kafkacrypto $want already installed in $VENV"
        return 0
    fi
    # pysodium is a ctypes binding: it needs the shared libsodium from the system.
    if ! ldconfig -p 2>/dev/null | grep -q 'libsodium\.so'; then
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
            log "installing libsodium (Debian package libsodium23)"
            apt-get install -y -q libsodium23 >&2 || { apt-get update -q >&2 && apt-get install -y -q libsodium23 >&2; }
        else
            log "libsodium is missing; install it (Debian: apt-get install libsodium23)"
            return 1
        fi
    fi
    log "installing kafkacrypto==$want into $VENV"
    "$PY" -m pip install -q --disable-pip-version-check "kafkacrypto==$want"
    is_ok || { log "kafkacrypto $want installed but does not import:"; "$PY" -c 'import kafkacrypto' >&2; return 1; }
    log "kafkacrypto $want imports OK"
}

do_provision() {
    local dir="${1:-}"
    [ -n "$dir" ] || { log "usage: provision DIR --topic TOPIC [...]"; return 2; }
    shift
    local prefix="s3ts" bootstrap="${LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS:-127.0.0.1:${S3TS_KAFKA_PORT:-39092}}"
    local sub_interval="" topics=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --topic) topics="${topics:+$topics,}$2"; shift 2 ;;
            --prefix) prefix="$2"; shift 2 ;;
            --bootstrap) bootstrap="$2"; shift 2 ;;
            --sub-interval) sub_interval="$2"; shift 2 ;;
            *) log "unknown option $1"; return 2 ;;
        esac
    done
    [ -n "$topics" ] || { log "provision needs at least one --topic"; return 2; }
    is_ok || { log "kafkacrypto is not installed: bash services/kafkacrypto.sh install"; return 1; }
    mkdir -p "$dir"
    local extra=()
    [ -z "$sub_interval" ] || extra=(--sub-interval "$sub_interval")
    "$PY" -m s3transfer_stream.crypto provision "$dir" \
        --node "${prefix}_producer:producer:$topics" \
        --node "${prefix}_consumer:consumer:$topics" \
        --bootstrap-servers "$bootstrap" "${extra[@]}"
    # A separate run with fresh random passwords: a root of trust nobody else shares.
    env -u S3TS_KC_ROT_PASSWORD -u S3TS_KC_PROVISIONING_PASSWORD \
        "$PY" -m s3transfer_stream.crypto provision "$dir" \
        --node "${prefix}_outsider:consumer:$topics" \
        --bootstrap-servers "$bootstrap" "${extra[@]}"
}

cmd="${1:-help}"
shift || true
case "$cmd" in
    install) do_install ;;
    check) is_ok ;;
    version) pinned_version ;;
    provision) do_provision "$@" ;;
    *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; [ "$cmd" = help ] ;;
esac
