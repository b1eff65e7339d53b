# FunnelSync service image. Configure with FUNNELSYNC_* environment variables; for production point
# FUNNELSYNC_DATABASE_URL at PostgreSQL and run `funnelsync db upgrade` once per release.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    FUNNELSYNC_HOST=0.0.0.0 \
    FUNNELSYNC_PORT=8000 \
    FUNNELSYNC_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY app ./app
# Without the CRM sandboxes (.dockerignore): development code, never loaded by serve or worker.
COPY connectors ./connectors
COPY funnel_templates ./funnel_templates
COPY migrations ./migrations
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data --create-home funnelsync

USER funnelsync
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FUNNELSYNC_PORT', '8000'), timeout=4)"]

CMD ["funnelsync", "serve"]
