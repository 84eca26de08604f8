# drainctl's image, and the image of the example workers in compose/docker-compose.yml.
#
#   docker build -t drainctl:local .                                  # the controller (final stage)
#   docker build --target worker -t drainctl-example-worker:local .   # Celery workers of examples/demo_app.py
#
# The controller's ENTRYPOINT is `drainctl run`: arguments go after it, e.g.
#   docker run --network host drainctl:local --config /etc/drainctl/drainctl.toml
# Secrets come from the environment (DRAINCTL_BROKER_URL, DRAINCTL_API_TOKEN) or from files
# ([broker] url_file, [http] token_file), never from argv. See docs/deployment.md.
#
# It runs as the unprivileged user `drainctl` (uid 10001). With the docker runtime it needs the
# Docker socket, and to open it the socket's group: `--group-add $(stat -c %g /var/run/docker.sock)`
# (compose does it with DOCKER_GID). Whoever can use that socket is root on the host: docs/deployment.md.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 drainctl \
    && useradd --system --uid 10001 --gid drainctl --home-dir /var/lib/drainctl --no-create-home \
        --shell /usr/sbin/nologin drainctl
WORKDIR /src
# Only what the package build needs (.dockerignore keeps the venvs, state and caches out). Each stage
# below installs it with the extras it needs, then removes the sources.
COPY pyproject.toml README.md ./
COPY drainctl ./drainctl
WORKDIR /app

# The example workers: drainctl with its `celery` extra (Celery itself; `drainctl entrypoint` too) plus
# examples/demo_app.py. drainctl's docker runtime sets the container's command, and this stage has no
# ENTRYPOINT to prepend to it.
FROM base AS worker
RUN pip install '/src[celery]' && rm -rf /src
# examples/ is a namespace package: `celery -A examples.demo_app` with PYTHONPATH=/app.
# examples/send_load.py publishes test tasks (compose/README.md).
COPY examples/demo_app.py examples/send_load.py /app/examples/
ENV PYTHONPATH=/app
USER drainctl
CMD ["celery", "--version"]

# The controller (the default target).
FROM base AS drainctl
# The controller speaks Celery's wire protocol: it needs no Celery.
RUN pip install /src && rm -rf /src
# state_dir: the journal (journal.sqlite) and, for the process runtime, the workers' state files and logs.
RUN install -d -o drainctl -g drainctl -m 0750 /var/lib/drainctl /etc/drainctl
VOLUME ["/var/lib/drainctl"]
USER drainctl
EXPOSE 9540
ENTRYPOINT ["drainctl", "run"]
CMD ["--config", "/etc/drainctl/drainctl.toml", "--log-format", "json"]
