#!/usr/bin/env bash
# The project's checks: lint, types, then the test suite. Extra arguments go to pytest.
# The suite runs in one worker per core (pytest-xdist), a test file per worker: the files that
# share an expensive fixture (a server, a model) keep it.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/python scripts/typecheck.py
.venv/bin/pytest --numprocesses auto --dist loadfile "$@"
