#!/usr/bin/env bash
# Make newer skopeo releases (Debian trixie and sid) runnable beside the system one.
#
# Debian 12 ships skopeo 1.9.3 (proxy protocol 0.2.3). The integration tests also need
# 0.2.6 (trixie, 1.18) and 0.2.8 (sid, 1.19+). Those binaries need a newer glibc than
# bookworm's, so instead of installing anything system-wide we download skopeo and the
# shared libraries it needs from that suite, unpack them into a private root, and patch a
# copy of the binary to use the root's dynamic loader and libraries.
#
# Result: $CACHE/skopeo-<suite>/skopeo for each suite (default: trixie sid), where
#   CACHE=${CIP_TESTBED_CACHE:-$HOME/.cache/containers-image-proxy-testbed}
# The cache lives outside the repository so that CI jobs in fresh clones reuse it. The
# patched binaries contain absolute paths into the cache: move the cache, and they must be
# rebuilt (delete the skopeo-<suite> directories, or run with --force).
#
# Usage: scripts/fetch-skopeo.sh [--force] [SUITE...]
# Nothing here touches the system's apt state; only the machine's own Debian mirror is used.
set -euo pipefail

CACHE=${CIP_TESTBED_CACHE:-$HOME/.cache/containers-image-proxy-testbed}
FORCE=0
SUITES=()
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h | --help)
            sed -n '2,17p' "$0"
            exit 0
            ;;
        -*)
            echo "unknown option: $arg" >&2
            exit 2
            ;;
        *) SUITES+=("$arg") ;;
    esac
done
if [ ${#SUITES[@]} -eq 0 ]; then
    SUITES=(trixie sid)
fi

log() { printf '[fetch-skopeo] %s\n' "$*" >&2; }
die() {
    printf '[fetch-skopeo] ERROR: %s\n' "$*" >&2
    exit 1
}
# set -e alone ends the script without a word; say where it stopped.
set -E
trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR

for tool in apt-get apt-cache dpkg dpkg-deb patchelf readelf flock; do
    command -v "$tool" >/dev/null || die "$tool not found (run scripts/setup.sh first)"
done

ARCH=$(dpkg --print-architecture)
# The multiarch triplet names the library directory inside the unpacked root.
if command -v dpkg-architecture >/dev/null; then
    TRIPLET=$(dpkg-architecture -a "$ARCH" -qDEB_HOST_MULTIARCH 2>/dev/null)
else
    case "$ARCH" in
        amd64) TRIPLET=x86_64-linux-gnu ;;
        arm64) TRIPLET=aarch64-linux-gnu ;;
        armhf) TRIPLET=arm-linux-gnueabihf ;;
        i386) TRIPLET=i386-linux-gnu ;;
        ppc64el) TRIPLET=powerpc64le-linux-gnu ;;
        s390x) TRIPLET=s390x-linux-gnu ;;
        riscv64) TRIPLET=riscv64-linux-gnu ;;
        *) die "unknown multiarch triplet for architecture $ARCH (install dpkg-dev)" ;;
    esac
fi

# The Debian archive URIs this machine already uses (its mirror or proxy), read from the
# system's sources; security and ports archives are skipped since skopeo is in main.
system_debian_uri() {
    local uris=()
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        # deb822: "URIs: a b" lines; take the ones that belong to the main archive.
        mapfile -t uris < <(awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' \
            /etc/apt/sources.list.d/debian.sources)
    fi
    if [ ${#uris[@]} -eq 0 ] && [ -r /etc/apt/sources.list ]; then
        # One-line format: "deb [options] URI suite components"; skip the [..] options.
        mapfile -t uris < <(awk '$1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
                print $i
            }' /etc/apt/sources.list)
    fi
    local u
    for u in "${uris[@]}"; do
        case "$u" in
            *security* | *-updates* | *backports*) ;;
            *)
                printf '%s\n' "${u%/}"
                return 0
                ;;
        esac
    done
    return 1
}

MIRROR=$(system_debian_uri) || die "no Debian archive URI found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$KEYRING" ] || die "$KEYRING missing (apt-get install debian-archive-keyring)"

mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd -P)

# Two concurrent runs (parallel CI jobs sharing the cache) would unpack into the same root.
exec 9>"$CACHE/.fetch-skopeo.lock"
flock 9

