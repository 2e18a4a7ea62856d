"""The pool of proxies of the asyncio front end, :class:`AsyncProxyPool` (the design is
described in ``_pooling``).

``_async/pool.py`` is the source of ``_sync/pool.py`` (scripts/unasync.py); how members are
started and closed together, and the locks, are in each side's ``_backend``.
"""

from __future__ import annotations

import functools
from typing import List, Optional, Tuple, Union

from .. import _catalog as catalog
from .._config import ProxyConfig
from .._core.session import OpenedImage, start_on_instances
from .._errors import ProxyClosedError, ProxyError, unless_already_failing
from .._models import Descriptor, Digest, ImageConfig, ImageIndex, ImageManifest, LayerInfo
from .._pooling import DEFAULT_SIZE, Members, PoolFront, raise_collected, usable
from .._reference import ImageReference
from . import _backend as backend
from .proxy import AsyncImageProxy
from .reader import AsyncBlobReader

_NOT_STARTED = (
    "the pool is not started: use 'async with pool:' or 'await pool.start()' (or make a "
    "started one with 'await AsyncProxyPool.start(config)'); a ProxyPool starts when "
    "constructed"
)


async def _close_quietly(member: Optional[AsyncImageProxy]) -> None:
    """Close a member taken out of service; its failure was or will be reported elsewhere."""
    if member is not None:
        try:
            await member.close()
        except ProxyError:
            pass


