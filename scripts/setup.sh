#!/usr/bin/env bash
# Prepare a Debian 12 machine (as root) for the integration tests: install the system
# packages the test bed runs, then make the newer skopeo releases available
# (scripts/fetch-skopeo.sh). Safe to run again: installed packages are left alone and
# apt-get update runs only when something is missing.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

# skopeo 1.9.3 (protocol 0.2.3), the distribution registry, umoci, htpasswd, openssl, gpg,
# patchelf and venv are what the tests use directly (golang-go builds the archive/tar
# reference lister for the differential tar tests); binutils (readelf), util-linux (flock)
# and the archive keyring serve fetch-skopeo.sh. Recommends are left out: the tests need
# none of them (checked on a debootstrapped minbase bookworm).
PACKAGES=(
    skopeo docker-registry umoci apache2-utils openssl gnupg patchelf python3-venv
    binutils util-linux debian-archive-keyring ca-certificates debootstrap golang-go
)

if [ "$(id -u)" -ne 0 ]; then
    echo "[setup] ERROR: run as root (it installs Debian packages)" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    # dpkg-query prints nothing useful for unknown packages and fails; both mean "missing".
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "installed" ]; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "all Debian packages present"
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$here/fetch-skopeo.sh"

log "system skopeo: $(skopeo --version)"
log "registry: $(docker-registry --version)"
