# One venv, made on demand: `make test` or `make demo` alone does all the set-up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast test-integration test-fleet test-deploy lint demo bench bench-peers chaos clean dist

install: $(STAMP) $(BIN)/promtool

# A venv made before the distribution was renamed (flotilla -> flotilla-fleet) holds the old one.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip uninstall -q -y flotilla 2>/dev/null || true
	$(BIN)/pip install -q --progress-bar off -e '.[dev]'
	touch $(STAMP)

# promtool checks the Prometheus rules and scrape configuration in tests/deploy: the one on PATH,
# else the one in Debian's prometheus package, unpacked here (apt-get download needs no root).
# Only the test targets need it: `make demo` works on a machine with neither.
$(BIN)/promtool:
	@mkdir -p $(BIN)
	@if command -v promtool >/dev/null; then ln -sf "$$(command -v promtool)" $@; \
	elif command -v apt-get >/dev/null && command -v dpkg >/dev/null; then \
	  tmp=$$(mktemp -d) && (cd $$tmp && apt-get download -q prometheus >/dev/null 2>&1 \
	    && dpkg -x prometheus_*.deb x && cp x/usr/bin/promtool $(CURDIR)/$@); rm -rf $$tmp; fi
	@$@ --version >/dev/null 2>&1 || { rm -f $@; \
	  echo "promtool not found: put Prometheus's promtool on PATH and run make again" >&2; exit 1; }

# Every tier: unit, integration (real nats-server, PostgreSQL, ffmpeg), fleet, deploy.
test: $(STAMP) $(BIN)/promtool
	$(BIN)/pytest -q

# The unit tier alone: no servers, well under a minute.
test-fast: $(STAMP)
	$(BIN)/pytest -q tests/unit

test-integration test-fleet test-deploy: test-%: $(STAMP) $(BIN)/promtool
	$(BIN)/pytest -q tests/$*

lint: $(STAMP)
	$(BIN)/ruff check common schemas daemon control tests bench
	$(BIN)/ruff format --check common schemas daemon control tests bench
	$(BIN)/mypy
	$(BIN)/mypy bench

demo: $(STAMP)
	$(BIN)/python -m control.devstack.demo

# The full fault matrix against a dev fleet (docs/chaos.md); 10 to 20 minutes.
chaos: $(STAMP)
	$(BIN)/flotilla chaos --profile full

bench: $(STAMP)
	for b in bench/*.py; do [ $$b = bench/bench_peers.py ] || $(BIN)/python $$b || exit 1; done

# Next to Celery + Redis and arq, same run: needs a peers folder (FLOTILLA_PEERS_DIR or PEERS=DIR).
bench-peers: $(STAMP)
	$(BIN)/python bench/bench_peers.py $(if $(PEERS),--peers $(PEERS))

# The offline wheelhouse (tools/dist.py) the Ansible roles install from with no index reachable:
# every wheel for each target, hash-pinned requirement files per role, nats-server per arch.
# Rebuilt only when the sources or pins change; downloads already there are kept.
WHEELHOUSE := dist/wheelhouse
DIST_SOURCES := $(shell find common daemon control schemas -type f -not -path '*/__pycache__/*' 2>/dev/null)

dist: $(WHEELHOUSE)/manifest.json

$(WHEELHOUSE)/manifest.json: pyproject.toml README.md tools/dist.py tools/dist-pins.txt $(DIST_SOURCES)
	$(PY) tools/dist.py --out $(WHEELHOUSE)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
