"""Running the sync engines (layers, pull) in a worker thread over an asyncio proxy.

The worker calls a sync facade; each call runs as a coroutine on the caller's event loop
and the worker waits for it. Cancelling the caller's task stops the worker at its next
call and waits for its cleanup, so nothing is left half-done behind a cancelled task.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import threading
from collections.abc import Awaitable
from typing import Any, Callable, TypeVar

T = TypeVar("T")


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


class BridgedBlob:
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


async def aopen_reader(opening: Awaitable[Any]) -> Any:
    """Await a reader (``get_blob``/``get_descriptor``) and enter it if it is a context."""
    reader = await opening
    enter = getattr(reader, "__aenter__", None)
    if enter is not None:
        entered = await enter()
        if entered is not None:
            reader = entered
    return reader


class BridgedProxy:
    """The sync face of an AsyncImageProxy or AsyncProxyPool, for a worker thread."""

    def __init__(self, bridge: Bridge, proxy: Any) -> None:
        self._bridge = bridge
        self._proxy = proxy
        self.size: int = getattr(proxy, "size", 1)

    def _call(self, method: str, *args: Any) -> Any:
        return self._bridge.call(getattr(self._proxy, method)(*args))

    def open_image(self, reference: Any) -> Any:
        """``open_image`` on the loop."""
        return self._call("open_image", reference)

    def close_image(self, image: Any) -> None:
        """``close_image`` on the loop; once the caller was cancelled, started without
        waiting (the image must still be released in the proxy)."""
        closing = self._proxy.close_image(image)
        if self._bridge.cancelled.is_set():
            self._bridge.fire(closing)
        else:
            self._bridge.call(closing)

    def fetch_manifest_raw_oci(self, image: Any) -> Any:
        """``fetch_manifest_raw_oci`` on the loop."""
        return self._call("fetch_manifest_raw_oci", image)

    def fetch_config(self, image: Any) -> Any:
        """``fetch_config`` on the loop."""
        return self._call("fetch_config", image)

    def fetch_config_raw(self, image: Any) -> Any:
        """``fetch_config_raw`` on the loop."""
        return self._call("fetch_config_raw", image)

    @property
    def config(self) -> Any:
        """The proxy's configuration (skopeo commands run once use it)."""
        return self._proxy.config

    def get_descriptor(self, image: Any, descriptor: Any) -> BridgedBlob:
        """A sync reader of the blob, each read waiting on the loop."""
        opening = self._proxy.get_descriptor(image, descriptor)
        return BridgedBlob(self._bridge, self._bridge.call(aopen_reader(opening)))


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
