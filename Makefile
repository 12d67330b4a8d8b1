# The two commands a fresh machine needs: `make demo` and `make test`.
# Both create .venv when it is missing (or when pyproject.toml changed) and install into it.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo-output

# Offline, quiet, per-checkout settings (../shared/ENVIRONMENT.md).
export HF_HUB_OFFLINE := 1
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS := 2
export RAY_USAGE_STATS_ENABLED := 0
export no_proxy := 127.0.0.1,localhost
export NO_PROXY := 127.0.0.1,localhost

.PHONY: install test lint demo bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]' 2>&1 | { grep -v 'is ignored: it is neither a file' || true; }
	touch $@

install: $(BIN)/.installed

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# http_proxy to a closed port stops Ray probing cloud metadata at start-up (no network here);
# loopback traffic bypasses it through no_proxy. Only for running, never for pip.
demo: install
	http_proxy=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 $(BIN)/daug demo $(DEMO_OUT)

bench: install
	for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python "$$script"; done

clean:
	rm -rf $(DEMO_OUT) .prefect .pytest_cache .mypy_cache .ruff_cache
