"""Both front ends behind one asyncio face, so one test body runs against each.

``front`` (a fixture of ``conftest_plugin``) is ``"sync"`` or ``"async"``; ``open_proxy(front,
config)`` gives an async context manager yielding a proxy whose methods are awaited either
way. The sync side is the real :class:`ImageProxy` called directly (blocking the loop, which
only runs the test): its objects are wrapped just enough to be awaited. Only what both front
ends mean the same way is offered: ``read()`` of everything, ``read1(n)`` (one read of the
pipe: the asyncio ``read(n)``), iteration, ``copy_to``, ``close``, ``bytes_read``.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Optional, Union

from containers_image_proxy import (
    AsyncBlobReader,
    AsyncImageProxy,
    BlobReader,
    ImageProxy,
    OpenedImage,
    ProxyConfig,
)

FRONTS = ("sync", "async")


class Image:
    """An opened image of either front end; ``async with`` closes it."""

    def __init__(self, img: OpenedImage, is_async: bool) -> None:
        self.img = img
        self._async = is_async

    async def __aenter__(self) -> Image:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._async:
            await self.img.__aexit__(*exc)
        else:
            self.img.__exit__(*exc)


class Blob:
    """A blob reader of either front end, awaited the same way."""

    def __init__(self, reader: Union[BlobReader, AsyncBlobReader]) -> None:
        self.reader = reader

    @property
    def bytes_read(self) -> int:
        return self.reader.bytes_read

    async def read(self) -> bytes:
        """Everything left."""
        if isinstance(self.reader, AsyncBlobReader):
            return await self.reader.read()
        return self.reader.read()

    async def read1(self, size: int) -> bytes:
        """One read of at most ``size`` bytes."""
        if isinstance(self.reader, AsyncBlobReader):
            return await self.reader.read(size)
        return self.reader.read1(size)

    async def read_exactly(self, size: int) -> bytes:
        """``size`` bytes (fewer only at the end), without reading past them."""
        parts = []
        while size > 0 and (part := await self.read1(size)):
            parts.append(part)
            size -= len(part)
        return b"".join(parts)

    async def copy_to(self, dest: Any) -> int:
        if isinstance(self.reader, AsyncBlobReader):
            return await self.reader.copy_to(dest)
        return self.reader.copy_to(dest)

    async def close(self) -> None:
        if isinstance(self.reader, AsyncBlobReader):
            await self.reader.close()
        else:
            self.reader.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        """``for chunk in blob`` / ``async for chunk in blob``."""
        if isinstance(self.reader, AsyncBlobReader):
            async for chunk in self.reader:
                yield chunk
        else:
            for chunk in self.reader:
                yield chunk

    async def __aenter__(self) -> Blob:
        if isinstance(self.reader, AsyncBlobReader):
            await self.reader.__aenter__()
        else:
            self.reader.__enter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if isinstance(self.reader, AsyncBlobReader):
            await self.reader.__aexit__(*exc)
        else:
            self.reader.__exit__(*exc)


class Proxy:
    """An :class:`ImageProxy` or :class:`AsyncImageProxy`, awaited the same way."""

    def __init__(self, proxy: Union[ImageProxy, AsyncImageProxy]) -> None:
        self.proxy = proxy

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.proxy, name)(*args, **kwargs)
        if isinstance(self.proxy, AsyncImageProxy):
            result = await result
        return result

    @property
    def protocol_version(self) -> str:
        return self.proxy.protocol_version

    async def open_image(self, ref: str) -> Image:
        return Image(await self._call("open_image", ref), isinstance(self.proxy, AsyncImageProxy))

    async def open_image_optional(self, ref: str) -> Optional[Image]:
        img = await self._call("open_image_optional", ref)
        return None if img is None else Image(img, isinstance(self.proxy, AsyncImageProxy))

    async def fetch_manifest(self, image: Image) -> Any:
        return await self._call("fetch_manifest", image.img)

    async def fetch_config(self, image: Image) -> Any:
        return await self._call("fetch_config", image.img)

    async def get_layer_info(self, image: Image) -> Any:
        return await self._call("get_layer_info", image.img)

    async def get_blob(self, image: Image, digest: str, size: int) -> Blob:
        return Blob(await self._call("get_blob", image.img, digest, size))

    async def get_raw_blob(self, image: Image, *args: Any, **kwargs: Any) -> Blob:
        return Blob(await self._call("get_raw_blob", image.img, *args, **kwargs))

    async def close(self) -> None:
        await self._call("close")


class open_proxy:
    """Start a proxy of ``front`` ("sync" or "async") for ``async with``."""

    def __init__(self, front: str, config: ProxyConfig) -> None:
        if front not in FRONTS:
            raise ValueError(f"unknown front end {front!r}")
        self._front = front
        self._config = config
        self._proxy: Optional[Proxy] = None

    async def __aenter__(self) -> Proxy:
        if self._front == "async":
            self._proxy = Proxy(await AsyncImageProxy.start(self._config))
        else:
            self._proxy = Proxy(ImageProxy(self._config))
        return self._proxy

    async def __aexit__(self, *exc: object) -> None:
        assert self._proxy is not None
        await self._proxy.close()
