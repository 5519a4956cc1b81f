#!/usr/bin/env bash
# The test command (README): set up a fresh machine, then lint, type-check and run every test tier.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow" tests/release`.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
# shellcheck source=scripts/setup.sh
source scripts/setup.sh
main

export AIRFLOW__CORE__LOAD_EXAMPLES=False
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
