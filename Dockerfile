# Two images from one file: the dashboard (the default, last stage) and, for compose.yaml's try-out only, the
# demo's stub worker. The dashboard image holds no worker code: it dispatches by name, as it would to yours.

# --- the stub worker (docker build --target stub-worker .) -----------------------------------------------------
FROM python:3.11-slim AS stub-worker
WORKDIR /app
COPY worker_stub ./worker_stub
RUN pip install --no-cache-dir "celery[redis]>=5.4" \
    && useradd --create-home --uid 10001 worker
USER worker
ENV PYTHONUNBUFFERED=1
CMD ["celery", "-A", "worker_stub", "worker", "-Q", "stt,llm,default", "-E", "--loglevel", "INFO"]

# --- the dashboard (the default target) ------------------------------------------------------------------------
FROM python:3.11-slim AS dashboard
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dashboard ./dashboard
COPY templates ./templates
COPY static ./static
COPY examples ./examples
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 dashboard

USER dashboard
ENV DASHBOARD_AUDIT_PATH=/home/dashboard/state/audit.sqlite3 \
    PYTHONUNBUFFERED=1
EXPOSE 5000

# Mount your config at /config/dispatch.toml. Listening on 0.0.0.0 needs [[auth.users]] in it (or, for a
# private demo network only, --insecure-no-auth), and [server] allowed_hosts naming how people reach it.
CMD ["dispatch-dashboard", "serve", "--config", "/config/dispatch.toml", "--host", "0.0.0.0", "--port", "5000"]
