"""A streaming tar reader that sees what Go's archive/tar ``Reader.Next()`` sees.

Runtimes read layers with Go's archive/tar; this reader returns the same entries, with the
same names, sizes and types, and fails where it fails, so that no layer can show us one
tree and a runtime another. Behaviour followed (read from Go's reader, not copied):

- V7, USTAR (prefix joined to the name), STAR and GNU headers; GNU long names and link
  names ('L', 'K'); PAX extended headers ('x') merged into the next entry; PAX global
  headers ('g') returned as entries of their own and never applied to others;
- numeric fields in octal (NUL/space padded) or base-256; either checksum sum (signed or
  unsigned); strings ending at the first NUL; a regular file of type NUL whose name ends
  in '/' is a directory;
- extended headers over 1 MiB refused (checked before anything is buffered);
- GNU old sparse ('S', with extension blocks) and PAX sparse 0.0, 0.1 and 1.0 files, their
  maps validated as Go does; data reads give the logical bytes, zeros in holes;
- the end: two zero blocks, or a clean end of stream at a block boundary or inside the
  padding after an entry's data; a zero block followed by a non-zero one, a partial block,
  or a stream cut inside an entry's data is an error.

Errors are LayerFormatError naming the layer and the byte offset of the header at fault.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional, Protocol

from ._errors import LayerFormatError
from ._tarfields import (
    MAX_SPARSE_ENTRIES,
    SPARSE_MAP,
    BadField,
    collapse_token,
    cstr,
    data_regions,
    entry_count,
    numeric,
    parse_int,
    parse_pax,
    sparse_map_0x1,
)
from ._tarheader import GNU, Header, merge_pax, parse_header

BLOCK = 512
MAX_SPECIAL = 1 << 20  # Go's limit for PAX and GNU long-name headers
FRAGMENT = 1 << 20  # largest chunk fragments() yields
_ZERO_BLOCK = bytes(BLOCK)
_HEADER_ONLY = frozenset(b"123456")  # link, symlink, char, block, dir, fifo: no data
_X, _G, _L, _K, _S = b"xgLKS"
_DIR, _REG = ord("5"), ord("0")


class Stream(Protocol):
    """What the reader reads from: a buffered binary stream (io.BufferedReader)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def readinto(self, buffer: bytearray, /) -> int: ...


