#!/usr/bin/env bash
# OpenMSIStream peer environment: a private virtual environment holding the
# upstream `openmsistream` package from PyPI, used only as a *peer* (to make
# reference bytes for golden tests and to run side-by-side benchmarks). It lives
# in its own venv because its console scripts (UploadDataFile,
# S3TransferStreamProcessor, ...) share names with ours.
#
# Usage:
#   bash services/openmsistream-peer.sh install   # create/repair the venv (idempotent)
#   bash services/openmsistream-peer.sh path      # print the venv's python path
#   bash services/openmsistream-peer.sh check     # exit 0 iff the venv imports openmsistream
#
# Environment:
#   S3TS_HOME        state root (default: $HOME/.cache/s3transfer-stream)
#   S3TS_PYTHON      interpreter to build the venv from (default: python3, must be 3.11)
#   OMS_PEER_VERSION openmsistream version (default: 1.8.8)
#
# Note: OpenMSIStream fails to import when OPENMSISTREAM_CONFIG_FILE_DIR is set,
# so every call into the venv below runs with that variable removed; callers
# that run the venv's python themselves should do the same
# (`env -u OPENMSISTREAM_CONFIG_FILE_DIR "$(bash services/openmsistream-peer.sh path)" ...`).
set -euo pipefail

OMS_PEER_VERSION="${OMS_PEER_VERSION:-1.8.8}"
S3TS_HOME="${S3TS_HOME:-$HOME/.cache/s3transfer-stream}"
VENV="$S3TS_HOME/venvs/openmsistream-$OMS_PEER_VERSION"
PY="$VENV/bin/python"
STAMP="$VENV/.s3ts-peer-installed"

log() { echo "[openmsistream-peer] $*" >&2; }

venv_py() { env -u OPENMSISTREAM_CONFIG_FILE_DIR "$PY" "$@"; }

# The interpreter the venv is built from: the machine's python3, which must be 3.11.
pick_python() {
    local cand
    for cand in "${S3TS_PYTHON:-}" python3 python3.11; do
        [ -n "$cand" ] || continue
        command -v "$cand" >/dev/null 2>&1 || continue
        if "$cand" -c 'import sys, venv; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
            echo "$cand"
            return 0
        fi
    done
    log "no Python 3.11 interpreter with the venv module found (set S3TS_PYTHON)"
    return 1
}

is_ok() {
    [ -f "$STAMP" ] && [ -x "$PY" ] || return 1
    venv_py - "$OMS_PEER_VERSION" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
import openmsistream  # noqa: F401
from openmsistream.kafka_wrapper.serialization import DataFileChunkSerializer  # noqa: F401
sys.exit(0 if version("openmsistream") == sys.argv[1] else 1)
EOF
}

do_install() {
    mkdir -p "$S3TS_HOME/venvs"
    # Serialise concurrent installs (two test sessions on one machine).
    exec 9>"$S3TS_HOME/venvs/.openmsistream-$OMS_PEER_VERSION.lock"
    if command -v flock >/dev/null 2>&1; then flock 9; fi

    if is_ok; then
        log "openmsistream $OMS_PEER_VERSION already installed in $VENV"
        return 0
    fi
    local base
    base="$(pick_python)"
    if [ -e "$VENV" ]; then
        log "removing incomplete venv $VENV"
        rm -rf "$VENV"
    fi
    log "creating venv $VENV with $("$base" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    "$base" -m venv "$VENV"
    env -u OPENMSISTREAM_CONFIG_FILE_DIR "$PY" -m pip install --quiet --upgrade pip
    log "installing openmsistream==$OMS_PEER_VERSION"
    env -u OPENMSISTREAM_CONFIG_FILE_DIR "$PY" -m pip install --quiet "openmsistream==$OMS_PEER_VERSION"
    venv_py -c 'import openmsistream; from importlib.metadata import version; print("openmsistream", version("openmsistream"), "imports OK")' >&2
    touch "$STAMP"
    is_ok || { log "post-install check failed"; return 1; }
}

case "${1:-}" in
    install) do_install ;;
    path)
        if [ ! -x "$PY" ] || [ ! -f "$STAMP" ]; then
            log "not installed; run: bash services/openmsistream-peer.sh install"
            exit 1
        fi
        echo "$PY"
        ;;
    check) is_ok ;;
    *)
        echo "usage: $0 install|path|check" >&2
        exit 2
        ;;
esac