# A release is usable when its patched binary exists and runs.
release_ok() {
    local bin=$1
    [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1 &&
        "$bin" experimental-image-proxy --help >/dev/null 2>&1
}

# Every apt command for SUITE runs with this private configuration: its own sources, lists,
# caches and an empty dpkg status, so that neither the system's state nor its pinning
# influences the result, and the system's apt state is never written.
write_apt_conf() {
    local suite=$1 dir=$2
    mkdir -p "$dir/sources.list.d" "$dir/preferences.d" "$dir/lists/partial" \
        "$dir/cache/archives/partial" "$dir/debs"
    cat >"$dir/sources.list.d/$suite.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $suite
Components: main
Signed-By: $KEYRING
EOF
    cat >"$dir/apt.conf" <<EOF
Dir::State::Lists "$dir/lists";
Dir::State::status "/dev/null";
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$dir/sources.list.d";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "$dir/preferences.d";
Dir::Cache "$dir/cache";
// The system may disable the binary caches (Docker images do); apt-cache is called many
// times below, and rebuilding the cache for sid's package list on each call is slow.
Dir::Cache::pkgcache "pkgcache.bin";
Dir::Cache::srcpkgcache "srcpkgcache.bin";
APT::Architecture "$ARCH";
APT::Architectures { "$ARCH"; };
Acquire::Languages "none";
// The cache usually sits under /root (mode 0700), which the _apt sandbox user cannot
// reach; apt would fall back to root anyway, with a warning per file. The downloads are
// verified against the signed Release file either way.
APT::Sandbox::User "root";
// Hooks of the system's apt.conf.d (appstream, command-not-found ...) concern the system's
// package lists, not this private one.
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
EOF
}

# Print "name=version" of the candidate of PKG in this private configuration, or nothing.
candidate() {
    local conf=$1 pkg=$2
    # awk reads to the end: leaving early would kill apt-cache with SIGPIPE, and pipefail
    # would turn that into a failure of this function.
    apt-cache -c "$conf" show --no-all-versions "$pkg" 2>/dev/null |
        awk -v p="$pkg" '$1 == "Package:" { found = ($2 == p) }
                         found && $1 == "Version:" && !done { print p "=" $2; done = 1 }'
}

# Print the names in the Depends and Pre-Depends fields of PKG, one alternative group per
# line, alternatives separated by spaces, version constraints and arch qualifiers removed.
depends_of() {
    local conf=$1 pkg=$2
    apt-cache -c "$conf" show --no-all-versions "$pkg" |
        awk '
            /^(Pre-)?Depends:/ {
                sub(/^[^:]*:[ \t]*/, "")
                n = split($0, groups, ",")
                for (i = 1; i <= n; i++) {
                    g = groups[i]
                    gsub(/\([^)]*\)/, "", g)
                    gsub(/:[a-z0-9]+/, "", g)
                    gsub(/\|/, " ", g)
                    gsub(/[ \t]+/, " ", g)
                    sub(/^ /, "", g); sub(/ $/, "", g)
                    if (g != "") print g
                }
            }'
}

# Resolve skopeo plus the lib* packages it needs, recursively, at this suite's versions.
# Non-library dependencies (containers-common, gnupg ...) are configuration and helper
# programs that the system installation of skopeo already provides.
resolve_packages() {
    local conf=$1
    local -A seen=()
    local queue=(skopeo) result=() pkg group alt chosen c
    seen[skopeo]=1
    while [ ${#queue[@]} -gt 0 ]; do
        pkg=${queue[0]}
        queue=("${queue[@]:1}")
        c=$(candidate "$conf" "$pkg")
        [ -n "$c" ] || die "package $pkg not available in this suite"
        result+=("$c")
        while read -r group; do
            chosen=""
            for alt in $group; do
                case "$alt" in lib*) ;; *) continue ;; esac
                if [ -n "${seen[$alt]:-}" ]; then
                    chosen=$alt
                    break
                fi
                # An alternative may be virtual or missing; take the first real package.
                if [ -n "$(candidate "$conf" "$alt")" ]; then
                    chosen=$alt
                    break
                fi
            done
            if [ -z "$chosen" ]; then
                for alt in $group; do
                    case "$alt" in lib*) die "$pkg depends on '$group': no installable lib* package" ;; esac
                done
                continue
            fi
            if [ -z "${seen[$chosen]:-}" ]; then
                seen[$chosen]=1
                queue+=("$chosen")
            fi
        done < <(depends_of "$conf" "$pkg")
    done
    printf '%s\n' "${result[@]}"
}

