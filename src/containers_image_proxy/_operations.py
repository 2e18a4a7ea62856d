"""What each client method does, written once for both front ends.

Every public method is a generator here that *yields* I/O actions (:class:`Call`,
:class:`CallPiped`, :class:`OpenStream`) and receives their results; the sync and asyncio
front ends only know how to perform those three actions. Version gates, fallbacks between
methods, emulation on old proxies and reply validation therefore live in one place. A
:class:`~containers_image_proxy.ProxyError` raised while performing an action is thrown
into the generator, so it can classify it (as :func:`open_image_optional` does).

Actions never hand an fd to the generator: pipes are drained or wrapped by the front end
inside the action, so an abandoned generator cannot leak one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import (
    Any,
    Awaitable,
    Callable,
    Generator,
    List,
    Optional,
    Tuple,
    TypeVar,
    Union,
)

from ._blobstream import StreamKind, StreamSpec
from ._config import ProxyConfig
from ._errors import (
    ConfigurationError,
    ImageNotFoundError,
    ProtocolError,
    ProxyError,
    RequestError,
)
from ._models import Descriptor, Digest, ImageConfig, ImageManifest, LayerInfo
from ._notfound import LAZY_TRANSPORTS, image_not_found
from ._protocol import (
    MAX_JSON_INT,
    Arg,
    Feature,
    Version,
    check_minimum_version,
    decode_json,
    format_version,
    has_feature,
    parse_version,
    require_feature,
)
from ._reference import ImageReference, as_reference


@dataclass(frozen=True)
class Call:
    """Send a request whose reply carries no fd; the result is the reply's value."""

    method: str
    args: Tuple[Arg, ...]


@dataclass(frozen=True)
class CallPiped:
    """Send a request answered through a pipe; drain it while FinishPipe runs.

    The result is ``(value, payload)``.
    """

    method: str
    args: Tuple[Arg, ...]


@dataclass(frozen=True)
class OpenStream:
    """Send a blob request and wrap its reply in the front end's reader."""

    method: str
    args: Tuple[Arg, ...]
    spec: StreamSpec


@dataclass(frozen=True)
class Sleep:
    """Wait before a retry (time.sleep or asyncio.sleep, as the front end does)."""

    seconds: float


Action = Union[Call, CallPiped, OpenStream, Sleep]
Op = Generator[Action, Any, Any]


A = TypeVar("A")


def drive(op: Generator[A, Any, Any], perform: Callable[[A], Any]) -> Any:
    """Run an operation to its end, performing each action with ``perform`` (sync)."""
    result: Any = None
    error: Optional[ProxyError] = None
    try:
        while True:
            try:
                action = op.send(result) if error is None else op.throw(error)
            except StopIteration as stop:
                return stop.value
            result, error = None, None
            try:
                result = perform(action)
            except ProxyError as e:
                error = e
    finally:
        op.close()


async def drive_async(op: Generator[A, Any, Any], perform: Callable[[A], Awaitable[Any]]) -> Any:
    """Run an operation to its end, awaiting ``perform`` for each action (asyncio)."""
    result: Any = None
    error: Optional[ProxyError] = None
    try:
        while True:
            try:
                action = op.send(result) if error is None else op.throw(error)
            except StopIteration as stop:
                return stop.value
            result, error = None, None
            try:
                result = await perform(action)
            except ProxyError as e:
                error = e
    finally:
        op.close()


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): 0.2, 0.4, 0.8 ... 5."""
    return float(min(5.0, 0.2 * (2**attempt)))


class OpenedImage:
    """An image opened in the proxy. Close it with ``close_image`` or use it as a context manager.

    Example::

        with proxy.open_image("docker://quay.io/fedora/fedora:latest") as img:
            digest, manifest = proxy.fetch_manifest(img)
    """

    __slots__ = ("_closed", "_owner", "image_id", "reference")

    def __init__(self, owner: Any, image_id: int, reference: ImageReference) -> None:
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

    def __enter__(self) -> OpenedImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self._owner.close_image(self)

    async def __aenter__(self) -> OpenedImage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._owner.close_image(self)


class Session:
    """What one connection knows: the proxy's version and configuration. No I/O."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.version: Optional[Version] = None
        # The ids of the images opened and not closed yet: closed before Shutdown, since
        # skopeo (1.9.3) leaves an oci-archive's extracted copy behind for an image still open.
        self.open_images: set[int] = set()

    @property
    def protocol_version(self) -> str:
        """The protocol version the proxy reported in Initialize."""
        if self.version is None:
            raise ProxyError("the proxy is not initialized")
        return format_version(self.version)

    def supports(self, feature: Union[Feature, str]) -> bool:
        """Whether the connected proxy offers ``feature`` natively."""
        if self.version is None:
            raise ProxyError("the proxy is not initialized")
        return has_feature(self.version, feature)

    def require(self, feature: Feature, what: str) -> None:
        """Raise :class:`ProxyTooOldError` unless the proxy offers ``feature``."""
        assert self.version is not None
        require_feature(self.version, feature, what)

    def check_image(self, owner: Any, img: OpenedImage) -> int:
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

    @property
    def config(self) -> ProxyConfig:
        """The configuration this proxy was started with."""
        return self._config

    @property
    def protocol_version(self) -> str:
        """The protocol version skopeo reported, for example ``"0.2.8"``."""
        return self._session.protocol_version

    def supports(self, feature: Union[Feature, str]) -> bool:
        """Whether this skopeo offers ``feature`` natively (see :class:`Feature`)."""
        return self._session.supports(feature)


