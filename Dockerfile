# snapshot-processor: the daemon, installed from poetry.lock, running as an unprivileged user.
FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    POETRY_VIRTUALENVS_IN_PROJECT=true \
    POETRY_NO_INTERACTION=1

RUN pip install "poetry>=2,<3"

# EXTRAS=local adds the OpenCV / onnxruntime detector (about 80 MB).
ARG EXTRAS=""
WORKDIR /app
COPY pyproject.toml poetry.lock README.md ./
# Dependencies first, in their own layer, so code changes rebuild quickly.
RUN poetry install --only main --no-root ${EXTRAS:+--extras "$EXTRAS"}
COPY pylib ./pylib
COPY snapshot_processor ./snapshot_processor
RUN poetry install --only main ${EXTRAS:+--extras "$EXTRAS"}

FROM python:3.11-slim-bookworm

RUN groupadd --system --gid 1000 snapshot \
    && useradd --system --uid 1000 --gid snapshot --home-dir /app snapshot \
    && mkdir -p /data/ftp \
    && chown snapshot:snapshot /data/ftp

WORKDIR /app
COPY --from=build --chown=snapshot:snapshot /app /app
COPY config ./config

ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    SNAPSHOTS_ROOT_DIR=/data/ftp

USER 1000:1000
VOLUME ["/data/ftp"]
# The daemon validates its settings before anything else; a bad one exits non-zero.
ENTRYPOINT ["snapshot-processor"]
CMD ["run"]
