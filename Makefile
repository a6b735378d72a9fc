# ModelMuxer: `make run` serves the gateway on the embedded default; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
FAKE_UPSTREAM_ADDR ?= 127.0.0.1:9100

export HOST PORT FAKE_UPSTREAM_ADDR

.PHONY: run test install install-dev lint bench bench-scale soak clean chromium promtool nginx

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.base-installed: requirements/base.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements/base.txt
	touch $@

$(VENV)/.dev-installed: requirements/base.txt requirements/dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements/dev.txt
	touch $(VENV)/.base-installed $@

install: $(VENV)/.base-installed

install-dev: $(VENV)/.dev-installed

run: install
	./scripts/run-embedded.sh

# The browser tests drive Debian's chromium; install it when missing (as root, from Debian's packages).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  [ "$$(id -u)" = 0 ] || { echo "the browser tests need chromium: sudo apt-get install chromium" >&2; exit 1; }; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }

# The alert-rule tests run promtool, from Debian's prometheus package; install it when missing (as root,
# without the recommended node exporter). Outside a container the package also starts its server.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  [ "$$(id -u)" = 0 ] || { echo "the alert-rule tests need promtool: sudo apt-get install --no-install-recommends prometheus" >&2; exit 1; }; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends prometheus >/dev/null; }; }

# The multi-instance tests (tests/scale/) put Debian's nginx in front of two gateway instances; install it when
# missing (as root; nginx-light, the smallest build). It lives in /usr/sbin, which a user's PATH may lack. Outside a
# container the package also starts its server on port 80; the tests run their own.
nginx:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { \
	  [ "$$(id -u)" = 0 ] || { echo "the multi-instance tests need nginx: sudo apt-get install nginx-light" >&2; exit 1; }; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q nginx-light >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q nginx-light >/dev/null; }; }

test: install-dev chromium promtool nginx
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

bench: install-dev
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# One gateway instance behind nginx against two, same load, alternating rounds; plus a Redis command census
# (bench/README.md, "Scaling out").
bench-scale: install-dev nginx
	$(BIN)/python bench/scale.py $(BENCH_ARGS)

# Sustained mixed load against the gateway, watching RSS and connections for a trend (bench/README.md).
SOAK_MINUTES ?= 12
soak: install-dev
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) db.sqlite3 .test-db.sqlite3 staticfiles
