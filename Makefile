# One entry point for the usual chores; CI runs `make test`.
PYTHON ?= python3

.PHONY: help build test lint bench demo

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

build: ## build the extension (release) and install the package in editable mode
	$(PYTHON) -m pip install -e .

test: ## install what the tests need, build in release mode, run cargo test and pytest
	$(PYTHON) -m pip install -e ".[test]"
	cargo test --lib
	$(PYTHON) -m pytest

lint: ## rustfmt, clippy -D warnings, ruff, and the stub check of afml_cache._core
	cargo fmt --check
	cargo clippy --all-targets --features python -- -D warnings
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy.stubtest afml_cache._core

bench: ## measure afml-cache beside joblib, diskcache, cachier, pandas and blake3
	$(PYTHON) -m pip install -e ".[bench]"
	$(PYTHON) benches/bench_fingerprint.py
	$(PYTHON) benches/bench_store.py
	$(PYTHON) benches/bench_decorators.py

demo: ## run the demo
	afml-cache demo
