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


def _pair(config: _Config, infos: Sequence[_LayerInfo]) -> list[tuple[_LayerInfo, str]]:
    diff_ids = list(config.rootfs.diff_ids)
    if len(diff_ids) != len(infos):
        raise LayerFormatError(
            f"the image has {len(infos)} layers but its config lists {len(diff_ids)} diff_ids"
        )
    return list(zip(infos, diff_ids))


def sync_sources(proxy: SyncProxy, image: Any) -> list[LayerSource]:
    """The image's layers, bottom first, read through ``proxy``."""
    pairs = _pair(proxy.fetch_config(image), proxy.get_layer_info(image))

    def opener(info: _LayerInfo) -> Callable[[], Blob]:
        return lambda: proxy.get_blob(image, info.digest, info.size)

    return [
        LayerSource(str(info.digest), info.media_type, str(diff_id), opener(info))
        for info, diff_id in pairs
    ]


async def async_sources(proxy: AsyncProxy, image: Any, bridge: Bridge) -> list[LayerSource]:
    """The image's layers, bottom first, read through an async proxy via ``bridge``."""
    pairs = _pair(await proxy.fetch_config(image), await proxy.get_layer_info(image))

    def opener(info: _LayerInfo) -> Callable[[], Blob]:
        return lambda: BridgedBlob(
            bridge, bridge.call(aopen_reader(proxy.get_blob(image, info.digest, info.size)))
        )

    return [
        LayerSource(str(info.digest), info.media_type, str(diff_id), opener(info))
        for info, diff_id in pairs
    ]
