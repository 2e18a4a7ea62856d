#!/usr/bin/env bash
# Set up everything (Debian packages, three skopeo releases, the venv) and run the checks:
# ruff, mypy --strict, then the test suite against every skopeo release found.
# Extra arguments go to pytest, e.g. scripts/test.sh -k async -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
scripts/venv.sh
echo "== generated sync front end is current"
.venv/bin/python scripts/unasync.py --check
echo "== ruff"
.venv/bin/ruff check src tests examples bench
.venv/bin/ruff format --check src
echo "== mypy --strict"
.venv/bin/mypy src
# The oldest and newest supported Pythons, where this machine has them (pyenv): the
# core's unit tests and the client's integration tests on the oldest and newest skopeo.
for version in 3.9 3.13; do
    python=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python3 2>/dev/null | tail -n 1 || true)
    if [ -z "$python" ]; then
        echo "== Python $version: not installed here, skipped"
        continue
    fi
    echo "== Python $version ($python)"
    PYTHON=$python VENV=.venv-$version EXTRAS=dev scripts/venv.sh
    CIP_SKOPEO_RELEASES=system,sid ".venv-$version/bin/python" -m pytest -q -p no:cacheprovider \
        tests/test_protocol.py tests/test_operations.py tests/test_models.py \
        tests/test_reference.py tests/test_client.py tests/test_async_client.py \
        tests/test_copy_to.py tests/test_pipeline.py
done
echo "== documentation site (strict build)"
site=$(mktemp -d)
SITE_DIR=$site scripts/docs.sh
rm -rf "$site"
# Benchmarks are never timed tests: the smoke size only proves they still run.
echo "== benchmarks (smoke size, nothing judged)"
.venv/bin/python -m bench --smoke
echo "== pytest"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
