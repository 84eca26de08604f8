#!/usr/bin/env bash
# Idempotent: make sure the Docker engine at $DOCKER_HOST (default: the shared one on
# unix:///var/run/docker.sock) has the image the docker-runtime tests use, drainctl-test:base.
# Called by scripts/dockerd.sh, and by tests/integration/private_dockerd.py for a private engine.
#
# The image is an (almost) empty root filesystem made with `docker import`: tests bind-mount the
# host's /usr, /etc, the Python installation and the repository read-only at the same paths, so
# the image carries only mount points and the host's /bin, /lib, ... symlinks. Nothing is pulled.
# See DEVELOPERS.md ("Docker engine for the tests").
set -euo pipefail

export DOCKER_HOST="${DOCKER_HOST:-unix:///var/run/docker.sock}"
IMAGE=drainctl-test:base

log() { printf '[test-image] %s\n' "$*"; }

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "image $IMAGE exists ($DOCKER_HOST)"
    exit 0
fi
log "importing image $IMAGE ($DOCKER_HOST)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
rootfs="$tmp/rootfs"
mkdir -p "$rootfs"/{dev,proc,sys,etc,usr,root,run,tmp,var/tmp,work}
chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
# Mirror the host's merged-/usr symlinks (bin -> usr/bin, ...) so binaries find their loader
# and libraries through the /usr bind mount; real directories become mount points.
for d in bin sbin lib lib32 lib64 libx32; do
    if [ -L "/$d" ]; then
        ln -s "$(readlink "/$d")" "$rootfs/$d"
    elif [ -d "/$d" ]; then
        mkdir -p "$rootfs/$d"
    fi
done
tar -C "$rootfs" --numeric-owner -cf - . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'LABEL io.drainctl.test-image=base' \
    - "$IMAGE" >/dev/null
log "image $IMAGE imported"
