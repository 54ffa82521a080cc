#!/usr/bin/env bash
# The project's checks: lint, types, then the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/python scripts/typecheck.py
.venv/bin/pytest "$@"
