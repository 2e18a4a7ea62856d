"""Streaming tar over a layer blob, with the uncompressed digest checked on the way.

The tar is parsed by :mod:`._tar`, which reads it as Go's archive/tar does; entries come
out as tarfile.TarInfo objects for the rest of the package.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from typing import Any, Optional

from ._compression import DecompressingReader, Readable
from ._errors import LayerDigestError, LayerFormatError
from ._tar import TarReader
from ._tarheader import Header

_HASHES = ("sha256", "sha384", "sha512")
_GLOBAL = ord("g")
_DIR = ord("5")


def _hasher(diff_id: Optional[str], layer: str) -> Any:
    algorithm = diff_id.split(":", 1)[0] if diff_id else "sha256"
    if algorithm not in _HASHES or (diff_id is not None and ":" not in diff_id):
        raise LayerFormatError(f"unsupported diff_id {diff_id!r}", layer)
    return hashlib.new(algorithm)


class _HashingReader(io.RawIOBase):
    """Passes bytes through, hashing them."""

    def __init__(self, inner: io.RawIOBase, hasher: Any) -> None:
        super().__init__()
        self._inner = inner
        self.hasher = hasher
        self.count = 0  # bytes passed through so far

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        n = self._inner.readinto(b)
        if n:
            self.hasher.update(b[:n])
            self.count += n
        return n or 0


_TYPES = [bytes([i]) for i in range(256)]


def _text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def tar_info(hdr: Header) -> tarfile.TarInfo:
    """A tarfile.TarInfo holding what Go's reader says of the entry.

    Strings are decoded as UTF-8 with surrogateescape (``str.encode("utf-8",
    "surrogateescape")`` gives the archive's bytes back); ``mtime`` is whole seconds (the
    PAX record, when there is one, stays in ``pax_headers``); ``size`` is the logical
    size; ``sparse`` the data regions of a sparse file, None otherwise.
    """
    name = _text(hdr.name)
    if hdr.typeflag == _DIR:
        # as tarfile names directories (the trailing slash is Go's, and means nothing more)
        name = name.rstrip("/") or name
    info = tarfile.TarInfo(name)
    info.linkname = _text(hdr.linkname)
    info.type = _TYPES[hdr.typeflag]
    info.size = hdr.size
    info.mode = hdr.mode
    info.uid = hdr.uid
    info.gid = hdr.gid
    info.uname = _text(hdr.uname)
    info.gname = _text(hdr.gname)
    info.mtime = hdr.mtime[0]
    info.devmajor = hdr.devmajor
    info.devminor = hdr.devminor
    info.offset = hdr.offset
    if hdr.pax:
        info.pax_headers = {_text(k): _text(v) for k, v in hdr.pax.items()}
    info.sparse = hdr.sparse  # type: ignore[assignment]
    return info


class EntryData:
    """An entry's data as a binary file object, valid until the next entry.

    :meth:`read` gives the logical bytes (zeros in the holes of a sparse file),
    :meth:`fragments` only the regions that hold data, for writers that seek over holes.
    Both raise LayerFormatError when the archive is cut short or a sparse map and its data
    disagree.
    """

    def __init__(self, reader: TarReader) -> None:
        self._reader = reader
        self._serial = reader.serial

    def _check(self) -> TarReader:
        if self._reader.serial != self._serial:
            raise RuntimeError("tar entry data read after the next entry")
        return self._reader

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes (everything left when ``size`` < 0); b"" at the end."""
        return self._check().read(size)

    def fragments(self) -> Iterator[tuple[int, bytes]]:
        """(offset, bytes) chunks of at most 1 MiB, data regions only, in order.

        A file that is not sparse is one region from offset 0.
        """
        return self._check().fragments()

    def readable(self) -> bool:
        return True


class LayerStream:
    """One layer blob as a stream of tar entries.

    ``source`` is the blob (compressed or not, whatever its media type says); ``diff_id``
    the digest the config's rootfs.diff_ids gives for this layer (None: computed only).
    Iterating yields ``(TarInfo, data)`` pairs, data being an :class:`EntryData` for
    regular files and None otherwise, valid until the next entry; nothing is stored on
    disk. The tar is read as Go's archive/tar reads it (:mod:`._tar`): the entries are
    those a container runtime sees, and where Go fails LayerFormatError is raised. PAX
    global headers are skipped (Go returns them, and runtimes ignore them). :meth:`finish`
    then reads the uncompressed stream and the blob to their ends and checks the diff_id,
    raising LayerDigestError on mismatch.
    """

    def __init__(
        self,
        source: Readable,
        media_type: str = "",
        *,
        diff_id: Optional[str] = None,
        layer: str = "",
    ) -> None:
        self.layer = layer
        self.expected_diff_id = diff_id
        self.digest: Optional[str] = None
        hasher = _hasher(diff_id, layer)
        self._decompressed = DecompressingReader(source, media_type, layer=layer)
        self.compression = self._decompressed.compression
        self._hashing = _HashingReader(self._decompressed, hasher)
        self._buffered = io.BufferedReader(self._hashing, 64 * 1024)
        self._tar = TarReader(self._buffered, layer)
        self._started = False

    def __iter__(self) -> Iterator[tuple[tarfile.TarInfo, Optional[EntryData]]]:
        if self._started:
            raise RuntimeError("a LayerStream can be iterated once")
        self._started = True
        tar = self._tar
        while True:
            hdr = tar.next()
            if hdr is None:
                return
            if hdr.typeflag == _GLOBAL:
                continue
            info = tar_info(hdr)
            yield info, (EntryData(tar) if info.isreg() else None)

    def finish(self) -> str:
        """Read everything left (after the tar's end marker too), check the digest.

        Returns the computed uncompressed digest (``algorithm:hex``).
        """
        while self._buffered.read(1024 * 1024):
            pass
        self._decompressed.drain()
        hasher = self._hashing.hasher
        self.digest = f"{hasher.name}:{hasher.hexdigest()}"
        expected = self.expected_diff_id
        if expected is not None and self.digest != expected:
            raise LayerDigestError(expected, self.digest, self.layer)
        return self.digest

    @property
    def trailing_bytes(self) -> int:
        """Bytes after the last compressed stream that were read and dropped."""
        return self._decompressed.trailing_bytes


def iter_layer(
    source: Readable,
    media_type: str = "",
    *,
    diff_id: Optional[str] = None,
    layer: str = "",
) -> Iterator[tuple[tarfile.TarInfo, Optional[EntryData]]]:
    """Yield a layer's entries, then check its diff_id once the last one is consumed.

    A convenience over :class:`LayerStream`: the digest check runs when the iteration ends
    normally (LayerDigestError is raised from the final ``next``).
    """
    stream = LayerStream(source, media_type, diff_id=diff_id, layer=layer)
    yield from stream
    stream.finish()
