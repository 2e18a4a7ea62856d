#!/usr/bin/env bash
# Set up (Debian's skopeo, the venv) and run the command line tool on an image: a readable
# summary, the root directory of its filesystem, and a pull into an OCI layout, which streams
# every layer through verification. Without an argument a built-in example image is used
# (written to a temporary OCI layout, so this runs offline); pass any reference skopeo
# understands to use another image, e.g. scripts/example.sh docker://quay.io/libpod/busybox
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v skopeo >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends skopeo python3-venv
fi
scripts/venv.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ $# -gt 0 ]; then
    image=$1
else
    image=$(.venv/bin/python examples/inspect_image.py --write-example "$tmp/example")
fi
cli=.venv/bin/containers-image-proxy
set -x
"$cli" inspect "$image"
"$cli" ls -l "$image" /
"$cli" pull "$image" "$tmp/pulled:latest"
