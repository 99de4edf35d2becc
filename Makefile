# One entry point for the usual chores; CI runs `make test`.
PYTHON ?= python3

.PHONY: help build test lint rust-components browser bench demo

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

build: ## build the extension (release) and install the package in editable mode
	$(PYTHON) -m pip install -e .

test: browser ## install what tests and lint need, build in release mode, lint, cargo test, pytest
	$(PYTHON) -m pip install -e ".[test]"
	$(MAKE) lint
	cargo test --lib
	$(PYTHON) -m pytest

lint: rust-components ## rustfmt, clippy -D warnings, ruff, and the stub check of afml_cache._core
	cargo fmt --check
	cargo clippy --all-targets --features python -- -D warnings
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy.stubtest afml_cache._core

# A toolchain installed with a minimal rustup profile lacks clippy and rustfmt: add them then only.
rust-components:
	@cargo clippy --version >/dev/null 2>&1 && cargo fmt --version >/dev/null 2>&1 \
		|| rustup component add clippy rustfmt

# Headless Chromium renders the backtest report for its screenshot test: Debian's package, where
# it can be installed (root with apt); elsewhere that one test is skipped, and says so.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
		|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
			&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium could not be installed: the report's screenshot test will be skipped"

bench: ## measure afml-cache beside joblib, diskcache, cachier, pandas, blake3, MLflow, np.save/np.load and obstore
	$(PYTHON) -m pip install -e ".[bench,mlflow,test]"
	$(PYTHON) benches/bench_fingerprint.py
	$(PYTHON) benches/bench_store.py
	$(PYTHON) benches/bench_scale.py
	$(PYTHON) benches/bench_decorators.py
	$(PYTHON) benches/bench_machine.py
	$(PYTHON) benches/bench_backtest.py
	$(PYTHON) benches/bench_mlflow.py
	$(PYTHON) benches/bench_ranges.py
	$(PYTHON) benches/bench_incremental.py
	$(PYTHON) benches/bench_remote.py

demo: ## run the demo
	afml-cache demo
