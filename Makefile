# segflow — every target sets itself up from nothing (Python 3.11+, Java 17 + Maven for Kafka).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test lint typecheck bench kafka-up kafka-down clean

# Installs quietly, saying what it does; PYTHONWARNINGS hides setuptools' build-backend notices
# (experimental ext-modules table, editable install) that are not about anything to fix here.
$(STAMP): pyproject.toml pipeline/_flatjson.c
	@test -x $(PY) || { echo "setup: creating the Python virtualenv $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "setup: installing segflow and its dependencies into $(VENV) (faust, chdb, pyarrow,"
	@echo "       scikit-learn, plotly, test tools; building the C JSON decoder): 2-3 minutes"
	@echo "       the first time, quick afterwards"
	@PYTHONWARNINGS=ignore $(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@PYTHONWARNINGS=ignore $(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@$(PY) -c "import pipeline._flatjson" 2>/dev/null \
	  || echo "setup: no C compiler? the C JSON decoder was not built; parsing uses the slower path"
	@echo "setup: done"
	@touch $@

## demo: generate a synthetic estate, replay it into the embedded store (chdb), show results
demo: $(STAMP)
	@$(VENV)/bin/segflow demo

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
