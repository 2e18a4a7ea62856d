"""Layer decompression: what the media type says, checked against the bytes.

Registries and transports do not always label layers truthfully: ``docker-daemon:`` and
``containers-storage:`` serve uncompressed tars under compressed media types, and some
tools compress layers labelled as plain tar. The first bytes decide; the media type only
rejects what cannot be a tar layer at all (encrypted layers).

The reader always consumes its source to the end, trailing data and zstd skippable frames
(zstd:chunked metadata) included, so that a pipe from skopeo is never left undrained and
the blob reader's size and digest checks always run.
"""

from __future__ import annotations

import bz2
import io
import sys
import zlib
from typing import Optional, Protocol

from ._errors import LayerFormatError

if sys.version_info >= (3, 14):
    from compression import zstd as _zstd
else:
    from backports import zstd as _zstd

MEDIA_TYPE_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPE_OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MEDIA_TYPE_OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
MEDIA_TYPE_OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
MEDIA_TYPE_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

NONE = "none"
GZIP = "gzip"
ZSTD = "zstd"
BZIP2 = "bzip2"
XZ = "xz"

_BY_MEDIA_TYPE = {
    MEDIA_TYPE_OCI_LAYER: NONE,
    MEDIA_TYPE_OCI_LAYER_NONDIST: NONE,
    MEDIA_TYPE_DOCKER_LAYER: NONE,
    MEDIA_TYPE_OCI_LAYER_GZIP: GZIP,
    MEDIA_TYPE_OCI_LAYER_NONDIST_GZIP: GZIP,
    MEDIA_TYPE_DOCKER_LAYER_GZIP: GZIP,
    MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP: GZIP,
    MEDIA_TYPE_OCI_LAYER_ZSTD: ZSTD,
    MEDIA_TYPE_OCI_LAYER_NONDIST_ZSTD: ZSTD,
}

_GZIP_MAGIC = b"\x1f\x8b\x08"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"
# bzip2: "BZh", a block size digit, then the magic of a block or of the end of stream;
# checked in full so that a plain tar whose first name starts with "BZh" is not taken.
_BZIP2_BLOCK = (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90")
SNIFF_BYTES = 512  # one tar header block
_CHUNK = 256 * 1024


class Readable(Protocol):
    """The least a blob source must offer: ``read(n)`` returning b"" at the end."""

    def read(self, size: int = ..., /) -> bytes: ...


def expected_compression(media_type: str) -> Optional[str]:
    """The compression a layer media type announces, None when the type does not say.

    Raises LayerFormatError for encrypted layers, which cannot be read without keys.
    """
    if media_type.endswith("+encrypted"):
        raise LayerFormatError(f"encrypted layers are not supported ({media_type})")
    return _BY_MEDIA_TYPE.get(media_type)


def check_filesystem_layer(media_type: str, layer: str = "") -> None:
    """Raise LayerFormatError unless ``media_type`` is a tar layer type (OCI or Docker,
    plain, gzip or zstd, nondistributable too): an OCI artifact's blob (a WebAssembly
    module, model weights ...) is not a filesystem layer, whatever its bytes look like.
    Encrypted layers are refused as :func:`expected_compression` says. An empty type is
    accepted: a Docker schema 1 manifest has none, and its layers are always tars."""
    expected_compression(media_type)
    if media_type and media_type not in _BY_MEDIA_TYPE:
        raise LayerFormatError(
            f"media type {media_type!r} is not a filesystem layer (not a tar layer type): "
            "it cannot be unpacked, listed or read as files",
            layer,
        )


def _is_zstd_frame(prefix: bytes) -> bool:
    # A regular frame, or a skippable one (magic 0x184D2A50..0x184D2A5F, little endian).
    return prefix.startswith(_ZSTD_MAGIC) or (
        len(prefix) >= 4 and prefix[0] & 0xF0 == 0x50 and prefix[1:4] == b"\x2a\x4d\x18"
    )


def _is_tar_header(block: bytes) -> bool:
    """Whether ``block`` is a tar header with a valid checksum."""
    if len(block) < 512:
        return False
    field = block[148:156].split(b"\0", 1)[0].strip(b" ")
    try:
        stored = int(field, 8)
    except ValueError:
        return False
    # The checksum is computed with its own field taken as spaces (signed sums: old tars).
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:512])
    signed = unsigned - 256 * sum(1 for b in (*block[:148], *block[156:512]) if b > 127)
    return stored in (unsigned, signed)


def sniff(prefix: bytes) -> str:
    """The compression the first bytes of a blob show (NONE when none is recognised).

    A valid tar header wins over any magic number: a plain tar whose first name happens
    to start with one is still a plain tar.
    """
    if _is_tar_header(prefix[:512]):
        return NONE
    if prefix.startswith(_GZIP_MAGIC):
        return GZIP
    if _is_zstd_frame(prefix):
        return ZSTD
    if prefix.startswith(_XZ_MAGIC):
        return XZ
    if (
        prefix.startswith(b"BZh")
        and len(prefix) >= 10
        and prefix[3:4] in b"123456789"
        and prefix[4:10] in _BZIP2_BLOCK
    ):
        return BZIP2
    return NONE


