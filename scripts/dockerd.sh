#!/usr/bin/env bash
# Idempotent: make sure a Docker engine answers on unix:///var/run/docker.sock and that the
# image the docker-runtime tests use, drainctl-test:base, exists. Run as root; called by setup.sh.
#
#   * installs Debian's docker.io if there is no dockerd (the docker CLI alone may be present);
#   * starts dockerd in the background (no systemd here) when nothing answers `docker info`:
#     --bridge=none --iptables=false --ip-forward=false, so it creates no bridge network and
#     touches neither iptables nor sysctls; containers run with NetworkMode "host";
#     --live-restore keeps containers running across a dockerd restart;
#   * imports drainctl-test:base (scripts/test-image.sh): an (almost) empty root filesystem. Tests
#     bind-mount the host's /usr, /etc, the Python installation and the repository read-only at the
#     same paths, so the image carries only mount points and the host's /bin, /lib, ... symlinks.
# See DEVELOPERS.md ("Docker engine for the tests").
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive
export DOCKER_HOST=unix:///var/run/docker.sock

DOCKERD_LOG=/var/log/dockerd-drainctl.log
START_TIMEOUT=60

log() { printf '[dockerd] %s\n' "$*"; }

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

# --- packages ----------------------------------------------------------------
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    log "apt-get install docker.io"
    apt-get update -qq
    apt-get install -y -qq docker.io >/dev/null
fi

# --- the engine --------------------------------------------------------------
if engine_answers; then
    log "docker engine is running"
else
    if pgrep -x dockerd >/dev/null 2>&1; then
        # Started by someone else and still coming up (or wedged): wait for it, do not start a second one.
        log "dockerd is running but not answering yet; waiting"
    else
        log "starting dockerd (log: $DOCKERD_LOG)"
        # setsid + nohup: the daemon must outlive this script and the shell/CI job that ran it.
        setsid nohup dockerd \
            --host=unix:///var/run/docker.sock \
            --bridge=none --iptables=false --ip-forward=false \
            --live-restore \
            >>"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    deadline=$((SECONDS + START_TIMEOUT))
    until engine_answers; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "the docker engine did not answer within ${START_TIMEOUT}s; last lines of $DOCKERD_LOG:" >&2
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            exit 1
        fi
        sleep 1
    done
    log "docker engine started"
fi

# --- the test image ----------------------------------------------------------
bash "$(dirname "${BASH_SOURCE[0]}")/test-image.sh"
