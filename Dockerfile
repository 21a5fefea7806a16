# dispatch-dashboard: one image for the dashboard (and, in compose.yaml, the demo's stub worker).
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY dashboard ./dashboard
COPY worker_stub ./worker_stub
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
# private demo network only, --insecure-no-auth). gunicorn gthread, one process, 64 threads = 64 open pages.
CMD ["dispatch-dashboard", "serve", "--config", "/config/dispatch.toml", "--host", "0.0.0.0", "--port", "5000"]
