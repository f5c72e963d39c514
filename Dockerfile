# snapshot-processor: the daemon, installed from poetry.lock, running as an unprivileged user.
# Build: `make build` (or `docker build -t snapshot-processor .`); the local detector with
# `--build-arg EXTRAS=local`. Run: docker-compose.yml, written by `make setup`.

FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    POETRY_VIRTUALENVS_IN_PROJECT=true \
    POETRY_NO_INTERACTION=1

RUN pip install --no-cache-dir "poetry==2.5.1"

# EXTRAS=local adds the OpenCV / onnxruntime detector (about 80 MB).
ARG EXTRAS=""
WORKDIR /app

# Dependencies alone, from the lock file, in their own layer: editing code or the README
# never reinstalls them. google-api-python-client bundles 600 discovery documents (110 MB);
# the daemon and pydrive2 read Drive's alone.
COPY pyproject.toml poetry.lock ./
RUN poetry install --only main --no-root ${EXTRAS:+--extras "$EXTRAS"} \
    && find .venv/lib/python3.11/site-packages/googleapiclient/discovery_cache/documents \
        -type f ! -name 'drive.v2.json' ! -name 'drive.v3.json' -delete

# The project itself, without its dependencies. The build backend wants the README that
# pyproject.toml names; an empty stand-in keeps README edits out of the image.
COPY pylib ./pylib
COPY snapshot_processor ./snapshot_processor
RUN touch README.md \
    && poetry install --only-root


FROM python:3.11-slim-bookworm

RUN groupadd --system --gid 1000 snapshot \
    && useradd --system --uid 1000 --gid snapshot --home-dir /app --no-create-home snapshot \
    && mkdir -p /data/ftp \
    && chown snapshot:snapshot /data/ftp

WORKDIR /app
COPY --from=build /app /app
COPY config/snapshot-processor.example.toml ./config/
COPY docker/entrypoint.sh /usr/local/bin/snapshot-processor-entrypoint

# SNAPSHOT_PROCESSOR_IN_CONTAINER: check-config and the daemon warn about settings that
# cannot work behind the container's NAT (FTP passive replies, a loopback HTTP_BIND).
# HTTP stays on the daemon's loopback default unless HTTP_BIND and HTTP_TOKEN are given
# (docker-compose.yml sets both); the health check reaches it either way.
ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    SNAPSHOTS_ROOT_DIR=/data/ftp \
    FTP_PASSIVE_PORTS=30000-30009 \
    SNAPSHOT_PROCESSOR_IN_CONTAINER=1

# HTTP (health, metrics, API, status page), FTP control, FTP passive data.
EXPOSE 8080 2121 30000-30009

USER 1000:1000
VOLUME ["/data/ftp"]

# 200 only while every thread lives and the broker and outbox are fine; /healthz needs no
# token from 127.0.0.1. Python's urllib, as the slim image has no curl; a 503 raises.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HTTP_PORT', '8080'), timeout=4)"]

# The entry point refuses to start (exit 77) with the one command that mends it when the
# data root cannot be written, then runs snapshot-processor with the arguments.
ENTRYPOINT ["snapshot-processor-entrypoint"]
CMD ["run"]
