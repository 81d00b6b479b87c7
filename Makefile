# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# PROGRAM=DEBIAN_PACKAGE pairs the test suite runs for real (installed when root).
TEST_PROGRAMS := aria2c=aria2 nginx=nginx wrk=wrk docker-registry=docker-registry skopeo=skopeo htpasswd=apache2-utils ip=iproute2 tc=iproute2 serf=serf dnsmasq=dnsmasq redis-server=redis-server redis-cli=redis-tools
# Programs the benchmarks compare against.
BENCH_PROGRAMS := aria2c=aria2 nginx=nginx wrk=wrk opentracker=opentracker redis-server=redis-server redis-cli=redis-tools

.PHONY: demo test bench venv clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/python tools/demo.py

test: venv
	tools/system-deps.sh $(TEST_PROGRAMS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: venv
	tools/system-deps.sh $(BENCH_PROGRAMS)
	$(BIN)/python bench/peer_throughput.py
	$(BIN)/python bench/fetch_rate.py
	$(BIN)/python bench/ratelimit_sockets.py
	$(BIN)/python bench/tracker_announce.py
	$(BIN)/python bench/tracker_memory.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
