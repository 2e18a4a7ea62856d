"""What an entry's metadata means, the same for unpack, list_dir and read_file.

A layer comes from a stranger: its numbers are checked here once, so that one entry is
refused (or clamped) the same way whichever of the three reads it.

- Times: a PAX time must be what Go's archive/tar accepts (``[+-]digits[.digits]``,
  seconds within int64); a NaN or infinite time is refused. A time before the epoch or
  past what a 64-bit nanosecond count holds (year 2262) becomes the epoch, as
  containers/storage and moby clamp it before ``chtimes``.
- Owners: uid and gid must be in 0 .. 2**32-2; beyond that chown(2) would silently take
  the low 32 bits (2**32 would become root), and -1 means "unchanged" to it.
- Devices: major and minor in 0 .. 2**32-1.
- Sizes: a size must be in 0 .. 2**63-1 (Go's int64); whether the filesystem can hold
  it is for unpack to find out (ftruncate), and refuse with the same error type.
- Extended attributes: a name that is empty, holds a NUL, or is over 255 bytes, and a
  value over 64 KiB, are refused (the kernel refuses them, and so the runtimes fail the
  layer). Names that only the runtime may set are never applied (``IGNORED_XATTRS``,
  after umoci's list): ``security.selinux`` (the runtime labels the tree),
  ``system.nfs4_acl`` (NFS ACLs), and ``trusted.overlay.*`` / ``user.overlay.*``
  (overlayfs's own opaque, redirect, metacopy ... markers: a layer setting them could
  redirect lookups when the tree is used as an overlay layer).
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
import tarfile
import urllib.parse
from decimal import Decimal
from typing import Any

from ._errors import UnsafeLayerError

log = logging.getLogger("containers_image_proxy.layers")

MAX_ID = 2**32 - 2
MAX_DEVICE = 2**32 - 1
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
_NS_MAX = 2**63 - 1
_SECONDS = 1_000_000_000
_INT64 = 2**63
_PAX_TIME = re.compile(r"([+-]?)([0-9]+)(?:\.([0-9]*))?", re.ASCII)

IGNORED_XATTRS = ("security.selinux", "system.nfs4_acl")
IGNORED_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
CAPABILITY_XATTR = "security.capability"


def _clamp(ns: int) -> int:
    return ns if 0 <= ns <= _NS_MAX else 0


def _pax_time(value: str, key: str, entry: str) -> int:
    m = _PAX_TIME.fullmatch(value)
    if m is None:
        raise UnsafeLayerError(entry, f"PAX {key} {value[:40]!r} is not a time")
    sign, secs, frac = m.groups()
    seconds = int(secs)
    if seconds >= _INT64 + (sign == "-"):
        raise UnsafeLayerError(entry, f"PAX {key} {value[:40]!r} is out of range")
    nanos = int((frac or "")[:9].ljust(9, "0"))
    ns = seconds * _SECONDS + nanos
    return -ns if sign == "-" else ns


def _header_time(value: Any, entry: str) -> int:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnsafeLayerError(entry, f"mtime {value!r} is not a time")
        ns = int(Decimal(repr(value)) * _SECONDS)
    elif isinstance(value, int):
        ns = value * _SECONDS
    else:
        raise UnsafeLayerError(entry, f"mtime {value!r} is not a time")
    if not -_INT64 * _SECONDS <= ns < _INT64 * _SECONDS:
        raise UnsafeLayerError(entry, "mtime is out of range")
    return ns


def entry_times(info: tarfile.TarInfo) -> tuple[int, int]:
    """(atime, mtime) in nanoseconds, with PAX precision when the header has it.

    Raises UnsafeLayerError for a time Go's archive/tar would not parse; clamps to the
    epoch what the runtimes clamp (see the module's docstring).
    """
    pax = info.pax_headers
    raw = pax.get("mtime")
    mtime = _pax_time(raw, "mtime", info.name) if raw is not None else None
    if mtime is None:
        mtime = _header_time(info.mtime, info.name)
    raw = pax.get("atime")
    atime = _pax_time(raw, "atime", info.name) if raw is not None else mtime
    return _clamp(atime), _clamp(mtime)


def entry_xattrs(info: tarfile.TarInfo) -> dict[str, bytes]:
    """Extended attributes carried in PAX headers (SCHILY.xattr.*, LIBARCHIVE.xattr.*).

    Names in ``IGNORED_XATTRS`` (or under ``IGNORED_XATTR_PREFIXES``) are left out.
    Raises UnsafeLayerError for a name or value the kernel cannot take.
    """
    out: dict[str, bytes] = {}
    for key, value in info.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr.") :]
            # tarfile decoded the value as UTF-8 with surrogateescape: this gives the bytes back.
            data = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote(key[len("LIBARCHIVE.xattr.") :])
            try:
                data = base64.b64decode(value + "=" * (-len(value) % 4))
            except (binascii.Error, ValueError):
                log.debug("%s: undecodable xattr %s", info.name, name)
                continue
        else:
            continue
        _check_xattr(name, data, info.name)
        if name in IGNORED_XATTRS or name.startswith(IGNORED_XATTR_PREFIXES):
            log.debug("%s: xattr %s not applied (the runtime's own)", info.name, name)
            continue
        out[name] = data
    return out


def _check_xattr(name: str, value: bytes, entry: str) -> None:
    if not name or "\0" in name:
        raise UnsafeLayerError(entry, f"xattr name {name[:40]!r} is not valid")
    if len(name.encode("utf-8", "surrogateescape")) > XATTR_NAME_MAX:
        raise UnsafeLayerError(entry, f"xattr name longer than {XATTR_NAME_MAX} bytes")
    if len(value) > XATTR_SIZE_MAX:
        raise UnsafeLayerError(entry, f"xattr {name!r} value longer than {XATTR_SIZE_MAX} bytes")


def _check_int(value: Any, what: str, top: int, entry: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= top:
        raise UnsafeLayerError(entry, f"{what} {value!r} is out of range (0 .. {top})")
    return value


def check_entry(info: tarfile.TarInfo) -> tuple[int, int]:
    """Check an entry's numbers (see the module's docstring); its (atime, mtime) in ns.

    Raises UnsafeLayerError for an entry no runtime could apply faithfully.
    """
    name = info.name
    _check_int(info.uid, "uid", MAX_ID, name)
    _check_int(info.gid, "gid", MAX_ID, name)
    if info.ischr() or info.isblk():
        _check_int(info.devmajor, "device major", MAX_DEVICE, name)
        _check_int(info.devminor, "device minor", MAX_DEVICE, name)
    if not isinstance(info.size, int) or not 0 <= info.size < _INT64:
        raise UnsafeLayerError(name, f"size {info.size!r} is not valid")
    entry_xattrs(info)
    return entry_times(info)


__all__ = [
    "CAPABILITY_XATTR",
    "IGNORED_XATTRS",
    "IGNORED_XATTR_PREFIXES",
    "check_entry",
    "entry_times",
    "entry_xattrs",
]