# Check that every NEEDED soname of the binary and of every library in the root's library
# directory is present there, so that a soname bump in sid fails here, loudly, and not at
# test time.
check_sonames() {
    local bin=$1 libdir=$2 missing=0 f so
    local files=("$bin")
    while IFS= read -r -d '' f; do
        files+=("$f")
    done < <(find "$libdir" -maxdepth 1 -type f -name '*.so*' -print0)
    for f in "${files[@]}"; do
        while read -r so; do
            if [ ! -e "$libdir/$so" ]; then
                log "missing: $so (needed by ${f#"$CACHE"/})"
                missing=1
            fi
        done < <(readelf -d "$f" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    done
    [ "$missing" -eq 0 ] || die "libraries are missing from $libdir"
}

build_suite() {
    local suite=$1
    local out="$CACHE/skopeo-$suite"
    local aptdir="$CACHE/apt-$suite"
    local root="$out/root"
    local bin="$out/skopeo"

    if [ "$FORCE" -eq 0 ] && release_ok "$bin"; then
        log "$suite: present, $("$bin" --version)"
        return 0
    fi

    local t0=$SECONDS
    log "$suite: updating package lists from $MIRROR"
    write_apt_conf "$suite" "$aptdir"
    local conf="$aptdir/apt.conf"
    apt-get -c "$conf" -q update >"$aptdir/update.log" 2>&1 || {
        cat "$aptdir/update.log" >&2
        if grep -q 'is expired' "$aptdir/update.log"; then
            # Seen with mirrors that serve a frozen snapshot of the archive. This script
            # inherits the system's apt.conf.d, so a machine that knowingly uses such a
            # mirror sets Acquire::Check-Valid-Until "false" there, for its own suites too.
            log "the mirror serves an outdated $suite Release file (a snapshot mirror?)"
        fi
        die "$suite: apt-get update failed"
    }
    # apt-get update exits 0 even when an index could not be fetched; catch that here.
    if grep -q -E '^(W|E): ' "$aptdir/update.log"; then
        grep -E '^(W|E): ' "$aptdir/update.log" >&2
    fi

    # Not in a subshell: a failure inside must end the script.
    resolve_packages "$conf" >"$aptdir/packages.txt"
    local pkgs
    mapfile -t pkgs <"$aptdir/packages.txt"
    log "$suite: packages: ${pkgs[*]}"

    # Old versions disappear from the mirror when sid moves on; start the download directory
    # afresh so that it holds exactly this set.
    rm -rf "$aptdir/debs"
    mkdir -p "$aptdir/debs"
    (cd "$aptdir/debs" && apt-get -c "$conf" -q download "${pkgs[@]}") >"$aptdir/download.log" 2>&1 || {
        cat "$aptdir/download.log" >&2
        die "$suite: apt-get download failed"
    }

    # The binary is written last, so its presence marks a complete root.
    rm -rf "$out"
    mkdir -p "$root"
    local deb
    for deb in "$aptdir"/debs/*.deb; do
        dpkg-deb -x "$deb" "$root"
    done
    cp "$aptdir/packages.txt" "$out/packages.txt"

    local libdir="$root/usr/lib/$TRIPLET"
    [ -f "$root/usr/bin/skopeo" ] || die "$suite: skopeo binary not found in the package"
    [ -d "$libdir" ] || die "$suite: $libdir missing (is this suite merged-/usr?)"
    check_sonames "$root/usr/bin/skopeo" "$libdir"

    # The loader's file name differs per architecture; the binary names it in PT_INTERP.
    local interp
    interp=$(basename "$(patchelf --print-interpreter "$root/usr/bin/skopeo")")
    [ -e "$libdir/$interp" ] || die "$suite: loader $interp not found in $libdir"

    cp "$root/usr/bin/skopeo" "$bin.tmp"
    # DT_RPATH (--force-rpath), not DT_RUNPATH: RPATH also applies to the dependencies of
    # the binary's libraries, so libgpgme finds the root's libassuan and not the system's.
    patchelf --set-interpreter "$libdir/$interp" --force-rpath --set-rpath "$libdir" "$bin.tmp"
    chmod 0755 "$bin.tmp"
    "$bin.tmp" --version >/dev/null || die "$suite: patched skopeo does not run"
    "$bin.tmp" experimental-image-proxy --help >/dev/null ||
        die "$suite: patched skopeo has no experimental-image-proxy"
    mv "$bin.tmp" "$bin"
    # The package lists, apt's binary caches and the .debs take about 250 MB and are only
    # needed to build; every rebuild starts with a fresh "apt-get update" anyway. Dropping
    # them keeps the cache small enough for CI cache storage.
    cp "$aptdir/update.log" "$aptdir/download.log" "$out/"
    rm -rf "$aptdir"
    log "$suite: built in $((SECONDS - t0)) s"
}

for suite in "${SUITES[@]}"; do
    build_suite "$suite"
done

for suite in "${SUITES[@]}"; do
    bin="$CACHE/skopeo-$suite/skopeo"
    release_ok "$bin" || die "$bin does not work"
    printf '%s\t%s\t%s\n' "$suite" "$("$bin" --version | sed -n 1p)" "$bin"
done
