#!/usr/bin/env bash
# The test command: sets up .venv/ if needed, checks lint, format and types (settings
# in pyproject.toml), then runs the whole suite (arguments go to pytest).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
echo "== ruff check, ruff format --check, mypy (service, training, loadtest)"
.venv/bin/ruff check service training tests benchmarks loadtest
.venv/bin/ruff format --check --quiet service training tests benchmarks loadtest
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
