"""Streaming tar over a layer blob, with the uncompressed digest checked on the way."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from typing import Any, Optional

from ._compression import DecompressingReader, Readable
from ._errors import LayerDigestError, LayerFormatError

_HASHES = ("sha256", "sha384", "sha512")


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


class EntryData:
    """An entry's data as a binary file object; tar errors become LayerFormatError."""

    def __init__(self, inner: Any, layer: str) -> None:
        self._inner = inner
        self._layer = layer

    def read(self, size: int = -1, /) -> bytes:
        try:
            data: bytes = self._inner.read(size)
        except (tarfile.TarError, EOFError) as e:
            raise LayerFormatError(f"corrupt tar data: {e}", self._layer) from e
        return data

    def readable(self) -> bool:
        return True


class LayerStream:
    """One layer blob as a stream of tar entries.

    ``source`` is the blob (compressed or not, whatever its media type says); ``diff_id``
    the digest the config's rootfs.diff_ids gives for this layer (None: computed only).
    Iterating yields ``(TarInfo, data)`` pairs, data being a binary file object for
    regular files and None otherwise, valid until the next entry; nothing is stored on
    disk. :meth:`finish` then reads the uncompressed stream and the blob to their ends and
    checks the diff_id, raising LayerDigestError on mismatch.
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
        self._tar: Optional[tarfile.TarFile] = None
        self._started = False

    def __iter__(self) -> Iterator[tuple[tarfile.TarInfo, Optional[EntryData]]]:
        if self._started:
            raise RuntimeError("a LayerStream can be iterated once")
        self._started = True
        # A zero-byte stream is an empty layer; tarfile would call it an error.
        if not self._buffered.peek(1):
            return
        try:
            tar = tarfile.open(  # noqa: SIM115 - the stream's lifetime is this generator's
                fileobj=self._buffered,
                mode="r|",
                encoding="utf-8",
                errors="surrogateescape",
            )
            self._tar = tar
            entries = iter(tar)
            data_end = 0
            while True:
                try:
                    info = next(entries)
                except StopIteration:
                    return
                except (tarfile.ReadError, EOFError):
                    # Some writers (umoci insert) end the archive right after the last
                    # member's data, without padding or end blocks; Go's archive/tar takes
                    # that, and the diff_id still guards the content. Only at an entry
                    # boundary, though: a stream cut inside data stays an error.
                    if self._hashing.count >= data_end and not self._buffered.peek(1):
                        return
                    raise
                data = tar.extractfile(info) if info.isreg() else None
                data_end = info.offset_data + (info.size if info.isreg() else 0)
                yield info, (EntryData(data, self.layer) if data is not None else None)
                # tarfile keeps every TarInfo it read; a stream needs none of them again,
                # and a layer of many entries would otherwise grow memory with its length
                # (``members`` is not in the type stubs, hence getattr)
                members = getattr(tar, "members", None)
                if isinstance(members, list):
                    members.clear()
        except (tarfile.TarError, EOFError) as e:
            raise LayerFormatError(f"corrupt tar stream: {e}", self.layer) from e

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
