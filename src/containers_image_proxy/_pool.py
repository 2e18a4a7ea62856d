"""Pools of proxies: :class:`ProxyPool` here, :class:`AsyncProxyPool` in ``_async_pool``.

One skopeo answers one request at a time, so opening many images is bound by the round
trips each open costs against the registry, and one proxy cannot overlap them. A pool runs
N skopeo processes and spreads ``open_image`` over them; every later call on an image goes
to the proxy that opened it (``img._owner``), because image ids are per process: image 1 of
one member is not image 1 of another. The pools are dispatchers: all protocol logic stays
in the proxies.

Which member opens the next image is decided by :class:`PoolBalancer`, without I/O or
locking, so the thread-safe pool and the asyncio pool share it.
"""

from __future__ import annotations

import concurrent.futures
import threading
import weakref
from typing import (
    Callable,
    Generic,
    List,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    cast,
)

from . import _catalog as catalog
from ._async import AsyncImageProxy
from ._config import ProxyConfig
from ._errors import ConfigurationError, ProxyClosedError, ProxyError, unless_already_failing
from ._models import Descriptor, Digest, ImageConfig, ImageIndex, ImageManifest, LayerInfo
from ._operations import OpenedImage
from ._protocol import Feature
from ._reference import ImageReference
from ._sync import ImageProxy
from ._sync_reader import BlobReader
from ._transport import peer_closed

DEFAULT_SIZE = 4

Member = Union[ImageProxy, AsyncImageProxy]
P = TypeVar("P", ImageProxy, AsyncImageProxy)


class PoolShutdownError(ProxyError):
    """Several members of a pool failed to shut down cleanly; ``errors`` holds each error.

    When only one member fails, :meth:`ProxyPool.close` raises that member's own error.
    """

    def __init__(self, errors: Sequence[ProxyError]) -> None:
        self.errors: Tuple[ProxyError, ...] = tuple(errors)
        listed = "; ".join(str(e) for e in self.errors)
        super().__init__(f"{len(self.errors)} proxies of the pool failed to shut down: {listed}")


def _check_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigurationError(f"pool size must be a positive integer, got {size!r:.40}")
    return size


class PoolBalancer:
    """Chooses the member that opens the next image: the least busy one. No I/O, no locks.

    A member's load is the number of opens in flight on it plus the images it opened that
    are still open. Images are usually closed on their own (``with img:`` calls the member
    directly, not the pool), so closed images are noticed here lazily, by their ``closed``
    flag, instead of being reported. Ties go round-robin, so that sequential use still
    spreads over every member.

    Callers serialise access (a lock in the thread-safe pool; the event loop in asyncio).
    """

    def __init__(self, size: int) -> None:
        self.size = _check_size(size)
        self._opening = [0] * self.size
        self._images: List[List[OpenedImage]] = [[] for _ in range(self.size)]
        self._next = 0

    def load(self, slot: int) -> int:
        """Opens in flight plus open images of the member in ``slot``."""
        images = self._images[slot]
        if any(img.closed for img in images):
            images[:] = [img for img in images if not img.closed]
        return self._opening[slot] + len(images)

    def loads(self) -> List[int]:
        """The load of every member, in slot order."""
        return [self.load(slot) for slot in range(self.size)]

    def acquire(self) -> int:
        """Pick the slot for an open about to start, and count the open as in flight."""
        order = [(self._next + i) % self.size for i in range(self.size)]
        slot = min(order, key=self.load)  # min keeps the first of equals: round-robin
        self._opening[slot] += 1
        self._next = (slot + 1) % self.size
        return slot

    def opened(self, slot: int, img: Optional[OpenedImage]) -> None:
        """The open counted by :meth:`acquire` ended: with an image, or None (failed, absent)."""
        self._opening[slot] -= 1
        if img is not None and not img.closed:
            self._images[slot].append(img)

    def replaced(self, slot: int) -> None:
        """The member in ``slot`` was replaced: the images of the old one no longer count."""
        self._images[slot].clear()


def _usable(member: Member) -> bool:
    """Whether a member can still serve: not closed or torn down, and skopeo still there.

    A pool notices a failed member here, before routing an open to it, and replaces it.
    The front ends' package-internal state is read on purpose: nothing public says it.
    The socket check also catches a skopeo that died while its proxy was idle, which the
    proxy itself learns only at its next request (and would report to that caller).
    """
    process = member._process
    if member._closed or process is None or process.sock.fileno() < 0:
        return False
    return not peer_closed(process.sock)


