"""Field syntax of tar headers, read the way Go's archive/tar reads it.

Container runtimes (containers/storage, docker, containerd, umoci) read layers with Go's
``archive/tar``; a reader that disagrees with it on any field lets a layer show one thing
to us and another to them. These functions reproduce its rules for numeric fields (octal
with NUL/space padding, base-256), C strings, decimal integers, PAX records and times, and
sparse maps. They work on bytes (Go strings are bytes) and signal a malformed field with
:class:`BadField`, which the reader turns into a LayerFormatError naming the offset.
"""

from __future__ import annotations

import re
from typing import Optional

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

# Sparse maps hold at most this many (offset, length) pairs. Go has no limit of its own
# (its only bound is the archive's size); this one is above anything Go accepts in a
# 1 MiB PAX record (4 bytes per pair at least), and keeps a hostile map's memory bounded.
MAX_SPARSE_ENTRIES = 1 << 18

_DECIMAL = re.compile(rb"([+-]?)0*([0-9]*)\Z")
_NOT_OCTAL = re.compile(rb"[^0-7]")
_HIGH_BYTES = bytes(range(0x80, 0x100))


class BadField(Exception):
    """A header field Go's archive/tar rejects (its ErrHeader)."""


def cstr(b: bytes) -> bytes:
    """The bytes before the first NUL (all of them when there is none)."""
    i = b.find(0)
    return b if i < 0 else b[:i]


def octal(b: bytes) -> int:
    """An octal field: NULs and spaces trimmed at both ends, read up to a NUL."""
    t = b.strip(b" \x00")
    if not t:
        return 0
    i = t.find(0)
    if i >= 0:
        t = t[:i]
    if _NOT_OCTAL.search(t):
        raise BadField(f"bad octal field {b!r}")
    return int(t, 8)  # at most 12 digits: never past 64 bits


_SEEN: dict[bytes, int] = {}  # field bytes -> value: modes, ids and sizes repeat a lot
_SEEN_MAX = 4096


def numeric(b: bytes) -> int:
    """A numeric field: base-256 (two's complement) when the first bit is set, else octal."""
    value = _SEEN.get(b)
    if value is None:
        value = _numeric(b)  # raises for a bad field: those are never remembered
        if len(_SEEN) >= _SEEN_MAX:
            _SEEN.clear()
        _SEEN[b] = value
    return value


def _numeric(b: bytes) -> int:
    if b and b[0] & 0x80:
        inv = 0xFF if b[0] & 0x40 else 0
        x = 0
        first = True
        for c in b:
            c ^= inv
            if first:
                c &= 0x7F
                first = False
            if x >> 56:
                raise BadField("base-256 field overflows 64 bits")
            x = (x << 8) | c
        if x >> 63:
            raise BadField("base-256 field overflows 64 bits")
        return ~x if inv else x
    return octal(b)


def checksum_matches(blk: bytes) -> bool:
    """Whether the checksum field holds the block's unsigned or signed byte sum."""
    try:
        value = octal(blk[148:156])
    except BadField:
        return False
    unsigned = sum(blk) - sum(blk[148:156]) + 8 * 0x20  # the field itself counts as spaces
    if value == unsigned:
        return True
    rest = blk[:148] + blk[156:]
    high = len(rest) - len(rest.translate(None, _HIGH_BYTES))
    return value == unsigned - 256 * high


def is_ascii(b: bytes) -> bool:
    """No byte at or above 0x80 (and, for a C string, no NUL: the caller cut there)."""
    return len(b.translate(None, _HIGH_BYTES)) == len(b) and 0 not in b


def parse_int(s: bytes) -> Optional[int]:
    """A decimal int64 as Go's strconv.ParseInt(s, 10, 64) reads it; None when it fails."""
    m = _DECIMAL.match(s)
    if m is None or len(s) == len(m.group(1)):  # empty, or a sign alone
        return None
    digits = m.group(2)
    if len(digits) > 19:
        return None
    value = int(digits or b"0")
    if m.group(1) == b"-":
        value = -value
    if not INT64_MIN <= value <= INT64_MAX:
        return None
    return value


def pax_time(s: bytes) -> tuple[int, int]:
    """A PAX time ``%d[.%d]`` as (seconds, nanoseconds), normalised as Go's time.Unix."""
    whole, _dot, frac = s.partition(b".")
    secs = parse_int(whole)
    if secs is None:
        raise BadField(f"bad PAX time {s!r}")
    if not frac:
        return secs, 0
    if not frac.isdigit():
        raise BadField(f"bad PAX time {s!r}")
    nsecs = int(frac[:9].ljust(9, b"0"))
    if whole.startswith(b"-"):
        nsecs = -nsecs
    extra, nsec = divmod(nsecs, 1_000_000_000)
    return secs + extra, nsec


