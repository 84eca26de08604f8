#!/usr/bin/env bash
# Give each Airflow Celery worker on a host its own log-server port, then exec the worker.
#
#   log-port-wrapper.sh airflow celery worker --celery-hostname ... --queues ... --concurrency ...
#
# Under host networking every `airflow celery worker` starts a log server on
# [logging] worker_log_server_port (8793): a second worker on the same host -- another pool's, or the
# new worker a surge-first rollout starts next to an old one of the same pool -- cannot bind it.
# drainctl's `env` is per pool, not per worker, so the port is chosen here, per process: the lowest
# port of AIRFLOW_LOG_PORTS (ports and FIRST-LAST ranges, comma-separated; default 8793,8795-8799:
# 8794 is the triggerer's) whose lock file this script can lock. The lock (flock, on a file descriptor the worker
# inherits) is held until the worker and all its children have exited, so two workers never get the
# same port, even when started at the same instant. The range must be reserved for these workers.
#
# Environment: AIRFLOW_LOG_PORTS, AIRFLOW_LOG_PORT_LOCK_DIR (default /run/lock, else /tmp).
# See docs/airflow.md: the UI fetches live logs from port worker_log_server_port of *its* config.
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 COMMAND [ARG...]" >&2
    exit 2
fi

spec="${AIRFLOW_LOG_PORTS:-8793,8795-8799}"
ports=()
IFS=',' read -r -a items <<<"$spec"
for item in "${items[@]}"; do
    first="${item%-*}"
    last="${item#*-}"
    case "$first$last" in
        ''|*[!0-9]*) echo "$0: AIRFLOW_LOG_PORTS: '$item' is not a port or FIRST-LAST (got '$spec')" >&2; exit 2 ;;
    esac
    if [ "$first" -lt 1 ] || [ "$first" -gt "$last" ] || [ "$last" -gt 65535 ]; then
        echo "$0: AIRFLOW_LOG_PORTS: bad range '$item'" >&2
        exit 2
    fi
    for ((port = first; port <= last; port++)); do ports+=("$port"); done
done

lock_dir="${AIRFLOW_LOG_PORT_LOCK_DIR:-/run/lock}"
if [ ! -w "$lock_dir" ]; then
    lock_dir=/tmp
fi

for port in "${ports[@]}"; do
    # Reopening fd 9 closes the previous attempt's file (and any lock we did not get).
    exec 9>>"$lock_dir/airflow-log-port-$port.lock"
    if flock --nonblock 9; then
        export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT="$port"
        echo "$0: log server port $port" >&2
        exec "$@"
    fi
done
echo "$0: every log-server port in $spec is taken on this host; widen AIRFLOW_LOG_PORTS" >&2
exit 1