class _Members(Generic[P]):
    """The members of a pool and which proxies belong to it; shared by both pools."""

    def __init__(self, config: Optional[ProxyConfig], size: int) -> None:
        self.config = config if config is not None else ProxyConfig()
        self.balancer = PoolBalancer(size)
        self.slots: List[Optional[P]] = [None] * self.balancer.size
        # Every proxy this pool ever started, replaced ones included: their images may still
        # be in use and must keep being routed to them (to fail with their own error).
        self.known: weakref.WeakSet[P] = weakref.WeakSet()
        self.closed = False

    def install(self, slot: int, member: P) -> None:
        if self.slots[slot] is not None:
            self.balancer.replaced(slot)
        self.slots[slot] = member
        self.known.add(member)

    def owner(self, img: OpenedImage) -> P:
        if not isinstance(img, OpenedImage):
            raise ConfigurationError(f"expected an OpenedImage, got {type(img).__name__}")
        owner = img._owner
        if owner not in self.known:
            raise ConfigurationError(f"{img!r} was not opened by this pool")
        return cast(P, owner)

    def started(self) -> List[P]:
        return [m for m in self.slots if m is not None]

    def check_open(self) -> None:
        if self.closed:
            raise ProxyClosedError("the pool is closed")


class _PoolFront(Generic[P]):
    """What both pools answer without I/O: the sizes, configuration and features."""

    _members: _Members[P]

    def _any_member(self) -> P:
        raise NotImplementedError

    @property
    def size(self) -> int:
        """How many proxies the pool runs."""
        return self._members.balancer.size

    @property
    def config(self) -> ProxyConfig:
        """The configuration every member is started with."""
        return self._members.config

    @property
    def protocol_version(self) -> str:
        """The protocol version of the members (all run the same skopeo)."""
        return self._any_member().protocol_version

    def supports(self, feature: Union[Feature, str]) -> bool:
        """Whether the members' skopeo offers ``feature`` natively."""
        return self._any_member().supports(feature)


def _close_quietly(member: Optional[ImageProxy]) -> None:
    """Close a member taken out of service; its failure was or will be reported elsewhere."""
    if member is not None:
        try:
            member.close()
        except ProxyError:
            pass


async def _aclose_quietly(member: Optional[AsyncImageProxy]) -> None:
    """The asyncio twin of :func:`_close_quietly`."""
    if member is not None:
        try:
            await member.close()
        except ProxyError:
            pass


