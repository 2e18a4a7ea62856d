"""The asyncio pool of proxies: :class:`AsyncProxyPool` (see ``_pool`` for the design)."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, List, Optional, Sequence, Tuple, TypeVar, Union

from . import _catalog as catalog
from ._async import AsyncImageProxy
from ._async_reader import AsyncBlobReader
from ._config import ProxyConfig
from ._errors import ProxyClosedError, ProxyError, unless_already_failing
from ._models import Descriptor, Digest, ImageConfig, ImageIndex, ImageManifest, LayerInfo
from ._operations import OpenedImage
from ._pool import (
    DEFAULT_SIZE,
    _aclose_quietly,
    _Members,
    _PoolFront,
    _raise_collected,
    _usable,
)
from ._reference import ImageReference

T = TypeVar("T")


async def _gather_settled(aws: Sequence[Awaitable[T]]) -> Tuple[List[T], List[BaseException]]:
    """Run every awaitable to its end; successes and failures apart (none is abandoned)."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    ok: List[T] = []
    failed: List[BaseException] = []
    for r in results:
        if isinstance(r, BaseException):
            failed.append(r)
        else:
            ok.append(r)
    return ok, failed


class AsyncProxyPool(_PoolFront[AsyncImageProxy]):
    """The asyncio twin of :class:`ProxyPool`: the methods of :class:`AsyncImageProxy`.

    Example::

        async with AsyncProxyPool(size=8) as pool:
            async def inspect(ref):
                img = await pool.open_image(ref)
                async with img:
                    return await pool.fetch_config(img)
            configs = await asyncio.gather(*(inspect(r) for r in references))
    """

    def __init__(self, config: Optional[ProxyConfig] = None, size: int = DEFAULT_SIZE) -> None:
        self._members: _Members[AsyncImageProxy] = _Members(config, size)
        self._slot_locks: Optional[List[asyncio.Lock]] = None
        self._started = False

    @classmethod
    async def start(
        cls, config: Optional[ProxyConfig] = None, size: int = DEFAULT_SIZE
    ) -> AsyncProxyPool:
        """Start every member (in parallel) and return the pool."""
        self = cls(config, size)
        await self._start()
        return self

    async def _start(self) -> None:
        if self._started:
            raise ProxyError("the pool is already started")
        self._started = True
        # created here, inside the loop: before 3.10 an asyncio.Lock binds to a loop
        self._slot_locks = [asyncio.Lock() for _ in range(self.size)]
        config = self._members.config
        started, failures = await _gather_settled(
            [AsyncImageProxy.start(config) for _ in range(self.size)]
        )
        if failures:
            await _gather_settled([member.close() for member in started])
            raise failures[0]
        for slot, member in enumerate(started):
            self._members.install(slot, member)

    async def __aenter__(self) -> AsyncProxyPool:
        if not self._started:
            await self._start()
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        with unless_already_failing(exc_type):
            await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._members.closed else "open"
        return f"<AsyncProxyPool size={self.size} {state}>"

    async def close(self) -> None:
        """Shut every member down at once; then raise what failed (see ProxyPool.close)."""
        if self._members.closed:
            return
        self._members.closed = True
        members: List[AsyncImageProxy] = self._members.started()
        results = await asyncio.gather(*(m.close() for m in members), return_exceptions=True)
        errors: List[ProxyError] = []
        for r in results:
            if isinstance(r, ProxyError):
                errors.append(r)
            elif isinstance(r, BaseException):
                raise r
        _raise_collected(errors)

    @property
    def members(self) -> Tuple[AsyncImageProxy, ...]:
        """The member proxies now in service, in slot order."""
        return tuple(self._members.started())

    def loads(self) -> List[int]:
        """Opens in flight plus open images, per member in slot order (for monitoring)."""
        return self._members.balancer.loads()

    # --- routing ----------------------------------------------------------------------

    def _any_member(self) -> AsyncImageProxy:
        started: List[AsyncImageProxy] = self._members.started()
        if not started:
            raise ProxyClosedError("the pool is not started" if not self._started else "closed")
        return started[0]

    async def _member(self, slot: int) -> AsyncImageProxy:
        member: Optional[AsyncImageProxy] = self._members.slots[slot]
        if member is not None and _usable(member):
            return member
        if self._slot_locks is None:
            raise ProxyClosedError("the pool is not started")
        async with self._slot_locks[slot]:
            member = self._members.slots[slot]
            if member is not None and _usable(member):
                return member
            self._members.check_open()
            fresh = await AsyncImageProxy.start(self._members.config)
            closed = self._members.closed
            if not closed:
                self._members.install(slot, fresh)
            # as in ProxyPool._member: close whichever of the two is not in service
            await _aclose_quietly(fresh if closed else member)
            self._members.check_open()
            return fresh

    async def _open(
        self, opener: Callable[[AsyncImageProxy], Awaitable[Optional[OpenedImage]]]
    ) -> Optional[OpenedImage]:
        self._members.check_open()
        slot = self._members.balancer.acquire()
        img: Optional[OpenedImage] = None
        try:
            img = await opener(await self._member(slot))
            return img
        finally:
            self._members.balancer.opened(slot, img)

    def _owner(self, img: OpenedImage) -> AsyncImageProxy:
        return self._members.owner(img)

    # --- the methods of AsyncImageProxy -----------------------------------------------

    async def list_tags(self, repository: Union[str, ImageReference]) -> List[str]:
        """:meth:`ImageProxy.list_tags` with the pool's configuration (no member is used)."""
        return await catalog.list_tags_async(self.config, repository)

    async def fetch_index(
        self, reference: Union[str, ImageReference]
    ) -> Optional[Tuple[Digest, ImageIndex]]:
        """:meth:`ImageProxy.fetch_index` with the pool's configuration (no member is used)."""
        return await catalog.fetch_index_async(self.config, reference)

    async def open_image(self, reference: Union[str, ImageReference]) -> OpenedImage:
        """Open an image on the least busy member; it stays bound to that member."""
        img = await self._open(lambda member: member.open_image(reference))
        assert img is not None
        return img

    async def open_image_optional(
        self, reference: Union[str, ImageReference]
    ) -> Optional[OpenedImage]:
        """:meth:`open_image`, or None if the image does not exist."""
        return await self._open(lambda member: member.open_image_optional(reference))

    async def close_image(self, img: OpenedImage) -> None:
        """Release an opened image in the member that opened it."""
        await self._owner(img).close_image(img)

    async def fetch_manifest_raw_oci(self, img: OpenedImage) -> Tuple[Digest, bytes]:
        """See :meth:`AsyncImageProxy.fetch_manifest_raw_oci`."""
        return await self._owner(img).fetch_manifest_raw_oci(img)

    async def fetch_manifest(self, img: OpenedImage) -> Tuple[Digest, ImageManifest]:
        """See :meth:`AsyncImageProxy.fetch_manifest`."""
        return await self._owner(img).fetch_manifest(img)

    async def fetch_config_raw(self, img: OpenedImage) -> bytes:
        """See :meth:`AsyncImageProxy.fetch_config_raw`."""
        return await self._owner(img).fetch_config_raw(img)

    async def fetch_config(self, img: OpenedImage) -> ImageConfig:
        """See :meth:`AsyncImageProxy.fetch_config`."""
        return await self._owner(img).fetch_config(img)

    async def get_layer_info(self, img: OpenedImage) -> List[LayerInfo]:
        """See :meth:`AsyncImageProxy.get_layer_info`."""
        return await self._owner(img).get_layer_info(img)

    async def get_blob(
        self, img: OpenedImage, digest: Union[str, Digest], size: int
    ) -> AsyncBlobReader:
        """See :meth:`AsyncImageProxy.get_blob`."""
        return await self._owner(img).get_blob(img, digest, size)

    async def get_descriptor(
        self, img: OpenedImage, descriptor: Union[Descriptor, LayerInfo]
    ) -> AsyncBlobReader:
        """See :meth:`AsyncImageProxy.get_descriptor`."""
        return await self._owner(img).get_descriptor(img, descriptor)

    async def get_raw_blob(
        self,
        img: OpenedImage,
        digest: Union[str, Digest],
        size: Optional[int] = None,
        *,
        verify: bool = False,
    ) -> AsyncBlobReader:
        """See :meth:`AsyncImageProxy.get_raw_blob`."""
        return await self._owner(img).get_raw_blob(img, digest, size, verify=verify)


__all__ = ["AsyncProxyPool"]
