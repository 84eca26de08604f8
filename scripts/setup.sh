#!/usr/bin/env bash
# Idempotent setup of everything drainctl's demo and test suite need, on a fresh
# Debian machine (as root) or on one that was set up before:
#   * the project virtualenv .venv with drainctl installed editable plus the dev and celery extras;
#   * a running RabbitMQ with the rabbitmq_event_exchange plugin enabled;
#   * a running Docker engine and the test image drainctl-test:base (scripts/dockerd.sh).
# Safe to run from any working directory and any number of times.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# rabbitmq-server / rabbitmqctl live in /usr/sbin on Debian; make sure it is on PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[setup] %s\n' "$*"; }

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    apt-get install -y -qq "$@" >/dev/null
}

# --- Python virtualenv -------------------------------------------------------
if [ -x .venv/bin/python ]; then
    log "virtualenv .venv exists"
else
    if ! command -v python3 >/dev/null 2>&1; then
        apt_install python3 python3-venv python3-pip
    fi
    log "creating virtualenv .venv"
    if ! python3 -m venv .venv >/dev/null 2>&1; then
        # Debian's python3 has no ensurepip without the python3-venv package.
        rm -rf .venv
        apt_install python3-venv
        python3 -m venv .venv
    fi
fi

if [ -f .venv/.stamp ] && [ .venv/.stamp -nt pyproject.toml ]; then
    log "python dependencies up to date"
else
    # celery: drainctl itself never imports it, but the demo's and the tests' workers run it.
    log "installing drainctl (editable) with the dev and celery extras"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[dev,celery]'
    touch .venv/.stamp
fi

# Older Celery for the compatibility tests (what Airflow 2 fleets run): the controller speaks the
# wire protocol and must never require its workers to share its own Celery version.
# kombu as such fleets pin it (5.4.x): kombu >= 5.7 declares the pidbox queue exclusive, so a second
# worker with a taken name crashes instead of sharing it, and the tests need the old behaviour too.
CELERY54_KOMBU=5.4.2
if [ -x .venv-celery54/bin/celery ] \
        && .venv-celery54/bin/python -c "import sys, kombu; sys.exit(kombu.__version__ != '$CELERY54_KOMBU')"; then
    log "virtualenv .venv-celery54 exists"
else
    log "creating virtualenv .venv-celery54 (celery 5.4, kombu $CELERY54_KOMBU)"
    [ -x .venv-celery54/bin/python ] || python3 -m venv .venv-celery54
    .venv-celery54/bin/pip install -q --disable-pip-version-check 'celery==5.4.0' "kombu==$CELERY54_KOMBU"
fi

# --- RabbitMQ ----------------------------------------------------------------
if ! command -v rabbitmq-server >/dev/null 2>&1; then
    apt_install rabbitmq-server
fi

if timeout 60 rabbitmqctl -q status >/dev/null 2>&1; then
    log "rabbitmq is running"
else
    log "starting rabbitmq-server"
    rabbitmq-server -detached
    # Right after -detached the node may not be reachable yet, and await_startup
    # then fails at once instead of waiting: retry it within an overall bound.
    deadline=$((SECONDS + 120))
    started=0
    for _ in $(seq 1 60); do
        left=$((deadline - SECONDS))
        [ "$left" -gt 0 ] || break
        if timeout "$left" rabbitmqctl -q await_startup >/dev/null 2>&1; then
            started=1
            break
        fi
        sleep 2
    done
    if [ "$started" != 1 ]; then
        log "rabbitmq did not start within 120 s" >&2
        exit 1
    fi
    log "rabbitmq started"
fi

if timeout 60 rabbitmq-plugins list -e 2>/dev/null | grep -qw rabbitmq_event_exchange; then
    log "plugin rabbitmq_event_exchange already enabled"
else
    log "enabling plugin rabbitmq_event_exchange"
    timeout 120 rabbitmq-plugins enable --quiet rabbitmq_event_exchange >/dev/null
fi

# --- Docker engine (docker runtime tests; without one they are skipped) ------
if ! bash "$ROOT/scripts/dockerd.sh"; then
    # Under CI the docker tests fail (not skip) without an engine: a broken setup must not hide.
    log "WARNING: no Docker engine: the docker runtime tests cannot run"
fi

# --- Further tools some tests need (Prometheus, docker-compose, systemd-analyze) -
for extra in "$ROOT"/scripts/setup.d/*.sh; do
    [ -e "$extra" ] || continue
    bash "$extra"
done

log "done"
