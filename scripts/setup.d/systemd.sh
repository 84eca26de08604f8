#!/usr/bin/env bash
# systemd-analyze (Debian's `systemd` package) for tests/test_deploy.py, which checks
# compose/systemd/drainctl.service with `systemd-analyze verify`. Idempotent: does nothing when it is
# installed. Nothing here runs systemd: `verify` only reads unit files, and the package's scripts
# cope with a machine (or container) where systemd is not PID 1.
#
# As root, a failed install fails setup.sh. Without root it warns and goes on: the unit check is then
# skipped, except under CI (env CI set), where tests/test_deploy.py fails and says to run this script.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

log() { printf '[setup systemd] %s\n' "$*"; }

if command -v systemd-analyze >/dev/null 2>&1; then
    log "systemd-analyze is installed ($(systemd-analyze --version 2>/dev/null | head -n1 || echo '?'))"
    exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "WARNING: systemd-analyze is missing and cannot be installed here (needs root and apt-get);" \
        "install Debian's systemd, or the unit check in tests/test_deploy.py is skipped" >&2
    exit 0
fi

log "apt-get update"
apt-get update -qq
log "apt-get install systemd (systemd-analyze)"
# --no-install-recommends: no dbus, no libpam-systemd; `verify` needs neither.
apt-get install -y -qq --no-install-recommends systemd >/dev/null
command -v systemd-analyze >/dev/null
log "installed $(systemd-analyze --version | head -n1)"
