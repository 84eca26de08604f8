#!/usr/bin/env bash
# Live demo on the embedded (local-process) runtime: two Celery workers of
# examples/demo_app.py, drainctl watching them through RabbitMQ, a burst of load,
# then drainctl's view of it. Everything started here is stopped on exit (by PID).
# Logs go to .demo/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

VHOST=drainctl-demo
BROKER="amqp://guest:guest@127.0.0.1:5672/$VHOST"
HTTP=127.0.0.1:9540
DEMO_DIR="$ROOT/.demo"

log() { printf '[demo] %s\n' "$*"; }

bash "$ROOT/scripts/setup.sh"

# --- broker vhost -------------------------------------------------------------
if ! rabbitmqctl -q list_vhosts | grep -qx "$VHOST"; then
    log "creating vhost $VHOST"
    rabbitmqctl -q add_vhost "$VHOST"
fi
rabbitmqctl -q set_permissions -p "$VHOST" guest '.*' '.*' '.*'
# Start from an empty queue: drop what an earlier demo left behind.
rabbitmqctl -q purge_queue -p "$VHOST" default >/dev/null 2>&1 || true

if curl -sf "http://$HTTP/healthz" >/dev/null 2>&1; then
    log "something already answers on http://$HTTP; stop it first" >&2
    exit 1
fi

mkdir -p "$DEMO_DIR"

# --- cleanup: stop everything we started, by PID ------------------------------
PIDS=()
stop_all() {
    local pid i
    # Reverse order: drainctl first, then the workers.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        # Each was started with setsid: its PID is its process group id.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 150); do   # at most 15 s each
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    if [ "${#PIDS[@]}" -gt 0 ]; then
        log "stopped ${#PIDS[@]} processes; logs are in $DEMO_DIR"
    fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# start NAME CMD... : run CMD in its own session, output to .demo/NAME.log
start() {
    local name=$1
    shift
    setsid "$@" >"$DEMO_DIR/$name.log" 2>&1 </dev/null &
    PIDS+=("$!")
    echo "$!" >"$DEMO_DIR/$name.pid"
    log "started $name (pid $!), log .demo/$name.log"
}

# wait_log NAME PATTERN SECONDS : wait until .demo/NAME.log matches PATTERN
wait_log() {
    local name=$1 pattern=$2 seconds=$3
    for _ in $(seq 1 $((seconds * 10))); do
        grep -q -- "$pattern" "$DEMO_DIR/$name.log" 2>/dev/null && return 0
        sleep 0.1
    done
    log "$name: no '$pattern' after ${seconds}s; log tail:" >&2
    tail -n 30 "$DEMO_DIR/$name.log" >&2 || true
    return 1
}

# --- workers ------------------------------------------------------------------
# demo-a sends task events (-E); demo-b does not: drainctl turns them on.
export DEMO_BROKER_URL="$BROKER"
WORKER_ARGS=(-Q default -c 2 -l INFO --without-mingle --without-gossip)
start demo-a env PYTHONPATH=examples .venv/bin/python -m celery -A demo_app worker -n 'demo-a@%h' -E "${WORKER_ARGS[@]}"
start demo-b env PYTHONPATH=examples .venv/bin/python -m celery -A demo_app worker -n 'demo-b@%h' "${WORKER_ARGS[@]}"
wait_log demo-a ' ready\.' 60
wait_log demo-b ' ready\.' 60

# --- drainctl -----------------------------------------------------------------
start drainctl env DRAINCTL_BROKER_URL="$BROKER" .venv/bin/drainctl run --http "$HTTP"
DRAINCTL_PID=${PIDS[-1]}
healthy=0
for _ in $(seq 1 60); do   # at most ~30 s
    if curl -sf "http://$HTTP/healthz" >/dev/null 2>&1; then
        healthy=1
        break
    fi
    if ! kill -0 "$DRAINCTL_PID" 2>/dev/null; then
        break
    fi
    sleep 0.5
done
if [ "$healthy" != 1 ]; then
    log "drainctl did not become healthy; log tail:" >&2
    tail -n 30 "$DEMO_DIR/drainctl.log" >&2 || true
    exit 1
fi
log "drainctl is up on http://$HTTP"

# --- load and observation -----------------------------------------------------
.venv/bin/python examples/send_load.py --broker "$BROKER" --count 40 --queue default --max-seconds 3

for i in 1 2 3 4 5; do
    log "drainctl status ($i/5)"
    .venv/bin/drainctl status --url "http://$HTTP" || true
    sleep 2
done

log "metrics (first 30 drainctl_ lines)"
curl -s "http://$HTTP/metrics" | grep '^drainctl_' | head -30 || true
