# segflow — every target sets itself up from nothing (Python 3.11+, Java 17 + Maven for Kafka).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test lint typecheck bench kafka-up kafka-down clean

$(STAMP): pyproject.toml pipeline/_flatjson.c
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

## demo: generate a synthetic estate, replay it into the embedded store (chdb), show results
demo: $(STAMP)
	$(VENV)/bin/segflow demo

## test: lint, then the whole suite (starts a local Apache Kafka broker on 127.0.0.1)
test: $(STAMP) lint
	scripts/install-test-tools
	SEGFLOW_REQUIRE_BROWSER=1 SEGFLOW_REQUIRE_DEPLOY_TOOLS=1 $(PY) -m pytest -q -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy pipeline

bench: $(STAMP)
	$(PY) bench/bench_replay.py

kafka-up:
	scripts/kafka-local start

kafka-down:
	scripts/kafka-local stop

clean:
	rm -rf var .pytest_cache .ruff_cache .mypy_cache
