"""Unpacking an image: layers applied in order into a staged tree, moved into place.

One thread fetches, decompresses and parses the layers while the caller's thread applies
them; a bounded queue between the two keeps memory flat and the order fixed (layer N+1
may be downloading while layer N is still being written, never applied before it).

The tree is built in a hidden sibling of the destination and renamed into place only
when every layer has been applied and verified: a failed unpack leaves the destination
as it was (absent, or empty), never a half-applied tree under its name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import stat
import tarfile
import tempfile
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Optional, Union

from .._errors import ConfigurationError
from ._apply import TreeWriter
from ._content import data_fragments
from ._paths import Root, remove_at
from ._source import LayerSource, close_blob
from ._tarstream import LayerStream

log = logging.getLogger("containers_image_proxy.layers")

_QUEUE_ITEMS = 128  # at most ~32 MiB of file data in flight (chunks of _content.CHUNK)


class _Stopped(Exception):
    """The consumer gave up; the producer must stop."""


class _Pipeline:
    """Producer thread: blobs -> tar entries and data chunks -> bounded queue."""

    def __init__(self, sources: Sequence[LayerSource]) -> None:
        self._sources = sources
        self._q: queue.Queue[tuple[str, Any]] = queue.Queue(_QUEUE_ITEMS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="layer-fetch", daemon=True)
        self._pending: Optional[tuple[str, Any]] = None

    # producer side

    def _put(self, kind: str, value: Any = None) -> None:
        while True:
            if self._stop.is_set():
                raise _Stopped()
            try:
                self._q.put((kind, value), timeout=0.1)
                return
            except queue.Full:
                continue

    def _produce(self) -> None:
        try:
            for i, src in enumerate(self._sources):
                blob = src.open()
                failed = True
                try:
                    stream = LayerStream(
                        blob, src.media_type, diff_id=src.diff_id, layer=src.digest
                    )
                    self._put("layer", i)
                    for info, data in stream:
                        self._put("entry", info)
                        if data is not None:
                            # Data regions only: a sparse file's holes cost nothing here.
                            for fragment in data_fragments(info, data, src.digest):
                                self._put("data", fragment)
                        self._put("end", None)
                    stream.finish()
                    failed = False
                finally:
                    close_blob(blob, failed)
                self._put("verified", i)
            self._put("done")
        except _Stopped:
            pass
        except BaseException as e:  # handed to the consumer, which raises it
            with contextlib.suppress(_Stopped):
                self._put("error", e)

    # consumer side

    def _get(self) -> tuple[str, Any]:
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        while True:
            try:
                kind, value = self._q.get(timeout=0.5)
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError("layer producer thread ended unexpectedly") from None
                continue
            if kind == "error":
                raise value
            return kind, value

    def next_fragment(self) -> Optional[tuple[int, bytes]]:
        """The next ``(offset, bytes)`` of the current entry's data (None at its end)."""
        kind, value = self._get()
        if kind == "data":
            fragment: tuple[int, bytes] = value
            return fragment
        self._pending = (kind, value)
        return None

    def run(self, writer: TreeWriter) -> None:
        """Apply every layer with ``writer``; raises the first error of either side."""
        self._thread.start()
        try:
            while True:
                kind, value = self._get()
                if kind == "layer":
                    writer.begin_layer(self._sources[value].digest)
                elif kind == "entry":
                    self._entry(writer, value)
                elif kind == "verified":
                    log.debug("layer %s applied", self._sources[value].digest)
                elif kind == "done":
                    return
                else:
                    raise RuntimeError(f"unexpected pipeline item {kind!r}")
        finally:
            self._stop.set()
            self._thread.join()

    def _entry(self, writer: TreeWriter, info: tarfile.TarInfo) -> None:
        data = _QueueData(self) if info.isreg() else None
        writer.apply(info, data)
        # Whatever the writer did not read (it reads all of a regular file) is skipped.
        while True:
            kind, _ = self._get()
            if kind == "end":
                return
            if kind != "data":
                raise RuntimeError(f"unexpected pipeline item {kind!r}")


class _QueueData:
    """An entry's data as the producer queued it, for TreeWriter.apply."""

    def __init__(self, pipeline: _Pipeline) -> None:
        self._p = pipeline

    def fragments(self) -> Iterator[tuple[int, bytes]]:
        """The entry's data regions, as ``(offset, bytes)`` chunks."""
        while True:
            fragment = self._p.next_fragment()
            if fragment is None:
                return
            yield fragment


def check_dest(dest: Union[str, os.PathLike[str]]) -> tuple[str, bool]:
    """The absolute destination and whether it exists (then as an empty directory).

    Raises ConfigurationError for anything else: a non-empty directory, a file, a
    symlink, or a parent directory that does not exist.
    """
    path = os.path.abspath(os.fspath(dest))
    parent = os.path.dirname(path)
    if path == parent:
        raise ConfigurationError("cannot unpack onto the filesystem root")
    if not os.path.isdir(parent):
        raise ConfigurationError(f"unpack destination's parent {parent!r} is not a directory")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path, False
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigurationError(f"unpack destination {path!r} exists and is not a directory")
    if os.listdir(path):
        raise ConfigurationError(f"unpack destination {path!r} is not empty")
    return path, True


def unpack_layers(
    sources: Sequence[LayerSource],
    dest: Union[str, os.PathLike[str]],
    *,
    rootless: bool = False,
) -> None:
    """Unpack ``sources`` (bottom layer first) into ``dest``; the engine of :func:`unpack`.

    ``dest`` must not exist or be an empty directory. Without ``rootless`` the entries'
    ownership is applied, which needs root; with it, the tree belongs to the caller.
    """
    if not rootless and os.geteuid() != 0:
        raise ConfigurationError(
            "unpacking with the layers' ownership needs root; pass rootless=True"
        )
    path, existed = check_dest(dest)
    parent, name = os.path.split(path)
    root_mode = stat.S_IMODE(os.stat(path).st_mode) if existed else 0o755
    staging = tempfile.mkdtemp(prefix=f".{name}.unpacking-", dir=parent)
    done = False
    try:
        with Root(staging) as root:
            writer = TreeWriter(root, rootless=rootless)
            os.fchmod(root.fd, 0o700)
            _Pipeline(sources).run(writer)
            writer.set_default_root(root_mode)
            writer.finish()
        os.rename(staging, path)  # atomically replaces an empty directory too
        done = True
    finally:
        if not done:
            _discard(staging)


def _discard(staging: str) -> None:
    parent, name = os.path.split(staging)
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            remove_at(fd, name)
        finally:
            os.close(fd)
    except OSError as e:
        log.warning("could not remove the staging directory %s: %s", staging, e)
