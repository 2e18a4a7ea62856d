"""Where layer blobs come from: plain file objects for the engine, the proxy for callers.

The engine only sees :class:`LayerSource` values, each able to open its blob as a binary
reader; the functions here build them from an image proxy (sync or async) with the
fewest calls: the config (for the diff_ids) and the layer list, then one blob at a time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import threading
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, TypeVar

from ._errors import LayerFormatError

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


class _Cancelled(Exception):
    """The coroutine driving a worker thread was cancelled."""


class Bridge:
    """Lets the sync engine, in a worker thread, await coroutines on the caller's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.cancelled = threading.Event()

    def call(self, coro: Awaitable[T]) -> T:
        """Run ``coro`` on the loop and wait for it (from a worker thread)."""
        if self.cancelled.is_set():
            _close_coro(coro)
            raise _Cancelled()
        fut = asyncio.run_coroutine_threadsafe(_as_coro(coro), self.loop)
        while True:
            try:
                return fut.result(timeout=0.2)
            except concurrent.futures.TimeoutError:
                if self.cancelled.is_set():
                    fut.cancel()
                    raise _Cancelled() from None

    def fire(self, coro: Awaitable[Any]) -> None:
        """Start ``coro`` on the loop without waiting for it."""
        if self.loop.is_closed():
            _close_coro(coro)
            return
        asyncio.run_coroutine_threadsafe(_as_coro(coro), self.loop)


async def _as_coro(aw: Awaitable[T]) -> T:
    return await aw


def _close_coro(aw: Awaitable[Any]) -> None:
    close = getattr(aw, "close", None)
    if close is not None:
        close()


class _BridgedBlob:
    """A sync blob reader over an async one; each read waits on the caller's loop."""

    def __init__(self, bridge: Bridge, reader: Any) -> None:
        self._bridge = bridge
        self._reader = reader
        self._closed = False

    def read(self, size: int = -1, /) -> bytes:
        n = size if size is not None and size > 0 else 256 * 1024
        data: bytes = self._bridge.call(self._reader.read(n))
        return data

    def close(self) -> None:
        self._close(quietly=False)

    def close_quietly(self) -> None:
        self._close(quietly=True)

    def _close(self, quietly: bool) -> None:
        if self._closed:
            return
        self._closed = True
        closing = _aclose(self._reader, quietly)
        if self._bridge.cancelled.is_set() or quietly:
            self._bridge.fire(closing)
        else:
            self._bridge.call(closing)


async def _aclose(reader: Any, quietly: bool = False) -> None:
    quiet = getattr(reader, "close_quietly", None) if quietly else None
    if quiet is not None:
        result = quiet()
        if inspect.isawaitable(result):
            await result
        return
    exit_ = getattr(reader, "__aexit__", None)
    if exit_ is not None:
        await exit_(None, None, None)
        return
    close = getattr(reader, "aclose", None) or getattr(reader, "close", None)
    if close is not None:
        result = close()
        if inspect.isawaitable(result):
            await result


async def _aopen(proxy: AsyncProxy, image: Any, info: _LayerInfo) -> Any:
    reader = await proxy.get_blob(image, info.digest, info.size)
    enter = getattr(reader, "__aenter__", None)
    if enter is not None:
        entered = await enter()
        if entered is not None:
            reader = entered
    return reader


async def async_sources(proxy: AsyncProxy, image: Any, bridge: Bridge) -> list[LayerSource]:
    """The image's layers, bottom first, read through an async proxy via ``bridge``."""
    pairs = _pair(await proxy.fetch_config(image), await proxy.get_layer_info(image))

    def opener(info: _LayerInfo) -> Callable[[], Blob]:
        return lambda: _BridgedBlob(bridge, bridge.call(_aopen(proxy, image, info)))

    return [
        LayerSource(str(info.digest), info.media_type, str(diff_id), opener(info))
        for info, diff_id in pairs
    ]


async def run_in_worker(bridge: Bridge, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread; if the caller is cancelled, stop it and wait for its cleanup."""
    fut = bridge.loop.run_in_executor(None, fn)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        bridge.cancelled.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.shield(fut)
        raise
