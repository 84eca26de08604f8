#!/usr/bin/env bash
# Prometheus and promtool (Debian's `prometheus` package) for tests/test_alert_rules.py and
# tests/integration/test_prometheus.py. Idempotent: does nothing when both are installed.
# The package may start its own service (or a policy-rc.d may prevent it): the tests never use it,
# they start a private server on a free loopback port.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

log() { printf '[setup] %s\n' "$*"; }

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    log "prometheus $(prometheus --version 2>&1 | head -n1 | awk '{print $3}') and promtool installed"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    log "WARNING: prometheus/promtool missing and not root: cannot apt-get install prometheus" >&2
    exit 0
fi

log "apt-get install prometheus (prometheus, promtool)"
apt-get update -qq
# --no-install-recommends: no node exporter, no web assets beyond what the server needs.
apt-get install -y -qq --no-install-recommends prometheus >/dev/null

command -v prometheus >/dev/null && command -v promtool >/dev/null
log "prometheus installed"
