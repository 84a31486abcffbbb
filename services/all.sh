#!/usr/bin/env bash
# Both local services at once: Kafka (services/kafka.sh) and the S3 server (services/seaweedfs.sh).
#
#   bash services/all.sh install|start|stop|restart|status
#
# install/start/stop run the two in parallel and fail if either fails; status prints one line
# per service and exits 0 only when both are running and answering.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
services=(kafka seaweedfs)

both() {
    local action=$1 s rc=0
    local -A pids=()
    for s in "${services[@]}"; do
        bash "$here/$s.sh" "$action" &
        pids[$s]=$!
    done
    for s in "${services[@]}"; do
        if ! wait "${pids[$s]}"; then
            echo "[all] $s $action FAILED" >&2
            rc=1
        fi
    done
    return $rc
}

case "${1:-}" in
    install | start | stop) both "$1" ;;
    restart) both stop; both start ;;
    status)
        rc=0
        for s in "${services[@]}"; do
            bash "$here/$s.sh" status || rc=1
        done
        exit $rc
        ;;
    *)
        echo "usage: $0 install|start|stop|restart|status" >&2
        exit 2
        ;;
esac