def _raise_collected(errors: Sequence[ProxyError]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise PoolShutdownError(errors)


class ProxyPool(_PoolFront[ImageProxy]):
    """Several skopeo proxies behind the methods of one :class:`ImageProxy`; thread-safe.

    ``open_image`` goes to the least busy member; every other call on an image goes to
    the member that opened it. Opening images from several threads then overlaps the round
    trips to the registry that one proxy would make one after the other.

    Example::

        with ProxyPool(ProxyConfig(), size=8) as pool:
            def inspect(ref):
                with pool.open_image(ref) as img:
                    return pool.fetch_manifest(img), pool.fetch_config(img)
            with ThreadPoolExecutor(8) as ex:
                results = list(ex.map(inspect, references))

    All members start at once (in parallel). A member whose skopeo failed is closed and
    replaced by a new one when an open is next routed to it; calls on images it had opened
    raise a :class:`ProxyError`. ``close()`` shuts every member down, then raises what failed.
    """

    def __init__(self, config: Optional[ProxyConfig] = None, size: int = DEFAULT_SIZE) -> None:
        self._members: _Members[ImageProxy] = _Members(config, size)
        self._lock = threading.Lock()
        self._slot_locks = [threading.Lock() for _ in range(self._members.balancer.size)]
        self._start_all()

    def _start_all(self) -> None:
        size = self._members.balancer.size
        # Starting a skopeo is mostly waiting for it to initialise: overlap them.
        with concurrent.futures.ThreadPoolExecutor(size, "proxy-pool-start") as ex:
            futures = [ex.submit(ImageProxy, self._members.config) for _ in range(size)]
        started, failures = [], []
        for fut in futures:
            try:
                started.append(fut.result())
            except BaseException as e:
                failures.append(e)
        if failures:
            for member in started:
                _close_quietly(member)
            raise failures[0]
        for slot, member in enumerate(started):
            self._members.install(slot, member)

    # --- lifetime ---------------------------------------------------------------------

    def __enter__(self) -> ProxyPool:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        with unless_already_failing(exc_type):
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._members.closed else "open"
        pids = [m._process.pid for m in self._members.started()]
        return f"<ProxyPool size={self.size} pids={pids} {state}>"

    def close(self) -> None:
        """Shut every member down; then raise the error of the one that failed, if any.

        Several failures raise :class:`PoolShutdownError`. Closing twice is harmless.
        """
        with self._lock:
            if self._members.closed:
                return
            self._members.closed = True
            members = self._members.started()
        if not members:
            return

        def close_one(member: ImageProxy) -> Optional[ProxyError]:
            try:
                member.close()
            except ProxyError as e:
                return e
            return None

        # each close waits for its skopeo to exit: wait for all of them at once
        with concurrent.futures.ThreadPoolExecutor(len(members), "proxy-pool-close") as ex:
            outcomes = list(ex.map(close_one, members))
        _raise_collected([e for e in outcomes if e is not None])

    @property
    def members(self) -> Tuple[ImageProxy, ...]:
        """The member proxies now in service, in slot order."""
        with self._lock:
            return tuple(self._members.started())

    def loads(self) -> List[int]:
        """Opens in flight plus open images, per member in slot order (for monitoring)."""
        with self._lock:
            return self._members.balancer.loads()

    # --- routing ----------------------------------------------------------------------

    def _any_member(self) -> ImageProxy:
        with self._lock:
            started: List[ImageProxy] = self._members.started()
        if not started:
            raise ProxyClosedError("the pool has no running proxy")
        return started[0]

    def _member(self, slot: int) -> ImageProxy:
        member: Optional[ImageProxy] = self._members.slots[slot]
        if member is not None and _usable(member):
            return member
        # One thread replaces a failed member; others wanting the same slot wait for it.
        with self._slot_locks[slot]:
            member = self._members.slots[slot]
            if member is not None and _usable(member):
                return member
            self._members.check_open()
            fresh = ImageProxy(self._members.config)
            with self._lock:
                closed = self._members.closed
                if not closed:
                    self._members.install(slot, fresh)
            # the pool was closed while the new member started: it goes; else the old one
            # does (reaping its skopeo now rather than whenever its images are dropped)
            _close_quietly(fresh if closed else member)
            self._members.check_open()
            return fresh

    def _open(self, opener: Callable[[ImageProxy], Optional[OpenedImage]]) -> Optional[OpenedImage]:
        with self._lock:
            self._members.check_open()
            slot = self._members.balancer.acquire()
        img: Optional[OpenedImage] = None
        try:
            img = opener(self._member(slot))
            return img
        finally:
            with self._lock:
                self._members.balancer.opened(slot, img)

    def _owner(self, img: OpenedImage) -> ImageProxy:
        return self._members.owner(img)

    # --- the methods of ImageProxy ----------------------------------------------------

    def list_tags(self, repository: Union[str, ImageReference]) -> List[str]:
        """:meth:`ImageProxy.list_tags` with the pool's configuration (no member is used)."""
        return catalog.list_tags(self.config, repository)

    def fetch_index(
        self, reference: Union[str, ImageReference]
    ) -> Optional[Tuple[Digest, ImageIndex]]:
        """:meth:`ImageProxy.fetch_index` with the pool's configuration (no member is used)."""
        return catalog.fetch_index(self.config, reference)

    def open_image(self, reference: Union[str, ImageReference]) -> OpenedImage:
        """Open an image on the least busy member; it stays bound to that member."""
        img = self._open(lambda member: member.open_image(reference))
        assert img is not None
        return img

    def open_image_optional(self, reference: Union[str, ImageReference]) -> Optional[OpenedImage]:
        """:meth:`open_image`, or None if the image does not exist."""
        return self._open(lambda member: member.open_image_optional(reference))

    def close_image(self, img: OpenedImage) -> None:
        """Release an opened image in the member that opened it."""
        self._owner(img).close_image(img)

    def fetch_manifest_raw_oci(self, img: OpenedImage) -> Tuple[Digest, bytes]:
        """See :meth:`ImageProxy.fetch_manifest_raw_oci`."""
        return self._owner(img).fetch_manifest_raw_oci(img)

    def fetch_manifest(self, img: OpenedImage) -> Tuple[Digest, ImageManifest]:
        """See :meth:`ImageProxy.fetch_manifest`."""
        return self._owner(img).fetch_manifest(img)

    def fetch_config_raw(self, img: OpenedImage) -> bytes:
        """See :meth:`ImageProxy.fetch_config_raw`."""
        return self._owner(img).fetch_config_raw(img)

    def fetch_config(self, img: OpenedImage) -> ImageConfig:
        """See :meth:`ImageProxy.fetch_config`."""
        return self._owner(img).fetch_config(img)

    def get_layer_info(self, img: OpenedImage) -> List[LayerInfo]:
        """See :meth:`ImageProxy.get_layer_info`."""
        return self._owner(img).get_layer_info(img)

    def get_blob(self, img: OpenedImage, digest: Union[str, Digest], size: int) -> BlobReader:
        """See :meth:`ImageProxy.get_blob`."""
        return self._owner(img).get_blob(img, digest, size)

    def get_descriptor(
        self, img: OpenedImage, descriptor: Union[Descriptor, LayerInfo]
    ) -> BlobReader:
        """See :meth:`ImageProxy.get_descriptor`."""
        return self._owner(img).get_descriptor(img, descriptor)

    def get_raw_blob(
        self,
        img: OpenedImage,
        digest: Union[str, Digest],
        size: Optional[int] = None,
        *,
        verify: bool = False,
    ) -> BlobReader:
        """See :meth:`ImageProxy.get_raw_blob`."""
        return self._owner(img).get_raw_blob(img, digest, size, verify=verify)


__all__ = ["PoolBalancer", "PoolShutdownError", "ProxyPool"]