# --- operations -----------------------------------------------------------------------


def initialize(session: Session) -> Op:
    """Initialize, then the version gates that must hold before anything else is done."""
    version = parse_version((yield Call("Initialize", ())))
    check_minimum_version(version)
    session.version = version
    if session.config.wants_policy_enforcement and not has_feature(
        version, Feature.POLICY_ENFORCEMENT
    ):
        # Failing closed: such a proxy would open images the policy rejects.
        session.require(Feature.POLICY_ENFORCEMENT, "signature policy enforcement")
    return format_version(version)


def _image_id(value: Any, method: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_JSON_INT:
        raise ProtocolError(f"{method}: image id is not a non-negative integer: {value!r:.40}")
    return value


def _not_found(e: RequestError, ref: ImageReference) -> Optional[ImageNotFoundError]:
    """The ImageNotFoundError that ``e`` means for ``ref``, or None if it means something else."""
    if isinstance(e, ImageNotFoundError):
        return e
    if not image_not_found(e.message, ref.transport):
        return None
    return ImageNotFoundError(e.method, e.message, e.error_code, str(ref))


def _opened(session: Session, image_id: int, ref: ImageReference) -> Op:
    """Record an opened image; for transports that open without looking, read the manifest
    once, so that a missing image is reported by the open (the image is closed again) and
    not by the first read.

    Any other error is left for the caller's first read to meet, as without this check.
    The image is recorded first: if the check is abandoned, Shutdown still closes it.
    """
    session.open_images.add(image_id)
    if ref.transport not in LAZY_TRANSPORTS:
        return
    try:
        yield CallPiped("GetManifest", (image_id,))
    except RequestError as e:
        missing = _not_found(e, ref)
        if missing is None:
            return
        session.open_images.discard(image_id)
        try:
            yield Call("CloseImage", (image_id,))
        except RequestError:
            pass  # the image is unusable either way; the missing image is what to report
        raise missing from None


def open_image(session: Session, reference: Union[str, ImageReference]) -> Op:
    """OpenImage; the result is the image id. A missing image raises ImageNotFoundError."""
    ref = as_reference(reference)
    try:
        value = yield Call("OpenImage", (str(ref),))
    except RequestError as e:
        missing = _not_found(e, ref)
        if missing is not None:
            raise missing from None
        raise
    image_id = _image_id(value, "OpenImage")
    if image_id == 0:
        raise ProtocolError("OpenImage returned the not-found image id 0")
    yield from _opened(session, image_id, ref)
    return image_id


def open_image_optional(session: Session, reference: Union[str, ImageReference]) -> Op:
    """OpenImageOptional, or OpenImage with the not-found errors classified (before 0.2.4).

    The result is the image id, or None exactly where :func:`open_image` raises
    ImageNotFoundError. Errors that skopeo's own OpenImageOptional does not classify (a
    missing layout directory or archive, a missing tag in an oci: layout on 1.18) are
    classified here too, so the answer does not depend on the skopeo release.
    """
    ref = as_reference(reference)
    native = session.supports(Feature.OPEN_IMAGE_OPTIONAL)
    method = "OpenImageOptional" if native else "OpenImage"
    try:
        value = yield Call(method, (str(ref),))
    except RequestError as e:
        if _not_found(e, ref) is not None:
            return None
        raise
    image_id = _image_id(value, method)
    if not image_id:
        return None
    try:
        yield from _opened(session, image_id, ref)
    except ImageNotFoundError:
        return None
    return image_id


def close_image(session: Session, image_id: int) -> Op:
    """CloseImage."""
    session.open_images.discard(image_id)
    yield Call("CloseImage", (image_id,))


def close_open_images(session: Session) -> Op:
    """CloseImage for every image still open (before Shutdown); refusals are ignored."""
    while session.open_images:
        image_id = session.open_images.pop()
        try:
            yield Call("CloseImage", (image_id,))
        except RequestError:
            pass


def fetch_manifest_raw(image_id: int) -> Op:
    """GetManifest: ``(digest, bytes)``; the bytes are the OCI form of the chosen instance."""
    value, payload = yield CallPiped("GetManifest", (image_id,))
    if not isinstance(value, str):
        raise ProtocolError(f"GetManifest: digest is not a string: {value!r:.40}")
    try:
        digest = Digest(value)
    except ConfigurationError as e:
        raise ProtocolError(f"GetManifest: {e}") from None
    return digest, payload


def fetch_manifest(image_id: int) -> Op:
    """GetManifest, parsed: ``(digest, ImageManifest)``."""
    digest, payload = yield from fetch_manifest_raw(image_id)
    return digest, _parse(ImageManifest, payload, "GetManifest")


def fetch_config_raw(image_id: int) -> Op:
    """GetFullConfig: the OCI image config as bytes."""
    _, payload = yield CallPiped("GetFullConfig", (image_id,))
    return payload


def fetch_config(image_id: int) -> Op:
    """GetFullConfig, parsed."""
    payload = yield from fetch_config_raw(image_id)
    return _parse(ImageConfig, payload, "GetFullConfig")


def _parse(model: Any, payload: bytes, method: str) -> Any:
    try:
        return model.from_bytes(payload)
    except ConfigurationError as e:
        raise ProtocolError(f"{method}: {e}") from None


def _layer_infos(value: Any, method: str) -> List[LayerInfo]:
    if not isinstance(value, list):
        raise ProtocolError(f"{method}: layer info is not a list")
    try:
        return [LayerInfo.from_json(item) for item in value]
    except ConfigurationError as e:
        raise ProtocolError(f"{method}: {e}") from None


# Transports whose stored layers differ from the manifest's (uncompressed in the store).
_COPY_LAYERS_DIFFER = frozenset({"containers-storage"})


def get_layer_info(session: Session, image_id: int, reference: ImageReference) -> Op:
    """The layers as they would be copied: GetLayerInfoPiped, GetLayerInfo, or the manifest."""
    if session.supports(Feature.LAYER_INFO_PIPED):
        _, payload = yield CallPiped("GetLayerInfoPiped", (image_id,))
        return _layer_infos(decode_json(payload, "GetLayerInfoPiped"), "GetLayerInfoPiped")
    if session.supports(Feature.LAYER_INFO):
        return _layer_infos((yield Call("GetLayerInfo", (image_id,))), "GetLayerInfo")
    if reference.transport in _COPY_LAYERS_DIFFER:
        # The manifest names compressed layers the store no longer has.
        session.require(Feature.LAYER_INFO, f"get_layer_info for {reference.transport}: images")
    _, manifest = yield from fetch_manifest(image_id)
    return [LayerInfo.from_descriptor(d) for d in manifest.layers]


def _digest_arg(digest: Union[str, Digest]) -> Digest:
    if not isinstance(digest, str):
        raise ConfigurationError(f"digest must be a string, got {type(digest).__name__}")
    return Digest.parse(digest)


def _size_arg(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_JSON_INT:
        raise ConfigurationError(f"size must be a non-negative integer, got {size!r:.40}")
    return int(size)


def get_blob(session: Session, image_id: int, digest: Union[str, Digest], size: int) -> Op:
    """The best verified stream: GetRawBlob verified here (0.2.8), else GetBlob."""
    d = _digest_arg(digest)
    n = _size_arg(size)
    if session.supports(Feature.RAW_BLOB):
        spec = StreamSpec(StreamKind.RAW, d, n, verify=True)
        return (yield from _open_with_retries(session, "GetRawBlob", (image_id, str(d)), spec))
    # skopeo verifies GetBlob streams itself; hashing here too only pays when a transfer
    # may be resumed, which needs the hash of what was handed out
    spec = StreamSpec(StreamKind.PIPE, d, n, verify=session.config.retries > 0)
    return (yield from _open_with_retries(session, "GetBlob", (image_id, str(d), n), spec))


def _open_with_retries(
    session: Session, method: str, args: Tuple[Arg, ...], spec: StreamSpec
) -> Op:
    retries = session.config.retries
    attempt = 0
    while True:
        try:
            return (yield OpenStream(method, args, spec))
        except RequestError as e:
            if not e.retryable or attempt >= retries:
                raise
        yield Sleep(backoff(attempt))
        attempt += 1


def get_descriptor(session: Session, image_id: int, descriptor: Descriptor) -> Op:
    """:func:`get_blob` for a descriptor (or a :class:`LayerInfo`)."""
    return (yield from get_blob(session, image_id, descriptor.digest, descriptor.size))


def get_raw_blob(
    session: Session,
    image_id: int,
    digest: Union[str, Digest],
    size: Optional[int],
    verify: bool,
) -> Op:
    """GetRawBlob as the proxy offers it (0.2.8), optionally verified here."""
    session.require(Feature.RAW_BLOB, "get_raw_blob")
    d = _digest_arg(digest)
    n = None if size is None else _size_arg(size)
    spec = StreamSpec(StreamKind.RAW, d, n, verify=verify)
    return (yield from _open_with_retries(session, "GetRawBlob", (image_id, str(d)), spec))


def finish_pipe(pipe_id: int) -> Op:
    """FinishPipe for a blob stream that was read to its end (or abandoned)."""
    yield Call("FinishPipe", (pipe_id,))


__all__ = [
    "Action",
    "Call",
    "CallPiped",
    "OpenStream",
    "OpenedImage",
    "Session",
    "Sleep",
    "as_reference",
]
