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

.PHONY: install test lint demo bench clean serve browser gpu-wheels

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]' 2>&1 | { grep -v 'is ignored: it is neither a file' || true; }
	touch $@

install: $(BIN)/.installed

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# mypy (single-threaded, ~100 s from a cold cache) runs beside pytest, whose servers and
# subprocesses leave the cores idle for much of the run; either failing fails the target.
test: install browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy > .mypy.log 2>&1 & mypy=$$!; \
	status=0; $(BIN)/pytest -n 2 || status=$$?; \
	if wait $$mypy; then cat .mypy.log; else cat .mypy.log; echo "mypy failed"; exit 1; fi; \
	exit $$status

# The browser test drives Debian's Chromium headless; install it when missing (root or
# passwordless sudo). Where that is impossible the test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "chromium could not be installed: the browser test will be skipped"; }

# http_proxy to a closed port stops Ray probing cloud metadata at start-up (no network here);
# loopback traffic bypasses it through no_proxy. Only for running, never for pip.
demo: install
	http_proxy=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 $(BIN)/daug demo $(DEMO_OUT)

# A local Prefect server with the daug-process pool, every deployment of deployment.yaml and
# a process worker in the foreground (Ctrl-C stops worker and server). UI: http://127.0.0.1:4200
PREFECT_PORT ?= 4200
serve: install
	mkdir -p .prefect
	export PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api; \
	export PREFECT_UI_API_URL=$$PREFECT_API_URL; \
	$(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) > .prefect/server.log 2>&1 & \
	server=$$!; trap 'kill $$server 2>/dev/null' EXIT INT TERM; \
	for i in $$(seq 120); do curl -sf $$PREFECT_API_URL/health >/dev/null && break; sleep 1; done; \
	curl -sf $$PREFECT_API_URL/health >/dev/null || { tail -20 .prefect/server.log; exit 1; }; \
	$(BIN)/prefect work-pool create daug-process --type process --overwrite; \
	$(BIN)/prefect --no-prompt deploy --prefect-file deployment.yaml --all; \
	echo "UI: http://127.0.0.1:$(PREFECT_PORT)  (export PREFECT_API_URL=$$PREFECT_API_URL to use it)"; \
	http_proxy=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 \
	  $(BIN)/prefect worker start --pool daug-process

bench: install
	for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python "$$script"; done

# The wheels benchmarks/gpu_check.sh installs on a GPU machine that has torch but no registry.
gpu-wheels: install
	$(BIN)/python -m pip download --no-deps --dest benchmarks/wheels diffusers open_clip_torch ftfy wcwidth

clean:
	rm -rf $(DEMO_OUT) .prefect .pytest_cache .mypy_cache .ruff_cache
