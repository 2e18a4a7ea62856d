"""What a front end knows without I/O: the session with one proxy, and the images it opened.

:class:`Session` holds the proxy's version and configuration (the version gates of
``_core.operations`` read it); :class:`OpenedImage` is the handle of an image opened in one
proxy; :class:`FrontEnd` is what both front ends answer from these alone.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional, Protocol, Set, Union

from .._config import ProxyConfig
from .._digest import Digest
from .._errors import NOT_STARTED, ConfigurationError, ProxyError
from .._link import LinkBase
from .._reference import ImageReference
from .protocol import Feature, Version, format_version, has_feature, require_feature


class ImageOwner(Protocol):
    """The proxy an image was opened by (sync: ``close_image`` returns None; asyncio: a
    coroutine)."""

    def close_image(self, img: OpenedImage) -> object:
        """Release ``img`` in the proxy."""


class OpenedImage:
    """An image opened in the proxy. Close it with ``close_image`` or use it as a context manager.

    Example::

        with proxy.open_image("docker://quay.io/fedora/fedora:latest") as img:
            digest, manifest = proxy.fetch_manifest(img)
    """

    __slots__ = ("_closed", "_owner", "image_id", "reference")

    def __init__(self, owner: ImageOwner, image_id: int, reference: ImageReference) -> None:
        self._owner = owner
        self.image_id = image_id
        self.reference = reference
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether ``close_image`` was called for this image."""
        return self._closed

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<OpenedImage {self.image_id} {self.reference}{state}>"

    def _closes_asynchronously(self) -> bool:
        return inspect.iscoroutinefunction(self._owner.close_image)

    def __enter__(self) -> OpenedImage:
        if self._closes_asynchronously():
            raise TypeError(f"{self!r} belongs to an asyncio proxy: use 'async with', not 'with'")
        return self

    def __exit__(self, *exc: object) -> None:
        self._owner.close_image(self)

    async def __aenter__(self) -> OpenedImage:
        if not self._closes_asynchronously():
            raise TypeError(f"{self!r} belongs to a sync proxy: use a plain 'with'")
        return self

    async def __aexit__(self, *exc: object) -> None:
        closing = self._owner.close_image(self)
        assert inspect.isawaitable(closing)
        await closing


class _StartMethod:
    """``start`` of a proxy or pool: on the class, the classmethod (a new started proxy);
    on an instance, a call that starts that instance (``await proxy.start()``) instead of
    making another one with the default configuration and leaving it unstarted."""

    def __init__(self, on_class: "classmethod[Any, Any, Any]", starter: str) -> None:
        self._on_class = on_class
        self._starter = starter
        self.__doc__ = on_class.__doc__

    def __get__(self, obj: object, owner: Optional[type] = None) -> Any:
        if obj is None:
            return self._on_class.__get__(None, owner)
        started: Callable[[], Any] = getattr(obj, self._starter)

        def start() -> Any:
            """Start this one (if not started yet) and return it."""
            return started()

        return start


def start_on_instances(cls: type, starter: str) -> None:
    """Let ``cls.start``, a classmethod, also start an instance: ``obj.start()`` runs
    ``obj.<starter>()`` (type checkers see the classmethod, whose call without arguments
    types the same)."""
    setattr(cls, "start", _StartMethod(vars(cls)["start"], starter))  # noqa: B010 (mypy: a type)


class Session:
    """What one connection knows, without I/O: version, configuration, the images open."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.version: Optional[Version] = None
        # The ids of the images opened and not closed yet: closed before Shutdown, since
        # skopeo (1.9.3) leaves an oci-archive's extracted copy behind for an image still open.
        self.open_images: Set[int] = set()
        # Per open image, the size of each blob its manifest references (config and
        # layers), read once when get_blob is first called without a size.
        self.blob_sizes: Dict[int, Dict[Digest, int]] = {}

    def forget_image(self, image_id: int) -> None:
        """An image is closed: drop what was recorded about it."""
        self.open_images.discard(image_id)
        self.blob_sizes.pop(image_id, None)

    @property
    def protocol_version(self) -> str:
        """The protocol version the proxy reported in Initialize."""
        if self.version is None:
            raise ProxyError(NOT_STARTED)
        return format_version(self.version)

    def supports(self, feature: Union[Feature, str]) -> bool:
        """Whether the connected proxy offers ``feature`` natively."""
        if self.version is None:
            raise ProxyError(NOT_STARTED)
        return has_feature(self.version, feature)

    def require(self, feature: Feature, what: str) -> None:
        """Raise :class:`ProxyTooOldError` unless the proxy offers ``feature``."""
        assert self.version is not None
        require_feature(self.version, feature, what)

    def check_image(self, owner: object, img: OpenedImage) -> int:
        """The id of ``img`` after checking it belongs to this proxy and is still open."""
        if not isinstance(img, OpenedImage):
            raise ConfigurationError(f"expected an OpenedImage, got {type(img).__name__}")
        if img._owner is not owner:
            raise ConfigurationError(f"{img!r} was opened by another proxy")
        if img._closed:
            raise ConfigurationError(f"{img!r} is closed")
        return img.image_id


class FrontEnd:
    """What the sync and asyncio proxies share that involves no I/O."""

    _config: ProxyConfig
    _session: Session
    _link: LinkBase

    @property
    def config(self) -> ProxyConfig:
        """The configuration this proxy was started with."""
        return self._config

    @property
    def pid(self) -> Optional[int]:
        """The process id of this proxy's skopeo (for monitoring), or None when it is not
        running: not started yet, closed, or ended after a failure (skopeo is then killed).
        In a forked child it is still the parent's skopeo, which the child may not use."""
        process = self._link.process
        return process.pid if process is not None and self._link.usable else None

    @property
    def protocol_version(self) -> str:
        """The protocol version skopeo reported, for example ``"0.2.8"``."""
        return self._session.protocol_version

    def supports(self, feature: Union[Feature, str]) -> bool:
        """Whether this skopeo offers ``feature`` natively (see :class:`Feature`)."""
        return self._session.supports(feature)
