# The KPI service under gunicorn (gunicorn.conf.py), as a non-root user. psycopg[binary] ships
# its libpq, so nothing is compiled and no build stage or compiler is needed.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8000 \
    GUNICORN_WORKERS=2 \
    GUNICORN_THREADS=4 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/kpi-metrics

WORKDIR /app
# The runtime dependencies exactly as requirements.lock pins them, each file checked against its
# hashes (make lock compiles it from setup.cfg; tests/test_lock.py keeps the two in step), then the
# package itself with nothing more.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml setup.cfg README.md ./
COPY kpi_service ./kpi_service
COPY sql ./sql
RUN pip install --no-deps . \
    && rm -rf /root/.cache \
    && useradd --system --uid 10001 --no-create-home kpi
# Only what gunicorn loads from the working directory; the package itself is installed.
COPY wsgi.py gunicorn.conf.py ./

USER kpi
EXPOSE 8000
# Liveness only: a database outage must make the service unready, not get it restarted.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
