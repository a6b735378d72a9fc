# Production image: the ASGI gateway under uvicorn with several workers.
# Run the same image with `python manage.py usage_writer` for the usage writer,
# and `python manage.py migrate` as a release step.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MUXER_PRODUCTION=true \
    WEB_CONCURRENCY=4 \
    PORT=8000 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus

WORKDIR /app
COPY requirements/base.txt requirements/base.txt
RUN pip install -r requirements/base.txt

COPY . .
# Static files for the admin and console are collected at build time; the
# secret here exists only for this step. prometheus_client turns multiprocess mode on
# whenever PROMETHEUS_MULTIPROC_DIR is set, and then fails if the directory is missing:
# collectstatic runs without it, and the image ships the directory, owned by the
# runtime user, so `manage.py migrate`, `usage_writer` and Celery start in this image too.
RUN SECRET_KEY=build-only-secret-key-that-is-never-used-at-runtime-0123456789 ALLOWED_HOSTS=build \
    env -u PROMETHEUS_MULTIPROC_DIR python manage.py collectstatic --noinput \
 && useradd --system --uid 10001 --no-create-home muxer \
 && chown -R muxer /app/staticfiles \
 && install -d -o muxer "$PROMETHEUS_MULTIPROC_DIR"

USER muxer
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/healthz', timeout=2)"

# The workers share PROMETHEUS_MULTIPROC_DIR so /metrics adds up all of them; it starts empty with the container.
# muxer_project.serve is uvicorn (with its --workers supervisor) plus a graceful stop: on SIGTERM each worker turns
# unready, serves MUXER_SHUTDOWN_DRAIN_SECONDS more, then lets requests in flight finish for up to
# MUXER_SHUTDOWN_GRACE_SECONDS and records their usage. Give the container longer than both before SIGKILL
# (`docker stop -t 30`, compose `stop_grace_period: 30s`, Kubernetes `terminationGracePeriodSeconds: 30`).
# --forwarded-allow-ips: the peers whose X-Forwarded-For/-Proto uvicorn believes (FORWARDED_ALLOW_IPS; only
# 127.0.0.1 unless set). Set it to the load balancer's addresses, or "*" when nothing else can reach the gateway.
STOPSIGNAL SIGTERM
CMD ["sh", "-c", "rm -rf \"$PROMETHEUS_MULTIPROC_DIR\" && mkdir -p \"$PROMETHEUS_MULTIPROC_DIR\" && exec python -m muxer_project.serve --host 0.0.0.0 --port $PORT --workers $WEB_CONCURRENCY --loop uvloop --http httptools --proxy-headers --forwarded-allow-ips \"${FORWARDED_ALLOW_IPS:-127.0.0.1}\""]