_PAX_STRING_KEYS = (b"path", b"linkpath", b"uname", b"gname")
SPARSE_OFFSET = b"GNU.sparse.offset"
SPARSE_NUMBYTES = b"GNU.sparse.numbytes"
SPARSE_MAP = b"GNU.sparse.map"


def parse_pax(buf: bytes) -> dict[bytes, bytes]:
    """The records of a PAX extended header, validated as Go validates them.

    GNU sparse 0.0 pairs (repeated ``GNU.sparse.offset``/``numbytes`` records) are folded
    into one ``GNU.sparse.map`` record, as Go does.
    """
    records: dict[bytes, bytes] = {}
    sparse: list[bytes] = []
    pos, end = 0, len(buf)
    while pos < end:
        space = buf.find(b" ", pos)
        if space < 0:
            raise BadField("PAX record without a length")
        length_field = buf[pos:space]
        n = parse_int(length_field)
        if n is None or n < 5 or n > end - pos or n <= len(length_field) + 1:
            raise BadField(f"bad PAX record length {length_field!r}")
        stop = pos + n
        if buf[stop - 1] != 0x0A:
            raise BadField("PAX record not ended by a newline")
        key, eq, value = buf[space + 1 : stop - 1].partition(b"=")
        if not eq or not key:
            raise BadField("PAX record without a key")
        if key in _PAX_STRING_KEYS:
            if 0 in value:
                raise BadField(f"NUL in PAX {key.decode()} record")
        elif 0 in key:
            raise BadField("NUL in a PAX key")
        pos = stop
        if key in (SPARSE_OFFSET, SPARSE_NUMBYTES):
            expected = SPARSE_OFFSET if len(sparse) % 2 == 0 else SPARSE_NUMBYTES
            if key != expected or b"," in value:
                raise BadField("GNU sparse 0.0 records out of order")
            sparse.append(value)
        else:
            records[key] = value
    if sparse:
        records[SPARSE_MAP] = b",".join(sparse)
    return records


def entry_count(s: bytes) -> int:
    """A sparse map's entry count, with Go's checks (and ours: MAX_SPARSE_ENTRIES)."""
    n = parse_int(s)
    if n is None or n < 0 or n >= 1 << 62:
        raise BadField(f"bad sparse entry count {s!r}")
    if n > MAX_SPARSE_ENTRIES:
        raise BadField(f"sparse map of {n} entries (more than {MAX_SPARSE_ENTRIES})")
    return n


def sparse_map_0x1(records: dict[bytes, bytes]) -> list[tuple[int, int]]:
    """The sparse map of GNU's PAX formats 0.0 and 0.1 (``GNU.sparse.map``)."""
    n = entry_count(records.get(b"GNU.sparse.numblocks", b""))
    raw = records.get(SPARSE_MAP, b"")
    fields = raw.split(b",") if raw else []
    if len(fields) != 2 * n:
        raise BadField("sparse map length does not match GNU.sparse.numblocks")
    return pairs(fields)


def pairs(fields: list[bytes]) -> list[tuple[int, int]]:
    """Decimal (offset, length) pairs, each as ParseInt reads it."""
    out = []
    for i in range(0, len(fields) - 1, 2):
        offset, length = parse_int(fields[i]), parse_int(fields[i + 1])
        if offset is None or length is None:
            raise BadField("bad number in the sparse map")
        out.append((offset, length))
    return out


def data_regions(spd: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """Validate a sparse map as Go does; return its data regions, merged and non-empty.

    Regions must be non-negative, in order, not overlapping, and inside ``size``.
    """
    if size < 0:
        raise BadField("negative sparse file size")
    prev_end = 0
    out: list[tuple[int, int]] = []
    for offset, length in spd:
        if offset < 0 or length < 0 or offset > INT64_MAX - length:
            raise BadField("bad sparse region")
        end = offset + length
        if end > size or prev_end > offset:
            raise BadField("sparse regions out of order or past the end")
        prev_end = end
        if length == 0:
            continue
        if out and out[-1][0] + out[-1][1] == offset:
            out[-1] = (out[-1][0], out[-1][1] + length)
        else:
            out.append((offset, length))
    return out


def collapse_token(tok: bytes) -> bytes:
    """A long partial decimal token shortened without changing how ParseInt reads it."""
    m = _DECIMAL.match(tok)
    if m is None or len(m.group(2)) > 19:
        return b"x"  # already invalid: stays invalid whatever follows
    return m.group(1) + b"0" + m.group(2)
