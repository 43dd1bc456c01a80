# attachments-gateway: a two-stage image.
#   builder: a virtual environment at /opt/venv with the project installed (not editable);
#   final:   the same base with only that venv, the SQL migrations and an unprivileged user.
# Every dependency ships manylinux wheels for CPython 3.11, so neither stage needs a compiler
# or any apt package.

FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what the wheel is built from (.dockerignore admits nothing else into the context).
COPY pyproject.toml README.md ./
COPY service/ ./service/
RUN pip install --no-cache-dir . \
    && attachments-gateway --help > /dev/null


FROM python:3.11-slim

LABEL org.opencontainers.image.title="attachments-gateway" \
      org.opencontainers.image.description="Async download gateway: API keys in, presigned S3 redirects out."

# AWS_EC2_METADATA_DISABLED is deliberately not set here: production may use instance roles.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    MIGRATIONS_DIR=/app/migrations

# A fixed numeric uid/gid, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
# /state is where docker compose's `seed` keeps its state file: a named volume mounted there
# starts with this directory's owner, so the unprivileged user can write to it.
RUN groupadd --system --gid 10001 app \
    && useradd --system --no-log-init --uid 10001 --gid app \
       --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin app \
    && mkdir -p /state \
    && chown 10001:10001 /state

COPY --from=builder /opt/venv /opt/venv
# Owned by root and read-only for the app: migrations are part of the release.
COPY migrations/ /app/migrations/

WORKDIR /app
USER 10001:10001

EXPOSE 8080

# `attachments-gateway healthcheck` GETs http://127.0.0.1:$PORT/healthz and exits 0 or 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["attachments-gateway", "healthcheck"]

ENTRYPOINT ["attachments-gateway"]
CMD ["serve"]
