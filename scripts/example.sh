#!/usr/bin/env bash
# Set up (Debian's skopeo, the venv) and run the example: open an image, print its digest,
# platform and layers, and stream every layer through verification. Pass an image reference
# to inspect another image; without one a built-in example image is used.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v skopeo >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends skopeo python3-venv
fi
scripts/venv.sh
exec .venv/bin/python examples/inspect_image.py "$@"