class AsyncProxyPool(PoolFront[AsyncImageProxy]):
    """Several skopeo proxies behind the methods of one :class:`AsyncImageProxy`.

    ``open_image`` goes to the least busy member; every other call on an image goes to
    the member that opened it. Opening images from several tasks (or threads, for the sync
    pool) then overlaps the round trips to the registry that one proxy would make one after
    the other.

    Example::

        async with AsyncProxyPool(size=8) as pool:
            async def inspect(ref):
                async with await pool.open_image(ref) as img:
                    return await pool.fetch_config(img)
            # many tasks (or threads, with the sync pool) calling inspect at once

    All members start at once. A member whose skopeo failed is closed and replaced by a new
    one when an open is next routed to it; calls on images it had opened raise a
    :class:`ProxyError`. ``close()`` shuts every member down, then raises what failed.
    """

    def __init__(self, config: Optional[ProxyConfig] = None, size: int = DEFAULT_SIZE) -> None:
        self._members: Members[AsyncImageProxy] = Members(config, size)
        self._lock = backend.state_lock()
        self._slot_locks: Optional[List[backend.SlotLock]] = None
        self._started = False
        backend.start_in_init(self._start)

    @classmethod
    async def start(
        cls, config: Optional[ProxyConfig] = None, size: int = DEFAULT_SIZE
    ) -> AsyncProxyPool:
        """A started pool: every member started (at once).

        ``pool = await AsyncProxyPool.start(config, size)`` makes one; ``await pool.start()``
        on a pool constructed but not started starts that one (and returns it).
        """
        return await cls(config, size)._started_pool()

    async def _started_pool(self) -> AsyncProxyPool:
        if not self._started:
            await self._start()
        return self

    async def _start(self) -> None:
        if self._started:
            raise ProxyError("the pool is already started")
        self._started = True
        self._slot_locks = [backend.new_slot_lock() for _ in range(self.size)]
        config = self._members.config
        # starting a skopeo is mostly waiting for it to initialise: overlap them
        started, failures = await backend.settle(
            [functools.partial(AsyncImageProxy.start, config) for _ in range(self.size)]
        )
        if failures:
            await backend.settle([functools.partial(_close_quietly, m) for m in started])
            raise failures[0]
        for slot, member in enumerate(started):
            self._members.install(slot, member)

    async def __aenter__(self) -> AsyncProxyPool:
        return await self._started_pool()

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        with unless_already_failing(exc_type):
            await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._members.closed else "open"
        pids = [m._link.process.pid for m in self._members.started() if m._link.process]
        return f"<{type(self).__name__} size={self.size} pids={pids} {state}>"

    async def close(self) -> None:
        """Shut every member down (at once); then raise the error of the one that failed,
        if any. Several failures raise :class:`PoolShutdownError`. Closing twice is harmless.
        """
        with self._lock:
            if self._members.closed:
                return
            self._members.closed = True
            members = self._members.started()
        _, failures = await backend.settle([member.close for member in members])
        errors: List[ProxyError] = []
        for failure in failures:
            if not isinstance(failure, ProxyError):
                raise failure
            errors.append(failure)
        raise_collected(errors)

    @property
    def members(self) -> Tuple[AsyncImageProxy, ...]:
        """The member proxies now in service, in slot order."""
        with self._lock:
            return tuple(self._members.started())

    def loads(self) -> List[int]:
        """Opens in flight plus open images, per member in slot order (for monitoring).
        Never raises."""
        with self._lock:
            return self._members.balancer.loads()

    # --- routing ------------------------------------------------------------------------

    def _any_member(self) -> AsyncImageProxy:
        with self._lock:
            started = self._members.started()
        if not started:
            raise ProxyClosedError(
                _NOT_STARTED if not self._started else "the pool has no running proxy"
            )
        return started[0]

    async def _member(self, slot: int) -> AsyncImageProxy:
        member = self._members.slots[slot]
        if member is not None and usable(member):
            return member
        if self._slot_locks is None:
            raise ProxyClosedError(_NOT_STARTED)
        # one caller replaces a failed member; others wanting the same slot wait for it
        async with self._slot_locks[slot]:
            member = self._members.slots[slot]
            if member is not None and usable(member):
                return member
            self._members.check_open()
            fresh = await AsyncImageProxy.start(self._members.config)
            with self._lock:
                closed = self._members.closed
                if not closed:
                    self._members.install(slot, fresh)
            # the pool was closed while the new member started: it goes; else the old one
            # does (reaping its skopeo now rather than whenever its images are dropped)
            await _close_quietly(fresh if closed else member)
            self._members.check_open()
            return fresh

    async def _open(
        self, reference: Union[str, ImageReference], optional: bool
    ) -> Optional[OpenedImage]:
        with self._lock:
            self._members.check_open()
            slot = self._members.balancer.acquire()
        img: Optional[OpenedImage] = None
        try:
            member = await self._member(slot)
            if optional:
                img = await member.open_image_optional(reference)
            else:
                img = await member.open_image(reference)
            return img
        finally:
            with self._lock:
                self._members.balancer.opened(slot, img)

    def _owner(self, img: OpenedImage) -> AsyncImageProxy:
        return self._members.owner(img)

    # --- the methods of AsyncImageProxy -------------------------------------------------

    async def list_tags(self, repository: Union[str, ImageReference]) -> List[str]:
        """:meth:`AsyncImageProxy.list_tags` with the pool's configuration (no member is
        used); raises what it raises."""
        return await catalog.list_tags_async(self.config, repository)

    async def fetch_index(
        self, reference: Union[str, ImageReference]
    ) -> Optional[Tuple[Digest, ImageIndex]]:
        """:meth:`AsyncImageProxy.fetch_index` with the pool's configuration (no member is
        used); raises what it raises."""
        return await catalog.fetch_index_async(self.config, reference)

    async def open_image(self, reference: Union[str, ImageReference]) -> OpenedImage:
        """Open an image on the least busy member; it stays bound to that member.

        A member whose skopeo failed is replaced first. Raises what
        :meth:`AsyncImageProxy.open_image` raises (:class:`ImageNotFoundError`,
        :class:`RequestError` ...), and :class:`PoolShutdownError` after :meth:`close`.
        """
        img = await self._open(reference, optional=False)
        assert img is not None
        return img

    async def open_image_optional(
        self, reference: Union[str, ImageReference]
    ) -> Optional[OpenedImage]:
        """:meth:`open_image`, or None where it would raise :class:`ImageNotFoundError`;
        other failures raise as :meth:`open_image` does."""
        return await self._open(reference, optional=True)

    async def close_image(self, img: OpenedImage) -> None:
        """Release an opened image in the member that opened it. Closing twice is harmless;
        raises :class:`ProxyError` only for an image of another proxy or pool."""
        await self._owner(img).close_image(img)

    async def fetch_manifest_raw_oci(self, img: OpenedImage) -> Tuple[Digest, bytes]:
        """:meth:`AsyncImageProxy.fetch_manifest_raw_oci`,
        on the member that opened the image: raises what it raises, and :class:`ProxyError`
        when that member's skopeo has failed (the image is lost with it)."""
        return await self._owner(img).fetch_manifest_raw_oci(img)

    async def fetch_manifest(self, img: OpenedImage) -> Tuple[Digest, ImageManifest]:
        """:meth:`AsyncImageProxy.fetch_manifest`,
        on the member that opened the image: raises what it raises, and :class:`ProxyError`
        when that member's skopeo has failed (the image is lost with it)."""
        return await self._owner(img).fetch_manifest(img)

    async def fetch_config_raw(self, img: OpenedImage) -> bytes:
        """:meth:`AsyncImageProxy.fetch_config_raw`,
        on the member that opened the image: raises what it raises, and :class:`ProxyError`
        when that member's skopeo has failed (the image is lost with it)."""
        return await self._owner(img).fetch_config_raw(img)

    async def fetch_config(self, img: OpenedImage) -> ImageConfig:
        """:meth:`AsyncImageProxy.fetch_config`,
        on the member that opened the image: raises what it raises, and :class:`ProxyError`
        when that member's skopeo has failed (the image is lost with it)."""
        return await self._owner(img).fetch_config(img)

    async def get_layer_info(self, img: OpenedImage) -> List[LayerInfo]:
        """:meth:`AsyncImageProxy.get_layer_info`,
        on the member that opened the image: raises what it raises, and :class:`ProxyError`
        when that member's skopeo has failed (the image is lost with it)."""
        return await self._owner(img).get_layer_info(img)

    def get_blob(
        self, img: OpenedImage, digest: Union[str, Digest], size: Optional[int] = None
    ) -> backend.Opening[AsyncBlobReader]:
        """:meth:`AsyncImageProxy.get_blob` (``async with`` or ``await``),
        on the member that opened the image: raises what it raises, and :class:`ProxyError`
        when that member's skopeo has failed (the image is lost with it)."""
        return backend.opening(self._get_blob(img, digest, size))

    async def _get_blob(
        self, img: OpenedImage, digest: Union[str, Digest], size: Optional[int]
    ) -> AsyncBlobReader:
        return await self._owner(img).get_blob(img, digest, size)

    def get_descriptor(
        self, img: OpenedImage, descriptor: Union[Descriptor, LayerInfo]
    ) -> backend.Opening[AsyncBlobReader]:
        """:meth:`AsyncImageProxy.get_descriptor` (``async with`` or ``await``),
        on the member that opened the image: raises what it raises, and :class:`ProxyError`
        when that member's skopeo has failed (the image is lost with it)."""
        return backend.opening(self._get_blob(img, descriptor.digest, descriptor.size))

    def get_raw_blob(
        self,
        img: OpenedImage,
        digest: Union[str, Digest],
        size: Optional[int] = None,
        *,
        verify: bool = False,
    ) -> backend.Opening[AsyncBlobReader]:
        """:meth:`AsyncImageProxy.get_raw_blob` (``async with`` or ``await``),
        on the member that opened the image: raises what it raises, and :class:`ProxyError`
        when that member's skopeo has failed (the image is lost with it)."""
        return backend.opening(self._get_raw_blob(img, digest, size, verify))

    async def _get_raw_blob(
        self, img: OpenedImage, digest: Union[str, Digest], size: Optional[int], verify: bool
    ) -> AsyncBlobReader:
        return await self._owner(img).get_raw_blob(img, digest, size, verify=verify)


start_on_instances(AsyncProxyPool, "_started_pool")
