# The KPI service under gunicorn, as a non-root user. psycopg[binary] ships its libpq, so the
# image needs no compiler.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml setup.cfg README.md ./
COPY kpi_service ./kpi_service
COPY sql ./sql
COPY wsgi.py ./
RUN pip install . \
    && useradd --system --uid 10001 --no-create-home kpi

USER kpi
EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "wsgi:app"]
