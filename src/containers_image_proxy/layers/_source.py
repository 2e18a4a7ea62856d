"""Where layer blobs come from: plain file objects for the engine, the proxy for callers.

The engine only sees :class:`LayerSource` values, each able to open its blob as a binary
reader; the functions here build them from an image proxy (sync or async) with the
fewest calls: the config (for the diff_ids) and the layer list, then one blob at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, TypeVar

from .._bridge import Bridge, BridgedBlob, aopen_reader, run_in_worker
from .._progress import Meter, ProgressCallback
from ._compression import check_filesystem_layer
from ._errors import LayerFormatError

__all__ = ["Bridge", "LayerSource", "async_sources", "run_in_worker", "sync_sources"]

T = TypeVar("T")


class Blob(Protocol):
    """A blob being read: ``read(n)`` (b"" at the end) and ``close()``."""

    def read(self, size: int = ..., /) -> bytes: ...

    def close(self) -> None: ...


def close_blob(blob: Blob, failed: bool) -> None:
    """Close a blob reader; after a failure, quietly (no verification error over ours)."""
    if failed:
        quiet = getattr(blob, "close_quietly", None)
        try:
            (quiet or blob.close)()
        except Exception:  # the first error is the one to report
            pass
    else:
        blob.close()


@dataclass(frozen=True)
class LayerSource:
    """One layer for the engine: how to open its blob and what to expect of it.

    ``digest`` names the (compressed) blob in errors; ``diff_id`` is the uncompressed
    digest from the config's rootfs.diff_ids (None: not checked); ``open`` returns a new
    reader of the blob each time it is called.
    """

    digest: str
    media_type: str
    diff_id: Optional[str]
    open: Callable[[], Blob]


class MeteredBlob:
    """A layer blob whose reads are reported to a :class:`Meter` (compressed bytes).

    The last report (``done == total``) is made by :meth:`close`, once the blob's own
    verification passed; a blob closed after a failure reports nothing more.
    """

    def __init__(self, blob: Blob, meter: Meter) -> None:
        self._blob = blob
        self._meter = meter
        meter.start()

    def read(self, size: int = -1, /) -> bytes:
        data = self._blob.read(size)
        if data:
            self._meter.advance(len(data))
        return data

    def close(self) -> None:
        self._blob.close()
        self._meter.finish()

    def close_quietly(self) -> None:
        close_blob(self._blob, failed=True)


def _metered(
    open_blob: Callable[[], Blob], info: _LayerInfo, progress: Optional[ProgressCallback]
) -> Callable[[], Blob]:
    if progress is None:
        return open_blob
    return lambda: MeteredBlob(open_blob(), Meter(progress, str(info.digest), info.size))


class _LayerInfo(Protocol):
    @property
    def digest(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def media_type(self) -> str: ...


class _RootFS(Protocol):
    @property
    def diff_ids(self) -> Sequence[str]: ...


class _Config(Protocol):
    @property
    def rootfs(self) -> _RootFS: ...


class SyncProxy(Protocol):
    """What the layer functions need of an ImageProxy."""

    def fetch_config(self, image: Any, /) -> _Config: ...

    def get_layer_info(self, image: Any, /) -> Sequence[_LayerInfo]: ...

    def get_blob(self, image: Any, digest: Any, size: int, /) -> Blob: ...


class AsyncProxy(Protocol):
    """What the async layer functions need of an AsyncImageProxy."""

    async def fetch_config(self, image: Any, /) -> _Config: ...

    async def get_layer_info(self, image: Any, /) -> Sequence[_LayerInfo]: ...

    async def get_blob(self, image: Any, digest: Any, size: int, /) -> Any: ...


def _check_layers(infos: Sequence[_LayerInfo]) -> Sequence[_LayerInfo]:
    """``infos``, once every layer is known to be a tar layer (before any is fetched, and
    before the config, which an artifact may not have as an image config)."""
    for info in infos:
        check_filesystem_layer(info.media_type, str(info.digest))
    return infos


def _pair(infos: Sequence[_LayerInfo], config: _Config) -> list[tuple[_LayerInfo, str]]:
    diff_ids = list(config.rootfs.diff_ids)
    if len(diff_ids) != len(infos):
        raise LayerFormatError(
            f"the image has {len(infos)} layers but its config lists {len(diff_ids)} diff_ids"
        )
    return list(zip(infos, diff_ids))


def sync_sources(
    proxy: SyncProxy, image: Any, progress: Optional[ProgressCallback] = None
) -> list[LayerSource]:
    """The image's layers, bottom first, read through ``proxy``.

    With ``progress``, each blob's reads are reported to it (one transfer per layer).
    """
    infos = _check_layers(proxy.get_layer_info(image))
    pairs = _pair(infos, proxy.fetch_config(image))

    def opener(info: _LayerInfo) -> Callable[[], Blob]:
        return _metered(lambda: proxy.get_blob(image, info.digest, info.size), info, progress)

    return [
        LayerSource(str(info.digest), info.media_type, str(diff_id), opener(info))
        for info, diff_id in pairs
    ]


async def async_sources(
    proxy: AsyncProxy,
    image: Any,
    bridge: Bridge,
    progress: Optional[ProgressCallback] = None,
) -> list[LayerSource]:
    """The image's layers, bottom first, read through an async proxy via ``bridge``.

    ``progress`` is called from the thread reading the blobs (the caller puts it on its
    loop).
    """
    infos = _check_layers(await proxy.get_layer_info(image))
    pairs = _pair(infos, await proxy.fetch_config(image))

    def opener(info: _LayerInfo) -> Callable[[], Blob]:
        return _metered(
            lambda: BridgedBlob(
                bridge, bridge.call(aopen_reader(proxy.get_blob(image, info.digest, info.size)))
            ),
            info,
            progress,
        )

    return [
        LayerSource(str(info.digest), info.media_type, str(diff_id), opener(info))
        for info, diff_id in pairs
    ]
