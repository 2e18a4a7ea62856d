"""One tar header block, read field by field as Go's archive/tar reads it.

:func:`parse_header` gives the block's own fields (V7, USTAR with its prefix, STAR, GNU
with Go's fallback for archives of its pre-1.8 writer); :func:`merge_pax` applies an
extended header's records to them. The reader (:mod:`._tar`) does the rest: extended
headers, long names, sparse maps, the data and the end of the archive.
"""

from __future__ import annotations

from typing import Optional

from ._tarfields import BadField, checksum_matches, cstr, is_ascii, numeric, parse_int, pax_time

V7, USTAR, GNU, STAR = range(4)
_GO_ZERO_TIME = -62135596800  # Go's zero time.Time, as Unix seconds


class Header:
    """One entry as Go's Reader.Next() returns it; strings are the archive's bytes.

    ``typeflag`` is the type byte's value; ``mtime``/``atime``/``ctime`` are (seconds,
    nanoseconds), atime and ctime None when the header has none; ``pax`` the entry's own
    PAX records (None without an extended header); ``sparse`` the data regions of a sparse
    file as merged, non-empty (offset, length) pairs in logical coordinates, None for a
    file that is not sparse; ``offset`` where the entry's first header block starts.
    """

    __slots__ = (
        "atime",
        "ctime",
        "devmajor",
        "devminor",
        "gid",
        "gname",
        "linkname",
        "mode",
        "mtime",
        "name",
        "offset",
        "pax",
        "size",
        "sparse",
        "typeflag",
        "uid",
        "uname",
    )

    def __init__(self, typeflag: int, name: bytes) -> None:
        self.typeflag = typeflag
        self.name = name
        self.linkname = b""
        self.size = 0
        self.mode = 0
        self.uid = 0
        self.gid = 0
        self.uname = b""
        self.gname = b""
        self.mtime = (_GO_ZERO_TIME, 0)
        self.atime: Optional[tuple[int, int]] = None
        self.ctime: Optional[tuple[int, int]] = None
        self.devmajor = 0
        self.devminor = 0
        self.pax: Optional[dict[bytes, bytes]] = None
        self.sparse: Optional[list[tuple[int, int]]] = None
        self.offset = 0


def header_format(blk: bytes) -> int:
    """V7, USTAR, GNU or STAR, from the magic, version and STAR trailer (Go's rules)."""
    magic = blk[257:263]
    if magic == b"ustar\x00":
        return STAR if blk[508:512] == b"tar\x00" else USTAR
    if magic == b"ustar " and blk[263:265] == b" \x00":
        return GNU
    return V7


def parse_header(blk: bytes) -> tuple[Header, int]:
    """A header block's fields, before extended headers are applied; and its format."""
    if not checksum_matches(blk):
        raise BadField("bad checksum")
    fmt = header_format(blk)
    hdr = Header(blk[156], cstr(blk[:100]))
    hdr.linkname = cstr(blk[157:257])
    hdr.size = numeric(blk[124:136])
    hdr.mode = numeric(blk[100:108])
    hdr.uid = numeric(blk[108:116])
    hdr.gid = numeric(blk[116:124])
    hdr.mtime = (numeric(blk[136:148]), 0)
    if fmt == V7:
        return hdr, fmt
    hdr.uname = cstr(blk[265:297])
    hdr.gname = cstr(blk[297:329])
    hdr.devmajor = numeric(blk[329:337])
    hdr.devminor = numeric(blk[337:345])
    prefix = b""
    if fmt == USTAR:
        prefix = cstr(blk[345:500])
    elif fmt == STAR:
        prefix = cstr(blk[345:476])
        hdr.atime = (numeric(blk[476:488]), 0)
        hdr.ctime = (numeric(blk[488:500]), 0)
    else:
        try:
            if blk[345]:
                hdr.atime = (numeric(blk[345:357]), 0)
            if blk[357]:
                hdr.ctime = (numeric(blk[357:369]), 0)
        except BadField:
            # Go's reading of archives from its own pre-1.8 writer, which put a USTAR
            # prefix where GNU keeps the access and change times
            hdr.atime = hdr.ctime = None
            old_prefix = cstr(blk[345:500])
            if is_ascii(old_prefix):
                prefix = old_prefix
    if prefix:
        hdr.name = prefix + b"/" + hdr.name
    return hdr, fmt


def merge_pax(hdr: Header, records: Optional[dict[bytes, bytes]]) -> None:
    """Apply an extended header's records to ``hdr`` (empty values keep the header's)."""
    if records is None:
        return
    for key, value in records.items():
        if not value:
            continue
        if key == b"path":
            hdr.name = value
        elif key == b"linkpath":
            hdr.linkname = value
        elif key == b"uname":
            hdr.uname = value
        elif key == b"gname":
            hdr.gname = value
        elif key in (b"uid", b"gid", b"size"):
            n = parse_int(value)
            if n is None:
                raise BadField(f"bad PAX {key.decode()} {value!r}")
            setattr(hdr, key.decode(), n)
        elif key == b"mtime":
            hdr.mtime = pax_time(value)
        elif key == b"atime":
            hdr.atime = pax_time(value)
        elif key == b"ctime":
            hdr.ctime = pax_time(value)
    hdr.pax = records