class _Decoder(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def needs_input(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


class _GzipDecoder:
    """zlib's decompressobj behind the needs_input interface of the other decoders."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer, CRC checked

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def needs_input(self) -> bool:
        return not self._d.eof and not self._d.unconsumed_tail

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data

    def decompress(self, data: bytes, max_length: int = -1, /) -> bytes:
        tail = self._d.unconsumed_tail
        if tail:
            data = tail + data
        return self._d.decompress(data, max(max_length, 0))


def _new_decoder(kind: str) -> _Decoder:
    if kind == GZIP:
        return _GzipDecoder()
    if kind == ZSTD:
        return _zstd.ZstdDecompressor()
    if kind == BZIP2:
        return bz2.BZ2Decompressor()
    import lzma  # lazily: some Python builds lack it, and xz layers are rare

    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)


def _next_member(kind: str, prefix: bytes) -> bool:
    """Whether data after the end of a stream starts another stream of the same kind."""
    if kind == GZIP:
        return prefix.startswith(_GZIP_MAGIC)
    if kind == ZSTD:
        return _is_zstd_frame(prefix)
    if kind == XZ:
        return prefix.startswith(_XZ_MAGIC)
    return prefix.startswith(b"BZh")


class DecompressingReader(io.RawIOBase):
    """A raw binary reader of a layer's uncompressed bytes.

    ``source`` is read to its very end before this reader reports end of file: gzip
    members and zstd frames (skippable ones included) that follow one another are all
    decoded, and bytes after the last stream that start no new one are read and dropped.
    Corrupt or truncated compressed data raises LayerFormatError.
    """

    def __init__(
        self,
        source: Readable,
        media_type: str = "",
        *,
        layer: str = "",
    ) -> None:
        super().__init__()
        self._src = source
        self._layer = layer
        self.expected = expected_compression(media_type)
        self._buf = b""
        self._src_eof = False
        self._trailing = False
        self._done = False
        self.trailing_bytes = 0
        self._fill(SNIFF_BYTES)
        self.compression = sniff(self._buf)
        self._kind = self.compression
        self._dec: Optional[_Decoder] = None if self._kind == NONE else _new_decoder(self._kind)

    def readable(self) -> bool:
        return True

    def _fill(self, n: int) -> None:
        while len(self._buf) < n and not self._src_eof:
            data = self._src.read(_CHUNK)
            if not data:
                self._src_eof = True
            else:
                self._buf += data

    def _take(self) -> bytes:
        if self._buf:
            data, self._buf = self._buf, b""
            return data
        if self._src_eof:
            return b""
        data = self._src.read(_CHUNK)
        if not data:
            self._src_eof = True
        return data

    def drain(self) -> None:
        """Read the source to its end, dropping whatever remains undecoded."""
        self._buf = b""
        while not self._src_eof:
            data = self._src.read(_CHUNK)
            if not data:
                self._src_eof = True
            elif self._trailing:
                self.trailing_bytes += len(data)
        self._done = True

    def _decode(self, dec: _Decoder, data: bytes, n: int) -> bytes:
        try:
            return dec.decompress(data, n)
        except (OSError, EOFError, ValueError, _zstd.ZstdError, zlib.error) as e:
            # bz2 reports corrupt data as OSError, lzma as LZMAError (an Exception).
            raise LayerFormatError(f"corrupt {self._kind} data: {e}", self._layer) from e
        except Exception as e:
            if type(e).__name__ == "LZMAError":
                raise LayerFormatError(f"corrupt {self._kind} data: {e}", self._layer) from e
            raise

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        n = len(b)
        if n == 0:
            return 0
        while True:
            if self._done:
                return 0
            if self._trailing:
                self.drain()
                return 0
            dec = self._dec
            if dec is None:
                data = self._take()
                if not data:
                    self._done = True
                    return 0
                if len(data) > n:
                    self._buf = data[n:]
                    data = data[:n]
                b[: len(data)] = data
                return len(data)
            if dec.eof:
                self._buf = dec.unused_data + self._buf
                self._fill(SNIFF_BYTES)
                if not self._buf:
                    self._done = True
                    return 0
                if _next_member(self._kind, self._buf):
                    self._dec = _new_decoder(self._kind)
                else:
                    # Trailing bytes that start no new stream: read and drop them.
                    self.trailing_bytes += len(self._buf)
                    self._trailing = True
                continue
            # A decoder whose last call filled the output exactly is asked again with no
            # input; only one that wanted input and got none has hit a truncated stream.
            wanted = dec.needs_input
            data = self._take() if wanted else b""
            out = self._decode(dec, data, n)
            if out:
                b[: len(out)] = out
                return len(out)
            if wanted and not data and not dec.eof:
                raise LayerFormatError(f"{self._kind} stream is truncated", self._layer)
