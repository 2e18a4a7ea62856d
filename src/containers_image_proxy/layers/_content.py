"""A regular file's content as data fragments: holes stay holes, memory stays bounded.

A sparse entry (GNU or PAX sparse formats) declares a logical size and the fragments of
it that hold data; the rest are holes. :func:`data_fragments` yields ``(offset, bytes)``
chunks of the data regions only, each at most ``CHUNK`` bytes, so that a 10 KiB layer
declaring a 64 MiB file costs 10 KiB to read, whoever writes it: :func:`write_fragments`
writes them with ``pwrite`` and sets the size with ``ftruncate``, leaving holes on disk.

The tar reader's data object may give the fragments itself (``fragments()``); otherwise
they are read from the logical stream, seeking over the holes where it can.
"""

from __future__ import annotations

import errno
import os
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Optional

from ._errors import LayerFormatError, UnsafeLayerError

CHUNK = 256 * 1024

Fragment = tuple[int, int]  # (offset, length) in the file's logical coordinates


def sparse_map(info: tarfile.TarInfo, layer: str = "") -> Optional[list[Fragment]]:
    """The data fragments a sparse entry declares, checked; None for a plain file.

    Zero-length fragments are dropped. Raises LayerFormatError for fragments that are not
    in order, overlap, or reach past the entry's size.
    """
    sparse = getattr(info, "sparse", None)
    if sparse is None:
        return None
    out: list[Fragment] = []
    end = 0
    for item in sparse:
        try:
            offset, length = item
        except (TypeError, ValueError):
            raise LayerFormatError(f"{info.name!r}: not a sparse map", layer) from None
        if not isinstance(offset, int) or not isinstance(length, int) or offset < 0:
            raise LayerFormatError(f"{info.name!r}: sparse fragment {item!r} is not valid", layer)
        if length < 0 or offset + length > info.size:
            raise LayerFormatError(
                f"{info.name!r}: sparse fragment ({offset}, {length}) is past the size {info.size}",
                layer,
            )
        if length == 0:
            continue
        if offset < end:
            raise LayerFormatError(
                f"{info.name!r}: sparse fragments overlap or are unordered", layer
            )
        out.append((offset, length))
        end = offset + length
    return out


def _checked(
    info: tarfile.TarInfo, chunks: Iterable[tuple[int, bytes]], layer: str
) -> Iterator[tuple[int, bytes]]:
    """Chunks a reader gave, cut to ``CHUNK`` and checked to be in order inside the size."""
    end = 0
    for offset, data in chunks:
        if offset < end or offset + len(data) > info.size:
            raise LayerFormatError(
                f"{info.name!r}: data fragment at {offset} is out of order or past the size",
                layer,
            )
        view = memoryview(data)
        for i in range(0, len(view), CHUNK):
            yield offset + i, bytes(view[i : i + CHUNK])
        end = offset + len(data)


def data_fragments(
    info: tarfile.TarInfo, data: Any, layer: str = ""
) -> Iterator[tuple[int, bytes]]:
    """The data regions of a regular file as ``(offset, bytes)`` chunks, in order.

    ``data`` is the entry's data object: its ``fragments()`` is used when it has one;
    otherwise it is read with ``read(n)`` (a plain file, or the logical stream of a
    sparse one, whose holes are skipped by seeking where the object allows it). Raises
    LayerFormatError for a sparse map or fragments that do not fit the entry's size.
    """
    frags = getattr(data, "fragments", None)
    if frags is not None:
        sparse_map(info, layer)
        yield from _checked(info, frags(), layer)
        return
    fragments = sparse_map(info, layer)
    if fragments is None:
        offset = 0
        while True:
            chunk = data.read(CHUNK)
            if not chunk:
                return
            yield offset, chunk
            offset += len(chunk)
    raw = _seekable_raw(data)
    if raw is not None:
        yield from _seeking(info, raw, fragments, layer)
    else:
        yield from _filtering(data, fragments)


def _seekable_raw(data: Any) -> Any:
    """The raw file object under tarfile's data object (``EntryData`` over ExFileObject).

    Seeking it only moves its logical position; reading a data region then reads the
    stream forward. None when ``data`` is not of that shape.
    """
    inner = getattr(data, "_inner", None)
    raw = getattr(inner, "raw", None)
    if raw is None or not callable(getattr(raw, "seek", None)):
        return None
    return raw


