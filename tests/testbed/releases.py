"""The skopeo releases this machine can run.

The system's ``/usr/bin/skopeo`` (Debian 12: 1.9.3) and the releases that
``scripts/fetch-skopeo.sh`` puts into the test-bed cache (``skopeo-<suite>/skopeo``).

``CIP_SKOPEO_RELEASES`` restricts the set: a comma-separated list whose items are release
names ("1.22.0"), name prefixes ("1.22"), origins ("system", "trixie", "sid") or "all".
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SYSTEM_SKOPEO = Path("/usr/bin/skopeo")
CACHE_ENV = "CIP_TESTBED_CACHE"
RELEASES_ENV = "CIP_SKOPEO_RELEASES"

_VERSION_RE = re.compile(r"\bversion\s+v?(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class SkopeoRelease:
    """One runnable skopeo: ``argv`` is the command prefix (global flags go after it)."""

    name: str
    protocol: str
    argv: tuple[str, ...]
    # Where it came from: "system" or the Debian suite of the cached build.
    origin: str = ""

    @property
    def version(self) -> tuple[int, ...]:
        return _parse_dotted(self.name)

    @property
    def protocol_version(self) -> tuple[int, ...]:
        return _parse_dotted(self.protocol)

    def has_protocol(self, minimum: str) -> bool:
        """True if this release speaks at least protocol ``minimum`` (e.g. "0.2.6")."""
        return self.protocol_version >= _parse_dotted(minimum)

    def __str__(self) -> str:
        return f"skopeo {self.name} (protocol {self.protocol}, {self.origin or 'unknown'})"


def _parse_dotted(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def protocol_for(version: tuple[int, ...]) -> Optional[str]:
    """The image-proxy protocol of a skopeo release, or None if it has no usable proxy.

    Releases only; development snapshots in between (0.2.4, 0.2.7) never shipped.
    """
    if version[:2] < (1, 6):
        # 1.5 had 0.2.1 or 0.2.2 depending on the patch release; nothing here tests them.
        return None
    if version[0] > 1:
        return "0.2.8"
    minor = version[1]
    if minor <= 10:
        return "0.2.3"
    if minor <= 12:
        return "0.2.5"
    if minor <= 18:
        return "0.2.6"
    return "0.2.8"


def cache_dir() -> Path:
    """The test-bed cache (must agree with scripts/fetch-skopeo.sh)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "containers-image-proxy-testbed"


@functools.cache
def _probe(path: str, mtime_ns: int) -> Optional[str]:
    """Run ``path --version`` once per binary (and per rebuild: mtime is part of the key)."""
    del mtime_ns
    try:
        out = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION_RE.search(out)
    return ".".join(match.groups()) if match else None


def _candidates() -> list[tuple[str, Path]]:
    found = [("system", SYSTEM_SKOPEO)]
    cache = cache_dir()
    if cache.is_dir():
        for binary in sorted(cache.glob("skopeo-*/skopeo")):
            found.append((binary.parent.name[len("skopeo-") :], binary))
    return found


def _selected(release: SkopeoRelease, tokens: list[str]) -> set[str]:
    """The tokens of the selection that pick ``release``."""
    return {
        tok
        for tok in tokens
        if tok in (release.name, release.origin) or release.name.startswith(tok + ".")
    }


def all_releases() -> list[SkopeoRelease]:
    """Every runnable skopeo with an image proxy, oldest first, one per release name."""
    releases: dict[str, SkopeoRelease] = {}
    for origin, path in _candidates():
        try:
            stat = path.stat()
        except OSError:
            continue
        if not os.access(path, os.X_OK):
            continue
        name = _probe(str(path), stat.st_mtime_ns)
        if name is None:
            continue
        protocol = protocol_for(_parse_dotted(name))
        if protocol is None:
            continue
        # The same release from two places adds nothing; keep the first (system) one.
        releases.setdefault(name, SkopeoRelease(name, protocol, (str(path),), origin))
    return sorted(releases.values(), key=lambda r: r.version)


def available_releases() -> list[SkopeoRelease]:
    """The releases to test against, after the ``CIP_SKOPEO_RELEASES`` selection.

    Raises LookupError when the selection names a release that is not available: a CI job
    that asks for one must not pass by testing nothing.
    """
    releases = all_releases()
    spec = os.environ.get(RELEASES_ENV, "").strip()
    if not spec or spec.lower() == "all":
        return releases
    tokens = [tok.strip() for tok in spec.split(",") if tok.strip()]
    chosen = [r for r in releases if _selected(r, tokens)]
    used = set().union(*(_selected(r, tokens) for r in chosen)) if chosen else set()
    unknown = [tok for tok in tokens if tok not in used]
    if unknown:
        have = ", ".join(f"{r.name} ({r.origin})" for r in releases) or "none"
        raise LookupError(
            f"{RELEASES_ENV}={spec!r}: no skopeo release matches {', '.join(unknown)}; "
            f"available: {have} (run scripts/fetch-skopeo.sh for the newer ones)"
        )
    return chosen
