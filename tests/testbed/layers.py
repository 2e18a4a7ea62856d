"""Helpers for the layer tests: hand-made tar layers, blobs, sources and tree snapshots.

Imported by the other ``test_layers_*`` modules; it holds a few checks of its own so that
the helpers the rest relies on are known to build what they claim.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from containers_image_proxy.layers import LayerSource

try:
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    from backports import zstd  # type: ignore[no-redef,unused-ignore]

OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

MTIME = 1_600_000_000


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class E:
    """One tar entry to write."""

    name: str
    kind: str = "file"  # file dir symlink link fifo chr blk
    data: bytes = b""
    mode: Optional[int] = None
    uid: int = 0
    gid: int = 0
    mtime: float = MTIME
    linkname: str = ""
    pax: dict[str, str] = field(default_factory=dict)
    devmajor: int = 0
    devminor: int = 0
    uname: str = ""
    gname: str = ""


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "link": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
}


def f(name: str, data: bytes = b"", **kw: Any) -> E:
    return E(name, "file", data, **kw)


def d(name: str, **kw: Any) -> E:
    return E(name, "dir", **kw)


def sym(name: str, target: str, **kw: Any) -> E:
    return E(name, "symlink", linkname=target, **kw)


def hl(name: str, target: str, **kw: Any) -> E:
    return E(name, "link", linkname=target, **kw)


def wh(name: str) -> E:
    """A whiteout entry (a plain empty file named .wh.NAME)."""
    return E(name, "file")


def make_tar(entries: Iterable[E], fmt: int = tarfile.PAX_FORMAT, trailing: bytes = b"") -> bytes:
    """A tar stream of ``entries`` (names written verbatim, hostile ones included)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8") as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = _TYPES[e.kind]
            default_mode = 0o755 if e.kind == "dir" else 0o644
            info.mode = default_mode if e.mode is None else e.mode
            info.uid, info.gid = e.uid, e.gid
            info.uname, info.gname = e.uname, e.gname
            info.mtime = e.mtime
            info.linkname = e.linkname
            info.devmajor, info.devminor = e.devmajor, e.devminor
            if e.pax:
                info.pax_headers = dict(e.pax)
            if e.kind == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue() + trailing


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zst(data: bytes) -> bytes:
    return bytes(zstd.compress(data))


def zstd_skippable(payload: bytes, magic_low: int = 0) -> bytes:
    return (
        (0x184D2A50 + magic_low).to_bytes(4, "little")
        + len(payload).to_bytes(4, "little")
        + (payload)
    )


class TrackingReader(io.BytesIO):
    """A blob reader that remembers whether it was read to its end and closed."""

    def __init__(self, data: bytes, log: list[TrackingReader]) -> None:
        super().__init__(data)
        self.size = len(data)
        self.reached_eof = False
        self.was_closed = False
        log.append(self)

    def read(self, size: Optional[int] = -1, /) -> bytes:
        data = super().read(size)
        if not data or self.tell() >= self.size:
            self.reached_eof = True
        return data

    def close(self) -> None:
        self.was_closed = True
        super().close()


@dataclass
class Blob:
    """A layer blob as stored: bytes, media type and the tar's diff_id."""

    data: bytes
    media_type: str
    diff_id: str

    @property
    def digest(self) -> str:
        return sha256(self.data)


def blob(
    entries: Iterable[E],
    compression: str = "gzip",
    media_type: Optional[str] = None,
    trailing: bytes = b"",
) -> Blob:
    """A layer blob: tar of ``entries``, compressed, with ``trailing`` bytes after it."""
    tar = make_tar(entries)
    if compression == "gzip":
        data, mt = gz(tar), OCI_GZIP
    elif compression == "zstd":
        data, mt = zst(tar), OCI_ZSTD
    else:
        data, mt = tar, OCI_TAR
    return Blob(data + trailing, media_type or mt, sha256(tar))


class Image:
    """Layers (bottom first) as engine sources, counting opens and checking drains."""

    def __init__(self, layers: Sequence[Blob]) -> None:
        self.layers = list(layers)
        self.readers: list[TrackingReader] = []
        self.opened: list[int] = []

    def _opener(self, i: int) -> Callable[[], TrackingReader]:
        def open_() -> TrackingReader:
            self.opened.append(i)
            return TrackingReader(self.layers[i].data, self.readers)

        return open_

    @property
    def sources(self) -> list[LayerSource]:
        return [
            LayerSource(b.digest, b.media_type, b.diff_id, self._opener(i))
            for i, b in enumerate(self.layers)
        ]

    def all_drained(self) -> bool:
        return all(r.reached_eof and r.was_closed for r in self.readers)


def image(*layers: Iterable[E], compression: str = "gzip") -> Image:
    return Image([blob(entries, compression) for entries in layers])


def snapshot(root: str, *, owners: bool = True, times: bool = True) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` (not the root): type, mode, content or target, ..."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                item: tuple[Any, ...] = ("symlink", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                item = ("dir", oct(mode))
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as fh:
                    item = ("file", oct(mode), hashlib.sha256(fh.read()).hexdigest()[:12])
            else:
                item = ("other", oct(mode), stat.S_IFMT(st.st_mode))
            if owners:
                item += (st.st_uid, st.st_gid)
            if times and not stat.S_ISDIR(st.st_mode):
                item += (st.st_mtime_ns,)
            out[rel] = item
    return out


def read(root: str, rel: str) -> bytes:
    with open(os.path.join(root, rel), "rb") as fh:
        return fh.read()


# --- checks of the helpers themselves -----------------------------------------------------


def test_make_tar_keeps_hostile_names_verbatim() -> None:
    tar = make_tar([f("../escape", b"x"), f("/abs", b"y"), sym("s", "/")])
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        assert t.getnames() == ["../escape", "/abs", "s"]


def test_tracking_reader_notices_the_end() -> None:
    log: list[TrackingReader] = []
    r = TrackingReader(b"abc", log)
    assert r.read(2) == b"ab" and not r.reached_eof
    assert r.read(5) == b"c" and r.reached_eof
