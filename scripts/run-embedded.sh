#!/usr/bin/env bash
# Serve the gateway on the embedded default (SQLite, in-process cache, eager
# Celery) next to the fake upstream, with a demo organization and key.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${VENV:-.venv}/bin
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
FAKE_UPSTREAM_ADDR=${FAKE_UPSTREAM_ADDR:-127.0.0.1:9100}
export MUXER_FAKE_BASE_URL=${MUXER_FAKE_BASE_URL:-http://$FAKE_UPSTREAM_ADDR/v1}

"$BIN/python" manage.py migrate --noinput >/dev/null

"$BIN/python" -m providers.fake_upstream --host "${FAKE_UPSTREAM_ADDR%:*}" --port "${FAKE_UPSTREAM_ADDR##*:}" &
fake_pid=$!
trap 'kill "$fake_pid" 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 50); do
  curl -fsS "http://$FAKE_UPSTREAM_ADDR/healthz" >/dev/null 2>&1 && break
  kill -0 "$fake_pid" 2>/dev/null || { echo "the fake upstream did not start on $FAKE_UPSTREAM_ADDR" >&2; exit 1; }
  sleep 0.1
done

setup=$("$BIN/python" manage.py demo_setup)
key=$(printf '%s\n' "$setup" | sed -n 's/^demo API key: //p')
login=$(printf '%s\n' "$setup" | sed -n 's/^demo console login: //p')
cat <<MSG

  ModelMuxer (embedded default: SQLite, in-process cache, eager Celery)
  gateway:       http://$HOST:$PORT/v1
  fake upstream: $MUXER_FAKE_BASE_URL
  demo API key:  $key
  console:       http://$HOST:$PORT/console/  (sign in as ${login%% *}, password ${login#* })
  health:        http://$HOST:$PORT/healthz, /readyz;  metrics: http://$HOST:$PORT/metrics (from this machine)

  curl http://$HOST:$PORT/v1/chat/completions \\
    -H "Authorization: Bearer $key" -H "Content-Type: application/json" \\
    -d '{"model": "auto", "messages": [{"role": "user", "content": "Hello!"}]}'

MSG
# uvicorn with a graceful stop (muxer_project/serve.py). No load balancer here to drain from: stop at once.
MUXER_SHUTDOWN_DRAIN_SECONDS=${MUXER_SHUTDOWN_DRAIN_SECONDS:-0} "$BIN/python" -m muxer_project.serve --host "$HOST" --port "$PORT" &
server_pid=$!
trap 'kill "$server_pid" "$fake_pid" 2>/dev/null || true' EXIT INT TERM
wait "$server_pid"
