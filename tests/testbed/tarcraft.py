"""Hand-made tar archives, and two listers to compare: Go's archive/tar and ours.

:func:`header` writes one 512-byte header block field by field (any bytes in any field,
the checksum computed or forced); :class:`GoLister` runs ``tests/testbed/tarlist`` (a
Go program over archive/tar, built once per session by the ``go_tarlist`` fixture);
:func:`our_listing` reads the same bytes with the project's reader. Both give a
:class:`Listing`: the entries Next() returned and how the archive ended.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from containers_image_proxy.layers import LayerFormatError
from containers_image_proxy.layers._tar import TarReader

TARLIST_SRC = Path(__file__).resolve().parent / "tarlist" / "main.go"

Field = Union[bytes, int, None]

# (offset, length) of each header field
FIELDS = {
    "name": (0, 100),
    "mode": (100, 8),
    "uid": (108, 8),
    "gid": (116, 8),
    "size": (124, 12),
    "mtime": (136, 12),
    "chksum": (148, 8),
    "typeflag": (156, 1),
    "linkname": (157, 100),
    "magic": (257, 6),
    "version": (263, 2),
    "uname": (265, 32),
    "gname": (297, 32),
    "devmajor": (329, 8),
    "devminor": (337, 8),
    "prefix": (345, 155),
    # GNU layout of the same area
    "atime": (345, 12),
    "ctime": (357, 12),
    "sparse": (386, 96),
    "isextended": (482, 1),
    "realsize": (483, 12),
    # STAR
    "star_prefix": (345, 131),
    "star_atime": (476, 12),
    "star_ctime": (488, 12),
    "trailer": (508, 4),
}
USTAR = (b"ustar\x00", b"00")
GNU = (b"ustar ", b" \x00")
V7 = (b"", b"")


def octal(n: int, width: int) -> bytes:
    """``n`` in octal, zero-padded, NUL-terminated, ``width`` bytes in all."""
    return b"%0*o\x00" % (width - 1, n)


def checksum(blk: Union[bytes, bytearray]) -> int:
    return sum(blk[:148]) + 8 * 0x20 + sum(blk[156:])


def fix_checksum(blk: bytearray, signed: bool = False) -> None:
    """Write the block's checksum (the signed sum when ``signed``) into its field."""
    total = checksum(blk)
    if signed:
        total -= 256 * sum(1 for i, c in enumerate(blk) if c >= 0x80 and not 148 <= i < 156)
    blk[148:156] = b"%06o\x00 " % total


def header(
    name: bytes = b"file",
    typeflag: bytes = b"0",
    size: int = 0,
    fmt: tuple[bytes, bytes] = USTAR,
    mode: int = 0o644,
    mtime: int = 1_600_000_000,
    chksum: Optional[bytes] = None,
    signed: bool = False,
    **raw: Field,
) -> bytes:
    """One header block; ``raw`` overrides any field (bytes, padded with NULs; an int is
    written in octal)."""
    blk = bytearray(512)
    values: dict[str, Field] = {
        "name": name,
        "mode": mode,
        "uid": 0,
        "gid": 0,
        "size": size,
        "mtime": mtime,
        "typeflag": typeflag,
        "magic": fmt[0],
        "version": fmt[1],
    }
    values.update(raw)
    for key, value in values.items():
        if value is None:
            continue
        at, width = FIELDS[key]
        data = octal(value, width) if isinstance(value, int) else value
        assert len(data) <= width, (key, data)
        blk[at : at + width] = data.ljust(width, b"\x00")
    if chksum is None:
        fix_checksum(blk, signed)
    else:
        blk[148:156] = chksum.ljust(8, b"\x00")
    return bytes(blk)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def entry(data: bytes = b"", **kw: Any) -> bytes:
    """A header and its padded data (size from ``data`` unless given)."""
    kw.setdefault("size", len(data))
    return header(**kw) + pad(data)


def pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(b"%d" % n) + len(body) != n:
        n += 1
    return b"%d" % n + body


def pax(records: list[tuple[bytes, bytes]], typeflag: bytes = b"x", raw: bytes = b"") -> bytes:
    """An extended header entry holding ``records`` (then ``raw`` verbatim)."""
    body = b"".join(pax_record(k, v) for k, v in records) + raw
    return entry(body, name=b"PaxHeaders/x", typeflag=typeflag)


END = bytes(1024)


# --- the two listers ---------------------------------------------------------------------


