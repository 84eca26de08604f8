#!/usr/bin/env bash
# Live demo on the embedded (local-process) runtime: drainctl starts and keeps a pool of two Celery
# workers of examples/demo_app.py (config .demo/drainctl.toml, made from examples/demo.toml.in), then
# rolls the pool out from v1 to v2 (config rewritten, SIGHUP) while a steady stream of tasks flows, and
# checks that every task sent ran exactly once, to the end (examples/demo_report.py).
# Everything started here is stopped on exit, by PID: drainctl first, then the pool's workers (they
# outlive the controller on purpose). Logs go to .demo/ (the workers' to .demo/state/logs/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

VHOST=drainctl-demo
BROKER="amqp://guest:guest@127.0.0.1:5672/$VHOST"
HTTP=127.0.0.1:9540
URL="http://$HTTP"
DEMO_DIR="$ROOT/.demo"
STATE_DIR="$DEMO_DIR/state"
RECORD_DIR="$DEMO_DIR/records"
CONFIG="$DEMO_DIR/drainctl.toml"
SENT_FILE="$DEMO_DIR/sent.txt"
PY="$ROOT/.venv/bin/python"
DRAINCTL="$ROOT/.venv/bin/drainctl"

LOAD_DURATION_S=25    # the load: LOAD_RATE tasks/s of 0.2-2 s each, for LOAD_DURATION_S seconds
LOAD_RATE=4
ROLLOUT_AFTER_S=5     # start the rollout this long after the load
READY_TIMEOUT_S=90    # for the first two workers
ROLLOUT_TIMEOUT_S=120
TASKS_TIMEOUT_S=60    # for every task sent to have ended, once the load is over

log() { printf '[demo] %s\n' "$*"; }
die() {
    log "ERROR: $*" >&2
    exit 1
}