class TarReader:
    """Entries of a tar stream, one at a time, with the current entry's data.

    :meth:`next` returns the next :class:`Header` (None at the end of the archive);
    :meth:`read` and :meth:`fragments` read the current entry's data until the next call
    to :meth:`next`, which skips what was left unread. Every error is a LayerFormatError
    and is sticky, as in Go. Memory stays bounded whatever the archive holds.
    """

    def __init__(self, stream: Stream, layer: str = "") -> None:
        self._r = stream
        self._layer = layer
        self.pos = 0  # bytes consumed from the stream
        self.serial = 0  # bumped by every next(): data objects check it
        self._pad = 0
        self._phys = 0  # bytes of the current entry's data left in the stream
        self._lsize = 0  # the entry's logical size
        self._lpos = 0  # logical position in it
        self._regions: Optional[list[tuple[int, int]]] = None  # sparse data regions
        self._ri = 0  # index of the first region not read yet
        self._entry = 0  # offset of the current entry's header
        self._err: Optional[LayerFormatError] = None
        self._eof = False
        self._scratch = bytearray(64 * 1024)

    # --- headers -------------------------------------------------------------------------

    def next(self) -> Optional[Header]:
        """The next entry (a global header 'g' too, as Go returns it), None at the end.

        Raises LayerFormatError where Go's Reader.Next() fails.
        """
        if self._err is not None:
            raise self._err
        self.serial += 1
        if self._eof:
            return None
        try:
            hdr = self._next()
        except LayerFormatError as e:
            self._err = e
            raise
        if hdr is None:
            self._eof = True
            self._phys = self._lsize = self._lpos = 0
            self._regions = None
        return hdr

    def _bad(self, offset: int, reason: str) -> LayerFormatError:
        return LayerFormatError(f"invalid tar header at byte {offset}: {reason}", self._layer)

    def _read(self, n: int) -> bytes:
        b = self._r.read(n)
        self.pos += len(b)
        return b

    def _next(self) -> Optional[Header]:
        pax: Optional[dict[bytes, bytes]] = None
        long_name = long_link = b""
        first = -1
        while True:
            self._skip_data()
            if self._pad:
                if len(self._read(self._pad)) < self._pad:
                    return None  # the stream ends in the padding: Go's clean end too
                self._pad = 0
            off = self.pos
            if first < 0:
                first = off
            blk = self._read(BLOCK)
            if len(blk) < BLOCK:
                if not blk:
                    return None
                raise self._bad(off, "truncated header block")
            if blk == _ZERO_BLOCK:
                blk = self._read(BLOCK)
                if len(blk) < BLOCK:
                    if not blk:
                        return None
                    raise self._bad(off + BLOCK, "truncated block after a zero block")
                if blk == _ZERO_BLOCK:
                    return None
                raise self._bad(off + BLOCK, "a zero block followed by a non-zero block")
            try:
                hdr, fmt = parse_header(blk)
            except BadField as e:
                raise self._bad(off, str(e)) from None
            hdr.offset = first
            t = hdr.typeflag
            nb = self._set_data(hdr, off)
            if t in (_X, _G):
                try:
                    records = parse_pax(self._special(nb, off))
                except BadField as e:
                    raise self._bad(off, str(e)) from None
                if t == _G:
                    return self._global(hdr, records)
                pax = records
                continue
            if t in (_L, _K):
                value = cstr(self._special(nb, off))
                if t == _L:
                    long_name = value
                else:
                    long_link = value
                continue
            try:
                merge_pax(hdr, pax)
            except BadField as e:
                raise self._bad(off, str(e)) from None
            if long_name:
                hdr.name = long_name
            if long_link:
                hdr.linkname = long_link
            if t == 0:
                hdr.typeflag = _DIR if hdr.name.endswith(b"/") else _REG
            self._set_data(hdr, off)
            self._entry = off
            self._sparse(hdr, blk, fmt, off)
            return hdr

    def _global(self, hdr: Header, records: dict[bytes, bytes]) -> Header:
        """A 'g' header as Go returns it: its name (or its path record) and its records."""
        out = Header(_G, hdr.name)
        out.offset = hdr.offset
        try:
            merge_pax(hdr, records)
        except BadField:
            # Go drops the records then (its name depends on map order: path or not)
            out.name = records.get(b"path") or hdr.name
            return out
        out.name = hdr.name
        out.pax = records
        return out

    def _set_data(self, hdr: Header, off: int) -> int:
        nb = 0 if hdr.typeflag in _HEADER_ONLY else hdr.size
        if nb < 0:
            raise self._bad(off, f"negative size {nb}")
        self._phys = self._lsize = nb
        self._pad = -nb & (BLOCK - 1)
        self._lpos = 0
        self._regions = None
        self._ri = 0
        return nb

    def _special(self, nb: int, off: int) -> bytes:
        """The data of an extended header, refused before reading when over 1 MiB."""
        if nb > MAX_SPECIAL:
            raise self._bad(off, f"extended header of {nb} bytes (the limit is {MAX_SPECIAL})")
        data = self._read(nb)
        self._phys = 0
        if len(data) < nb:
            raise self._bad(off, "truncated extended header")
        return data

    def _skip_data(self) -> None:
        left = self._phys
        buf = self._scratch
        while left > 0:
            n = self._r.readinto(memoryview(buf)[: min(left, len(buf))])  # type: ignore[arg-type]
            if not n:
                self._phys = left
                raise self._truncated()
            left -= n
            self.pos += n
        self._phys = 0

    # --- sparse files --------------------------------------------------------------------

    def _sparse(self, hdr: Header, blk: bytes, fmt: int, off: int) -> None:
        try:
            if hdr.typeflag == _S:
                spd = self._old_gnu_map(hdr, blk, fmt, off)
            else:
                found = self._pax_map(hdr, off)
                if found is None:
                    return
                spd = found
            if hdr.typeflag in _HEADER_ONLY:
                raise BadField("sparse map on an entry that has no data")
            regions = data_regions(spd, hdr.size)
        except BadField as e:
            raise self._bad(off, str(e)) from None
        self._regions = hdr.sparse = regions
        self._lsize = hdr.size

    def _old_gnu_map(self, hdr: Header, blk: bytes, fmt: int, off: int) -> list[tuple[int, int]]:
        if fmt != GNU:
            raise BadField("sparse entry in a header that is not GNU")
        hdr.size = numeric(blk[483:495])
        spd: list[tuple[int, int]] = []
        area, count, ext = blk[386:482], 4, 482
        while True:
            for i in range(count):
                entry = area[i * 24 : i * 24 + 24]
                if not entry[0]:
                    break
                spd.append((numeric(entry[:12]), numeric(entry[12:])))
            if len(spd) > MAX_SPARSE_ENTRIES:
                raise BadField(f"sparse map of more than {MAX_SPARSE_ENTRIES} entries")
            if not blk[ext]:
                return spd
            at = self.pos
            blk = self._read(BLOCK)
            if len(blk) < BLOCK:
                raise self._bad(at, "truncated sparse extension block")
            area, count, ext = blk[:504], 21, 504

    def _pax_map(self, hdr: Header, off: int) -> Optional[list[tuple[int, int]]]:
        records = hdr.pax or {}
        major = records.get(b"GNU.sparse.major", b"")
        minor = records.get(b"GNU.sparse.minor", b"")
        if major == b"0" and minor in (b"0", b"1"):
            v1 = False
        elif major == b"1" and minor == b"0":
            v1 = True
        elif major or minor or not records.get(SPARSE_MAP):
            return None  # an unknown version, or not sparse at all
        else:
            v1 = False
        name = records.get(b"GNU.sparse.name")
        if name:
            hdr.name = name
        size = records.get(b"GNU.sparse.size") or records.get(b"GNU.sparse.realsize")
        if size:
            n = parse_int(size)
            if n is None:
                raise BadField(f"bad GNU.sparse size {size!r}")
            hdr.size = n
        return self._map_1x0(off) if v1 else sparse_map_0x1(records)

    def _map_1x0(self, off: int) -> list[tuple[int, int]]:
        """The 1.0 map, newline-separated decimals at the start of the data, whole blocks."""
        count_token: Optional[bytes] = None
        values: list[Optional[int]] = []
        partial = b""
        newlines = 0
        want = 1  # newlines needed: the count's, then two per entry
        n = -1
        while True:
            while newlines < want:
                if self._phys < BLOCK:
                    raise self._bad(off, "sparse map runs past the entry's data")
                blk = self._read(BLOCK)
                if len(blk) < BLOCK:
                    raise self._truncated()
                self._phys -= BLOCK
                newlines += blk.count(b"\n")
                pieces = blk.split(b"\n")
                for piece in pieces[:-1]:
                    token = partial + piece
                    partial = b""
                    if count_token is None:
                        count_token = token
                    elif n < 0 or len(values) < 2 * n:
                        values.append(parse_int(token))
                partial += pieces[-1]
                if len(partial) > 64:
                    partial = collapse_token(partial)
            if n >= 0:
                break
            assert count_token is not None
            n = entry_count(count_token)
            want = 1 + 2 * n
            del values[2 * n :]
        numbers = [v for v in values if v is not None]
        if len(numbers) < len(values):
            raise BadField("bad number in the sparse map")
        return list(zip(numbers[0::2], numbers[1::2]))

    # --- data ----------------------------------------------------------------------------

    def _truncated(self) -> LayerFormatError:
        self._err = LayerFormatError(
            f"tar stream truncated in the data of the entry at byte {self._entry}", self._layer
        )
        return self._err

    def _data_error(self, reason: str) -> LayerFormatError:
        self._err = LayerFormatError(f"sparse entry at byte {self._entry}: {reason}", self._layer)
        return self._err

    def _physical(self, n: int) -> bytes:
        if self._phys < n:
            raise self._data_error("its map references data the archive does not hold")
        data = self._r.read(n)
        self.pos += len(data)
        self._phys -= len(data)
        if len(data) < n:
            raise self._truncated()
        return data

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the entry's logical data (all that is left if < 0).

        Holes of a sparse file read as zeros. Raises LayerFormatError when the stream ends
        inside the data, or a sparse map and the data it maps disagree (as Go does).
        """
        if self._err is not None:
            raise self._err
        if self._regions is None:
            n = self._phys if size < 0 else min(size, self._phys)
            if n <= 0:
                return b""
            self._lpos += n
            return self._physical(n)
        left = self._lsize - self._lpos
        n = left if size < 0 else min(size, left)
        out = bytearray()
        regions = self._regions
        while n > 0:
            if self._ri < len(regions) and self._lpos >= regions[self._ri][0]:
                start, length = regions[self._ri]
                k = min(n, start + length - self._lpos)
                out += self._physical(k)
                if self._lpos + k == start + length:
                    self._ri += 1
            else:
                hole_end = regions[self._ri][0] if self._ri < len(regions) else self._lsize
                k = min(n, hole_end - self._lpos)
                out += bytes(k)
            self._lpos += k
            n -= k
        if self._lpos == self._lsize and self._phys > 0:
            raise self._data_error("the archive holds data its map does not reference")
        return bytes(out)

    def fragments(self) -> Iterator[tuple[int, bytes]]:
        """The entry's data regions as (logical offset, bytes) chunks of at most 1 MiB.

        Holes are skipped (a writer seeks over them); a file that is not sparse is one
        region. Raises as :meth:`read` does.
        """
        serial = self.serial
        while True:
            if self.serial != serial:
                raise RuntimeError("tar entry data read after the next entry")
            if self._err is not None:
                raise self._err
            if self._regions is None:
                if self._phys <= 0:
                    return
                at = self._lpos
                yield at, self.read(FRAGMENT)
                continue
            if self._ri >= len(self._regions):
                self._lpos = self._lsize
                if self._phys > 0:
                    raise self._data_error("the archive holds data its map does not reference")
                return
            start, length = self._regions[self._ri]
            at = max(self._lpos, start)
            k = min(FRAGMENT, start + length - at)
            chunk = self._physical(k)
            self._lpos = at + k
            if self._lpos == start + length:
                self._ri += 1
            yield at, chunk
