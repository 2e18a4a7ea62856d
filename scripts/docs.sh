#!/usr/bin/env bash
# Build the documentation site (MkDocs + mkdocstrings, pinned in the `docs` extra) into
# site/, strictly: a broken link, reference or docstring fails the build.
#   scripts/docs.sh           build into site/
#   scripts/docs.sh serve     serve it on http://127.0.0.1:8000 while you edit
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export NO_MKDOCS_2_WARNING=1  # Material's end-of-life banner, not a problem of this site
if [ "${1:-}" = serve ]; then
    exec .venv/bin/mkdocs serve --strict
fi
exec .venv/bin/mkdocs build --strict --quiet --site-dir "${SITE_DIR:-site}"