@dataclass
class Listing:
    """The entries a reader returned, and the outcome: "EOF" or "error"."""

    entries: list[dict[str, Any]]
    end: str
    error: str = ""


def _from_go(lines: list[dict[str, Any]]) -> Listing:
    entries = []
    for line in lines[:-1]:
        e = dict(line)
        for key in ("name", "linkname", "uname", "gname"):
            e[key] = bytes.fromhex(e[key])
        if e["pax"] is not None:
            e["pax"] = {bytes.fromhex(k): bytes.fromhex(v) for k, v in e["pax"].items()}
        for key in ("mtime", "atime", "ctime"):
            e[key] = tuple(e[key]) if e[key] is not None else None
        e["data_error"] = bool(e.get("data_error"))
        entries.append(e)
    last = lines[-1]
    return Listing(entries, last["end"], last.get("error", ""))


class GoLister:
    """The Go program, built; lists archives with archive/tar."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def list(self, archive: bytes) -> Listing:
        return self.list_many([archive])[0]

    def list_many(self, archives: list[bytes]) -> list[Listing]:
        frames = b"".join(struct.pack(">Q", len(a)) + a for a in archives)
        proc = subprocess.run(
            [str(self.binary), "-batch"], input=frames, capture_output=True, check=True
        )
        out: list[Listing] = []
        pending: list[dict[str, Any]] = []
        for raw in proc.stdout.splitlines():
            line = json.loads(raw)
            pending.append(line)
            if "end" in line:
                out.append(_from_go(pending))
                pending = []
        assert len(out) == len(archives) and not pending
        return out


def build_tarlist(workdir: Path) -> Optional[Path]:
    """Build the Go lister into ``workdir`` with no network; None when go is missing."""
    go = shutil.which("go")
    if go is None:
        return None
    env = dict(os.environ)
    env.update(
        GO111MODULE="off",
        GOFLAGS="",
        GOPROXY="off",
        GOCACHE=str(workdir / "gocache"),
        GOPATH=str(workdir / "gopath"),
        CGO_ENABLED="0",
    )
    binary = workdir / "tarlist"
    subprocess.run(
        [go, "build", "-o", str(binary), str(TARLIST_SRC)],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
    )
    return binary


def our_listing(archive: bytes) -> Listing:
    """What the project's reader returns for ``archive``, in the lister's terms."""
    reader = TarReader(io.BufferedReader(io.BytesIO(archive)))  # type: ignore[arg-type]
    entries: list[dict[str, Any]] = []
    while True:
        try:
            hdr = reader.next()
        except LayerFormatError as e:
            return Listing(entries, "error", str(e))
        if hdr is None:
            return Listing(entries, "EOF")
        e: dict[str, Any] = {
            "name": hdr.name,
            "linkname": hdr.linkname,
            "typeflag": hdr.typeflag,
            "size": hdr.size,
            "mode": hdr.mode,
            "uid": hdr.uid,
            "gid": hdr.gid,
            "uname": hdr.uname,
            "gname": hdr.gname,
            "mtime": hdr.mtime,
            "atime": hdr.atime,
            "ctime": hdr.ctime,
            "devmajor": hdr.devmajor,
            "devminor": hdr.devminor,
            "pax": hdr.pax,
            "data_error": False,
        }
        h = hashlib.sha256()
        n = 0
        try:
            while True:
                chunk = reader.read(65536)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
        except LayerFormatError as err:
            e["data_error"] = True
            entries.append(e)
            return Listing(entries, "error", str(err))
        e["data_sha256"], e["data_len"] = h.hexdigest(), n
        entries.append(e)


def compare(go: Listing, ours: Listing) -> None:
    """Assert that the two listings agree, entry by entry and in their outcome."""
    assert len(ours.entries) == len(go.entries), (ours, go)
    for i, (a, b) in enumerate(zip(ours.entries, go.entries)):
        keys = set(b) - {"data_sha256", "data_len"}
        if b["typeflag"] == ord("g") and b["pax"] is None:
            keys.discard("name")  # Go's name then depends on its map order
        for key in sorted(keys):
            assert a.get(key) == b[key], f"entry {i} field {key}: ours {a.get(key)!r} go {b[key]!r}"
        if not b["data_error"]:
            assert (a["data_sha256"], a["data_len"]) == (b["data_sha256"], b["data_len"]), i
    assert ours.end == go.end, (ours.end, ours.error, go.end, go.error)