def _seeking(
    info: tarfile.TarInfo, raw: Any, fragments: list[Fragment], layer: str
) -> Iterator[tuple[int, bytes]]:
    for offset, length in fragments:
        raw.seek(offset)
        done = 0
        while done < length:
            try:
                chunk = raw.read(min(CHUNK, length - done))
            except (tarfile.TarError, EOFError) as e:
                raise LayerFormatError(f"corrupt tar data: {e}", layer) from e
            if not chunk:
                raise LayerFormatError(f"{info.name!r}: data ends inside a fragment", layer)
            yield offset + done, chunk
            done += len(chunk)


def _filtering(data: Any, fragments: list[Fragment]) -> Iterator[tuple[int, bytes]]:
    """The logical stream read through, keeping only what falls in a data fragment."""
    pos = 0
    i = 0
    while i < len(fragments):
        chunk = data.read(CHUNK)
        if not chunk:
            return
        start, stop = pos, pos + len(chunk)
        while i < len(fragments):
            offset, length = fragments[i]
            lo, hi = max(offset, start), min(offset + length, stop)
            if lo < hi:
                yield lo, chunk[lo - start : hi - start]
            if offset + length > stop:
                break
            i += 1
        pos = stop


def write_fragments(fd: int, info: tarfile.TarInfo, fragments: Iterable[tuple[int, bytes]]) -> None:
    """Write ``fragments`` into the new file ``fd`` and give it the entry's size.

    Holes are left unwritten (``ftruncate`` sets the size). Raises UnsafeLayerError when
    the filesystem cannot hold a file of that size or offset.
    """
    try:
        for offset, chunk in fragments:
            view = memoryview(chunk)
            while view:
                n = os.pwrite(fd, view, offset)
                view = view[n:]
                offset += n
        if os.fstat(fd).st_size != info.size:
            os.ftruncate(fd, info.size)
    except OSError as e:
        if e.errno in (errno.EFBIG, errno.EINVAL, errno.EOVERFLOW):
            raise UnsafeLayerError(
                info.name, f"size {info.size} cannot be stored here ({e.strerror})"
            ) from e
        raise
    except OverflowError as e:
        raise UnsafeLayerError(info.name, f"size {info.size} cannot be stored here") from e


_IN_MEMORY = 1024 * 1024  # a kept file's content above this size waits in a temporary file


class KeptContent:
    """A kept file's content: bytes when small, else a temporary file (holes kept)."""

    def __init__(self, info: tarfile.TarInfo, data: Any, layer: str) -> None:
        self.size = info.size
        self._bytes: Optional[bytes] = None
        self._file: Optional[Any] = None
        fragments = data_fragments(info, data, layer)
        if self.size <= _IN_MEMORY:
            buf = bytearray(self.size)
            for offset, chunk in fragments:
                buf[offset : offset + len(chunk)] = chunk
            self._bytes = bytes(buf)
            return
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        try:
            write_fragments(self._file.fileno(), info, fragments)
        except BaseException:
            self.close()
            raise

    def read(self) -> bytes:
        """All of the content."""
        if self._bytes is not None:
            return self._bytes
        out = bytearray()
        self.copy_to(out.extend)
        return bytes(out)

    def copy_to(self, write: Callable[[bytes], Any]) -> int:
        """Hand the content to ``write`` in chunks of at most ``CHUNK`` bytes."""
        if self._bytes is not None:
            for i in range(0, len(self._bytes), CHUNK):
                write(self._bytes[i : i + CHUNK])
            return len(self._bytes)
        assert self._file is not None
        fd = self._file.fileno()
        done = 0
        while done < self.size:
            chunk = os.pread(fd, min(CHUNK, self.size - done), done)
            if not chunk:
                raise OSError(errno.EIO, "temporary copy of the file ended early")
            write(chunk)
            done += len(chunk)
        return done

    def close(self) -> None:
        """Let go of the temporary file, if any."""
        if self._file is not None:
            self._file.close()
            self._file = None


__all__ = ["CHUNK", "KeptContent", "data_fragments", "sparse_map", "write_fragments"]
