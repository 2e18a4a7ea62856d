"""Both front ends behind one blocking face, so one test body runs against each.

A test takes the ``front`` fixture (``"sync"`` or ``"async"``, from ``conftest_plugin``) and
opens its proxy with ``open_proxy(front, config)``. On the sync side that is the real
:class:`ImageProxy`. On the asyncio side it is an :class:`AsyncImageProxy` started on an
event loop of its own, and every coroutine method is run to its end on that loop
(``run_until_complete``), so the test reads the same either way; the images and readers it
returns are wrapped just enough for ``with`` and blocking calls. Reads keep the sync
meaning: ``read(n)`` gives ``n`` bytes unless the blob ends first, ``read1(n)`` is one read.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from typing import Any, Callable, Coroutine, Iterator, List, Optional, TypeVar, Union

from containers_image_proxy import (
    AsyncBlobReader,
    AsyncImageProxy,
    ImageProxy,
    OpenedImage,
    ProxyConfig,
)

FRONTS = ("sync", "async")

T = TypeVar("T")


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        # closed with the proxy's "with" block, or when the test drops the proxy
        self._finalizer = weakref.finalize(self, self.loop.close)

    def close(self) -> None:
        self._finalizer()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)


class BlockingImage:
    """An image of the asyncio proxy; ``with`` closes it (with ``async with``, on the loop)."""

    def __init__(self, loop: _Loop, img: OpenedImage) -> None:
        self._loop = loop
        self.img = img

    def __getattr__(self, name: str) -> Any:
        return getattr(self.img, name)

    def __enter__(self) -> BlockingImage:
        self._loop.run(self.img.__aenter__())
        return self

    def __exit__(self, *exc: Any) -> None:
        self._loop.run(self.img.__aexit__(*exc))


class BlockingReader:
    """An :class:`AsyncBlobReader` read from blocking code, with the sync reader's meanings."""

    def __init__(self, loop: _Loop, reader: AsyncBlobReader) -> None:
        self._loop = loop
        self.reader = reader

    def __getattr__(self, name: str) -> Any:  # bytes_read, size, digest, closed ...
        return getattr(self.reader, name)

    def read(self, size: Optional[int] = -1) -> bytes:
        if size is None or size < 0:
            return self._loop.run(self.reader.read())
        parts: List[bytes] = []
        left = size
        while left > 0 and (part := self._loop.run(self.reader.read(left))):
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def read1(self, size: int = -1) -> bytes:
        return self._loop.run(self.reader.read(size))

    def copy_to(self, dest: Any) -> int:
        return self._loop.run(self.reader.copy_to(dest))

    def close(self) -> None:
        self._loop.run(self.reader.close())

    def close_quietly(self) -> None:
        self._loop.run(self.reader.close_quietly())

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                yield self._loop.run(self.reader.__anext__())
            except StopAsyncIteration:
                return

    def __enter__(self) -> BlockingReader:
        self._loop.run(self.reader.__aenter__())
        return self

    def __exit__(self, *exc: Any) -> None:
        self._loop.run(self.reader.__aexit__(*exc))


class BlockingProxy:
    """An :class:`AsyncImageProxy` on a loop of its own, called like an :class:`ImageProxy`."""

    def __init__(self, config: ProxyConfig) -> None:
        self._loop = _Loop()
        try:
            self.proxy = self._loop.run(AsyncImageProxy.start(config))
        except BaseException:
            self._loop.close()
            raise

    def __repr__(self) -> str:
        return repr(self.proxy)

    def _wrap(self, value: Any) -> Any:
        if isinstance(value, OpenedImage):
            return BlockingImage(self._loop, value)
        if isinstance(value, AsyncBlobReader):
            return BlockingReader(self._loop, value)
        return value

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.proxy, name)
        if not inspect.ismethod(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            args = tuple(a.img if isinstance(a, BlockingImage) else a for a in args)
            result = attr(*args, **kwargs)
            # coroutines, and what get_blob returns (awaitable, and an async context manager)
            if inspect.isawaitable(result):
                result = self._loop.run(result)
            return self._wrap(result)

        return call

    def close(self) -> None:
        """Close the proxy (its loop stays, for calls made after, as on a closed proxy)."""
        self._loop.run(self.proxy.close())

    def __enter__(self) -> BlockingProxy:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            self._loop.run(self.proxy.__aexit__(exc_type, *exc))
        finally:
            self._loop.close()


Proxy = Union[ImageProxy, BlockingProxy]


def open_proxy(front: str, config: ProxyConfig) -> Any:
    """A started proxy of ``front`` ("sync" or "async"), used as an ImageProxy is."""
    if front == "sync":
        return ImageProxy(config)
    if front == "async":
        return BlockingProxy(config)
    raise ValueError(f"unknown front end {front!r}")


def proxy_factory(front: str) -> Callable[[ProxyConfig], Any]:
    """``open_proxy`` for one front end, to use where a test constructs several proxies."""
    return lambda config: open_proxy(front, config)