# The paths go into TOML basic strings: keep them free of what would need escaping there.
case "$ROOT" in
    *[\"\\]* | *$'\n'*) die "the repository path $ROOT contains a quote, a backslash or a newline; move it" ;;
esac

bash "$ROOT/scripts/setup.sh"

# --- process helpers ------------------------------------------------------------
# is_running PID START_TIME: PID is alive (not a zombie) and still the process that started at
# START_TIME (/proc/PID/stat field 22), so a reused PID is never signalled.
is_running() {
    local stat fields
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    read -r -a fields <<<"${stat##*) }"
    [ "${fields[0]}" != Z ] && [ "${fields[0]}" != X ] && [ "${fields[19]}" = "$2" ]
}

# pool_workers: "PID START_TIME" of every live worker recorded in .demo/state/workers/*.json
LIST_STATE_FILES='
import json, sys
from pathlib import Path
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    try:
        state = json.loads(path.read_text())
        print(int(state["pid"]), int(state["create_time"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
'
pool_workers() {
    local pid start
    [ -d "$STATE_DIR/workers" ] || return 0
    while read -r pid start; do
        if is_running "$pid" "$start"; then echo "$pid $start"; fi
    done < <("$PY" -c "$LIST_STATE_FILES" "$STATE_DIR/workers")
}

# --- broker vhost -------------------------------------------------------------
if ! rabbitmqctl -q list_vhosts | grep -qx "$VHOST"; then
    log "creating vhost $VHOST"
    rabbitmqctl -q add_vhost "$VHOST"
fi
rabbitmqctl -q set_permissions -p "$VHOST" guest '.*' '.*' '.*'
# Start from an empty queue: drop what an earlier demo left behind, and drainctl's event queue with
# the events of the last demo's workers (which would show up as offline workers).
rabbitmqctl -q purge_queue -p "$VHOST" default >/dev/null 2>&1 || true
rabbitmqctl -q delete_queue -p "$VHOST" drainctl.demo >/dev/null 2>&1 || true

if curl -sf "$URL/healthz" >/dev/null 2>&1; then
    die "something already answers on $URL; stop it first"
fi

mkdir -p "$DEMO_DIR"
leftover=$(pool_workers)
if [ -n "$leftover" ]; then
    die "workers of an earlier demo still run (pid $(cut -d' ' -f1 <<<"$leftover" | tr '\n' ' ')); stop them first (kill -TERM PID)"
fi
# A fresh start: no journal, worker state files or records from an earlier run.
rm -rf "$STATE_DIR" "$RECORD_DIR" "$SENT_FILE" "$DEMO_DIR/rollout.json"
mkdir -p "$STATE_DIR" "$RECORD_DIR"

# --- cleanup: stop everything we started, by PID ------------------------------
DRAINCTL_PID=""
LOAD_PID=""
cleanup() {
    local pid start workers alive
    set +e
    if [ -n "$LOAD_PID" ] && kill -0 "$LOAD_PID" 2>/dev/null; then
        kill -TERM "$LOAD_PID" 2>/dev/null
        wait "$LOAD_PID" 2>/dev/null
    fi
    if [ -n "$DRAINCTL_PID" ] && kill -0 "$DRAINCTL_PID" 2>/dev/null; then
        kill -TERM "$DRAINCTL_PID" 2>/dev/null
        for _ in $(seq 1 150); do # at most 15 s
            kill -0 "$DRAINCTL_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$DRAINCTL_PID" 2>/dev/null && kill -KILL "$DRAINCTL_PID" 2>/dev/null
        wait "$DRAINCTL_PID" 2>/dev/null
        log "stopped drainctl (pid $DRAINCTL_PID)"
    fi
    # The workers outlive the controller on purpose: stop them here. SIGTERM is Celery's warm shutdown.
    workers=$(pool_workers)
    if [ -n "$workers" ]; then
        while read -r pid start; do
            is_running "$pid" "$start" && kill -TERM "$pid" 2>/dev/null
        done <<<"$workers"
        for _ in $(seq 1 300); do # at most 30 s
            alive=0
            while read -r pid start; do
                if is_running "$pid" "$start"; then
                    alive=1
                    break
                fi
            done <<<"$workers"
            [ "$alive" = 0 ] && break
            sleep 0.1
        done
        while read -r pid start; do
            if is_running "$pid" "$start"; then
                log "worker pid $pid still runs 30 s after SIGTERM: SIGKILL (its process group)"
                kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
            fi
        done <<<"$workers"
        log "stopped pool workers (pid $(cut -d' ' -f1 <<<"$workers" | tr '\n' ' '| sed 's/ $//'))"
    fi
    log "logs are in $DEMO_DIR (workers: $STATE_DIR/logs)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- config -------------------------------------------------------------------
sed_escape() { printf '%s' "$1" | sed -e 's/[\\&|]/\\&/g'; }

# write_config VERSION: fill examples/demo.toml.in into .demo/drainctl.toml, atomically (temp file + mv).
write_config() {
    local tmp="$CONFIG.tmp.$$"
    sed -e "s|@VERSION@|$(sed_escape "$1")|g" \
        -e "s|@STATE_DIR@|$(sed_escape "$STATE_DIR")|g" \
        -e "s|@HTTP@|$(sed_escape "$HTTP")|g" \
        -e "s|@PYTHON@|$(sed_escape "$PY")|g" \
        -e "s|@ROOT@|$(sed_escape "$ROOT")|g" \
        -e "s|@BROKER_URL@|$(sed_escape "$BROKER")|g" \
        -e "s|@RECORD_DIR@|$(sed_escape "$RECORD_DIR")|g" \
        "$ROOT/examples/demo.toml.in" >"$tmp"
    mv -f "$tmp" "$CONFIG"
}

# pool_at VERSION: pool `demo` runs VERSION only, every replica ready, no rollout under way.
pool_at() {
    local summary version ready alive replicas rollout
    summary=$("$DRAINCTL" rollout --url "$URL" status --json 2>/dev/null | "$PY" -c '
import json, sys
pool = json.load(sys.stdin)["pools"][0]
print(pool["version_target"], pool["ready"], pool["alive"], pool["replicas"], "rolling" if pool["rollout"] else "idle")
' 2>/dev/null) || return 1
    read -r version ready alive replicas rollout <<<"$summary"
    [ "$version" = "$1" ] && [ "$ready" = "$replicas" ] && [ "$alive" = "$replicas" ] && [ "$rollout" = idle ]
}

drainctl_alive() {
    kill -0 "$DRAINCTL_PID" 2>/dev/null && return 0
    log "drainctl exited; log tail:" >&2
    tail -n 30 "$DEMO_DIR/drainctl.log" >&2 || true
    return 1
}

# --- drainctl and its pool at v1 ----------------------------------------------
write_config v1
log "wrote $CONFIG (pool demo: 2 workers, version v1)"
TOKEN=$("$PY" -c 'import secrets; print(secrets.token_hex(32))')
# Secrets travel in the environment, never in argv.
DRAINCTL_BROKER_URL="$BROKER" DRAINCTL_API_TOKEN="$TOKEN" \
    setsid "$DRAINCTL" run --config "$CONFIG" >"$DEMO_DIR/drainctl.log" 2>&1 </dev/null &
DRAINCTL_PID=$!
echo "$DRAINCTL_PID" >"$DEMO_DIR/drainctl.pid"
log "started drainctl (pid $DRAINCTL_PID), log .demo/drainctl.log"

healthy=0
for _ in $(seq 1 60); do # at most ~30 s
    if curl -sf "$URL/healthz" >/dev/null 2>&1; then
        healthy=1
        break
    fi
    drainctl_alive || exit 1
    sleep 0.5
done
[ "$healthy" = 1 ] || die "drainctl did not answer on $URL/healthz within 30 s (see .demo/drainctl.log)"
log "drainctl is up on $URL; waiting for its pool to start"

deadline=$((SECONDS + READY_TIMEOUT_S))
ready=0
for _ in $(seq 1 $((READY_TIMEOUT_S * 2))); do
    if pool_at v1; then
        ready=1
        break
    fi
    drainctl_alive || exit 1
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep 0.5
done
if [ "$ready" != 1 ]; then
    "$DRAINCTL" rollout --url "$URL" status || true
    die "pool demo did not have 2 ready v1 workers within ${READY_TIMEOUT_S}s (worker logs: $STATE_DIR/logs)"
fi
"$DRAINCTL" rollout --url "$URL" status
"$DRAINCTL" status --url "$URL"

# --- load, and a rollout in the middle of it ----------------------------------
"$PY" examples/send_load.py --broker "$BROKER" --duration "$LOAD_DURATION_S" --rate "$LOAD_RATE" \
    --max-seconds 2 --eta-fraction 0 --sent-file "$SENT_FILE" >"$DEMO_DIR/send_load.log" 2>&1 </dev/null &
LOAD_PID=$!
log "sending $LOAD_RATE tasks/s (0.2-2 s each) for ${LOAD_DURATION_S}s (pid $LOAD_PID, log .demo/send_load.log)"
sleep "$ROLLOUT_AFTER_S"

write_config v2
kill -HUP "$DRAINCTL_PID"
log "config now at v2; sent SIGHUP to drainctl: rolling out under load"

rollout_start=$SECONDS
deadline=$((SECONDS + ROLLOUT_TIMEOUT_S))
done_at=""
for _ in $(seq 1 $((ROLLOUT_TIMEOUT_S / 2))); do
    log "drainctl rollout status, $((SECONDS - rollout_start))s after the SIGHUP:"
    "$DRAINCTL" rollout --url "$URL" status || true
    if pool_at v2; then
        done_at=$((SECONDS - rollout_start))
        break
    fi
    drainctl_alive || exit 1
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep 2
done
[ -n "$done_at" ] || die "the pool did not reach v2 (2 ready workers, no rollout under way) within ${ROLLOUT_TIMEOUT_S}s"
log "rolled out to v2 in about ${done_at}s"

# --- outcome ------------------------------------------------------------------
log "waiting for the load to end"
for _ in $(seq 1 $(((LOAD_DURATION_S + 30) * 2))); do
    kill -0 "$LOAD_PID" 2>/dev/null || break
    sleep 0.5
done
kill -0 "$LOAD_PID" 2>/dev/null && die "the load sender is still running $((LOAD_DURATION_S + 30))s after it started"
load_rc=0
wait "$LOAD_PID" || load_rc=$?
LOAD_PID=""
tail -n 1 "$DEMO_DIR/send_load.log"
[ "$load_rc" = 0 ] || die "the load sender failed (exit $load_rc); see .demo/send_load.log"

"$DRAINCTL" rollout --url "$URL" status --json >"$DEMO_DIR/rollout.json"
log "waiting (at most ${TASKS_TIMEOUT_S}s) for every task sent to end; summary:"
report_rc=0
"$PY" examples/demo_report.py --sent-file "$SENT_FILE" --record-dir "$RECORD_DIR" \
    --rollout-json "$DEMO_DIR/rollout.json" --wait "$TASKS_TIMEOUT_S" || report_rc=$?
if [ "$report_rc" != 0 ]; then
    die "some tasks were interrupted, lost or run twice, or the rollout did not succeed (see above)"
fi
log "OK: rolled out v1 -> v2 under load; every task ran exactly once, to the end"
