# The two commands the README promises: `make demo` and `make test`, each from a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test setup system-deps lint typecheck bench screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# redis-server and chromium from Debian's packages when missing (as root); see scripts/system-deps.sh.
system-deps:
	bash scripts/system-deps.sh

demo: $(STAMP)
	$(BIN)/dispatch-dashboard demo

test: $(STAMP) system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check dashboard worker_stub tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/bench_state_memory.py
	$(BIN)/python bench/bench_routing.py
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_websockets.py

# The README's screenshots, from the demo setup driven by Playwright (needs Chromium, like the tests).
screenshots: $(STAMP) system-deps
	$(BIN)/python scripts/screenshots.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
