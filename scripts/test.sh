#!/usr/bin/env bash
# Set up everything (Debian packages, three skopeo releases, the venv) and run the checks:
# ruff, mypy --strict, then the test suite against every skopeo release found.
# Extra arguments go to pytest, e.g. scripts/test.sh -k async -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
scripts/venv.sh
echo "== ruff"
.venv/bin/ruff check src tests examples
.venv/bin/ruff format --check src
echo "== mypy --strict"
.venv/bin/mypy src
echo "== pytest"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
