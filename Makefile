# unyoke's developer interface; CI runs `make test` (through .ci/run).
# `make help` lists the targets.

PYTHON ?= python3
PIP := $(PYTHON) -m pip
# Extra flags for `make run`, e.g. make run ARGS="--port 9000 --threads 8"
ARGS ?=

# Build output stays inside the repository (git-ignored), whatever the environment says.
export CARGO_TARGET_DIR := $(CURDIR)/target
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_ROOT_USER_ACTION := ignore

PYTHON_PATHS := python tests examples

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-11s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Debian packages the tests need, as "command:package" (chromium: the browser test of
# examples/clock_sse.py; nginx and its stream module, named by its file, and wrk, the load
# of the rolling-reload test: tests/e2e/test_nginx.py).
# Installed with apt-get when the command (or file) is missing and we are root.
APT_NEEDS := chromium:chromium nginx:nginx wrk:wrk \
	/usr/lib/nginx/modules/ngx_stream_module.so:libnginx-mod-stream

.PHONY: deps
deps: ## Install what the tests need (requirements-test.txt, Debian packages in APT_NEEDS)
	$(PIP) install -r requirements-test.txt
	@missing=""; for need in $(APT_NEEDS); do \
	    [ -e "$${need%%:*}" ] || command -v "$${need%%:*}" >/dev/null 2>&1 \
	        || missing="$$missing $${need#*:}"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "apt-get install$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	        apt-get install -y -qq --no-install-recommends $$missing; \
	else \
	    echo "note: install$$missing (Debian packages) for the tests that need them"; \
	fi

.PHONY: install
install: ## Build the Rust extension (release) and install unyoke in editable mode
	$(PIP) install 'maturin>=1.5,<2'
	$(PIP) install --no-build-isolation -e .

.PHONY: build
build: install ## Same as install

.PHONY: run
run: ## Serve examples/hello.py on http://127.0.0.1:8000 (extra flags: ARGS="...")
	$(PYTHON) -m unyoke examples.hello:app $(ARGS)

.PHONY: lint
lint: ## cargo fmt --check, clippy -D warnings, ruff check, ruff format --check, mypy
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(PYTHON) -m ruff check $(PYTHON_PATHS)
	$(PYTHON) -m ruff format --check $(PYTHON_PATHS)
	$(PYTHON) -m mypy

.PHONY: fmt
fmt: ## Format the Rust and Python code in place
	cargo fmt --all
	$(PYTHON) -m ruff format $(PYTHON_PATHS)

.PHONY: docs
docs: ## Regenerate docs/settings.md from python/unyoke/config.py
	PYTHONPATH=python $(PYTHON) -m unyoke.config --markdown > docs/settings.md

.PHONY: test-rust
test-rust: ## Rust tests of the workspace
	cargo test --workspace

.PHONY: test-lsan
test-lsan: ## The codec's tests under LeakSanitizer (-Zsanitizer via RUSTC_BOOTSTRAP; fails on any leak)
	RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=leak" cargo test -p unyoke-http \
		--target "$$(rustc -vV | sed -n 's/^host: //p')"

.PHONY: test-py
test-py: ## Python tests (pytest: unit and end to end); needs `make install` first
	$(PYTHON) -m pytest

.PHONY: bench
bench: ## Benchmark suite against the peer servers (benchmarks/README.md; ~40 min, not a test)
	$(MAKE) -C benchmarks all

.PHONY: fuzz-ci
fuzz-ci: ## Each cargo-fuzz target for 60 s (installs cargo-fuzz 0.13.2 if missing)
	PATH="$$HOME/.cargo/bin:$$PATH" crates/fuzz/run.sh 60

.PHONY: hostile-full
hostile-full: ## Full-scale hostile-client attacks (not in CI; figures in docs/security.md)
	$(PYTHON) scripts/hostile.py

.PHONY: soak-full
soak-full: ## 1,000,000 mixed requests with the server's RSS sampled (not in CI)
	$(PYTHON) scripts/soak.py --requests 1000000

.PHONY: test
test: ## Everything CI runs: deps, install, lint, test-rust, test-lsan, fuzz-ci, test-py
	$(MAKE) deps
	$(MAKE) install
	$(MAKE) lint
	$(MAKE) test-rust
	$(MAKE) test-lsan
	$(MAKE) fuzz-ci
	$(MAKE) test-py

.PHONY: clean
clean: ## Remove build output (target/, the built extension, caches)
	rm -rf target .pytest_cache .mypy_cache .ruff_cache
	rm -f python/unyoke/_unyoke*.so
