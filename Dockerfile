# snapshot-processor: the daemon, installed from poetry.lock, running as an unprivileged user.
# Build: `make build` (docker, or podman with --format docker, which keeps the HEALTHCHECK);
# cameras that stream with `--build-arg EXTRAS=stream`, the local detector with
# `EXTRAS=local` (both: EXTRAS="stream local"). Run: docker-compose.yml, written by
# `make setup`. `make image-test` builds it and runs it against a broker and a camera.

FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    POETRY_VIRTUALENVS_IN_PROJECT=true \
    POETRY_VIRTUALENVS_OPTIONS_NO_PIP=true \
    POETRY_NO_INTERACTION=1

# strip and readelf, for this stage only (the final one copies the result): extension
# modules come with debug information (PyAV's, with EXTRAS=stream, 30 MB of it).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*

RUN pip install --no-cache-dir "poetry==2.5.1"

# EXTRAS=stream adds PyAV and its FFmpeg for RTSP and ONVIF streams (about 90 MB),
# EXTRAS=local the OpenCV / onnxruntime detector (about 300 MB): see docs/docker.md.
ARG EXTRAS=""
WORKDIR /app

# Dependencies alone, from the lock file, in their own layer: editing code or the README
# never reinstalls them. Then what the daemon never reads goes: google-api-python-client's
# 600 discovery documents (110 MB; the daemon and pydrive2 read Drive's alone), botocore's
# models of 400 AWS services (22 MB; S3, Rekognition and the credential services stay),
# the debug information of extension modules. Only modules that have some are stripped,
# never the libraries a wheel carries in its .libs folder (auditwheel patched them, and
# strip broke numpy's), and each stripped one must still load. No pip in the environment.
COPY pyproject.toml poetry.lock ./
RUN poetry install --only main --no-root ${EXTRAS:+--extras "$EXTRAS"} \
    && site=.venv/lib/python3.11/site-packages \
    && find "$site/googleapiclient/discovery_cache/documents" \
        -type f ! -name 'drive.v2.json' ! -name 'drive.v3.json' -delete \
    && find "$site/botocore/data" -mindepth 1 -maxdepth 1 -type d \
        ! -name s3 ! -name rekognition ! -name sts ! -name sso ! -name sso-oidc \
        -exec rm -rf {} + \
    && find "$site" -type f -name '*.so' ! -path '*.libs/*' -exec sh -ec 'for f; do \
        if readelf -S "$f" | grep -q debug_info; then strip --strip-debug "$f"; echo "$f"; fi; \
        done' sh {} + >/tmp/stripped \
    && xargs -r -d '\n' .venv/bin/python -c \
        'import ctypes, sys; [ctypes.CDLL(f) for f in sys.argv[1:]]' </tmp/stripped \
    && rm /tmp/stripped

# The project itself, without its dependencies. The build backend wants the README that
# pyproject.toml names; an empty stand-in keeps README edits out of the image. Then the
# bytecode of what every command imports: the daemon's user cannot write it under /app,
# so each start (the health check's, every 30 s) would compile it all again.
COPY pylib ./pylib
COPY snapshot_processor ./snapshot_processor
RUN touch README.md \
    && poetry install --only-root \
    && .venv/bin/python -c "import snapshot_processor.cli"


FROM python:3.11-slim-bookworm

# uid 1000 is a regular user's (a system one would be below 1000); its own home, which it
# can write, for the libraries that keep files there (onnxruntime does).
RUN groupadd --gid 1000 snapshot \
    && useradd --uid 1000 --gid snapshot --no-log-init --create-home --home-dir /home/snapshot \
        snapshot \
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

# 200 only while every thread lives and the broker and outbox are fine. The command reads
# the settings as the daemon does (environment, config file, secrets), so it asks the port
# and address the daemon listens on, with the token when one is set.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["snapshot-processor", "healthcheck"]

# When the data root cannot be written, the entry point prints the one command that mends
# it; `run` then waits until it can write there, any other command exits 77. Then it runs
# snapshot-processor with the arguments.
ENTRYPOINT ["snapshot-processor-entrypoint"]
CMD ["run"]
