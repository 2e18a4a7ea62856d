"""What both pools of proxies share, without I/O: the balancer and the members' bookkeeping.

One skopeo answers one request at a time, so opening many images is bound by the round
trips each open costs against the registry, and one proxy cannot overlap them. A pool runs
N skopeo processes and spreads ``open_image`` over them; every later call on an image goes
to the proxy that opened it (``img._owner``), because image ids are per process: image 1 of
one member is not image 1 of another. The pools (``_async/pool.py`` and the sync one
generated from it) are dispatchers: all protocol logic stays in the proxies.

Which member opens the next image is decided by :class:`PoolBalancer`, without I/O or
locking, so the thread-safe pool and the asyncio pool share it.
"""

from __future__ import annotations

import weakref
from typing import Generic, List, Optional, Sequence, Tuple, TypeVar, Union, cast

from ._config import ProxyConfig
from ._core.protocol import Feature
from ._core.session import FrontEnd, OpenedImage
from ._errors import ConfigurationError, ProxyClosedError, ProxyError
from ._transport import peer_closed

DEFAULT_SIZE = 4

P = TypeVar("P", bound=FrontEnd)


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


def usable(member: FrontEnd) -> bool:
    """Whether a member can still serve: not closed or torn down, and skopeo still there.

    A pool notices a failed member here, before routing an open to it, and replaces it.
    The socket check also catches a skopeo that died while its proxy was idle, which the
    proxy itself learns only at its next request (and would report to that caller).
    """
    link = member._link
    process = link.process
    if link.closed or process is None or process.sock.fileno() < 0:
        return False
    return not peer_closed(process.sock)


class Members(Generic[P]):
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
        owner: object = img._owner
        if owner not in self.known:
            raise ConfigurationError(f"{img!r} was not opened by this pool")
        return cast(P, owner)

    def started(self) -> List[P]:
        return [m for m in self.slots if m is not None]

    def check_open(self) -> None:
        if self.closed:
            raise ProxyClosedError("the pool is closed")


def raise_collected(errors: Sequence[ProxyError]) -> None:
    """Raise the one error of a shutdown, or :class:`PoolShutdownError` for several."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise PoolShutdownError(errors)


class PoolFront(Generic[P]):
    """What both pools answer without I/O: the sizes, configuration and features."""

    _members: Members[P]

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
