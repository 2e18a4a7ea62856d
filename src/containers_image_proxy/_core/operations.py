"""What each client method does, written once for both front ends.

Every public method is a generator here that *yields* I/O actions (``_core.actions``:
:class:`Call`, :class:`CallPiped`, :class:`OpenStream`, :class:`Sleep`) and receives their
results; the sync and asyncio front ends only know how to perform the actions. Version
gates, fallbacks between methods, emulation on old proxies and reply validation therefore
live in one place. A :class:`~containers_image_proxy.ProxyError` raised while performing an
action is thrown into the generator, so it can classify it (as :func:`open_image_optional`
does).
"""

from __future__ import annotations

from typing import (
    List,
    Optional,
    Tuple,
    Type,
    TypeVar,
    Union,
)

from .._errors import ConfigurationError, ImageNotFoundError, ProtocolError, RequestError
from .._models import Digest, ImageConfig, ImageManifest, LayerInfo
from .._reference import ImageReference, as_reference
from .._stream.ends import backoff
from .._stream.state import StreamKind, StreamSpec
from .actions import (
    JSONValue,
    Op,
    Sleep,
    call,
    call_piped,
    open_stream,
)
from .notfound import LAZY_TRANSPORTS, image_not_found
from .protocol import (
    MAX_JSON_INT,
    Arg,
    Feature,
    check_minimum_version,
    decode_json,
    format_version,
    has_feature,
    parse_version,
)
from .session import Session


def initialize(session: Session) -> Op[str]:
    """Initialize, then the version gates that must hold before anything else is done."""
    version = parse_version((yield from call("Initialize", ())))
    check_minimum_version(version)
    session.version = version
    if session.config.wants_policy_enforcement and not has_feature(
        version, Feature.POLICY_ENFORCEMENT
    ):
        # Failing closed: such a proxy would open images the policy rejects.
        session.require(Feature.POLICY_ENFORCEMENT, "signature policy enforcement")
    return format_version(version)


def _image_id(value: JSONValue, method: str) -> int:
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


def _opened(session: Session, image_id: int, ref: ImageReference) -> Op[None]:
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
        yield from call_piped("GetManifest", (image_id,))
    except RequestError as e:
        missing = _not_found(e, ref)
        if missing is None:
            return
        session.forget_image(image_id)
        try:
            yield from call("CloseImage", (image_id,))
        except RequestError:
            pass  # the image is unusable either way; the missing image is what to report
        raise missing from None


def open_image(session: Session, reference: Union[str, ImageReference]) -> Op[int]:
    """OpenImage; the result is the image id. A missing image raises ImageNotFoundError."""
    ref = as_reference(reference)
    try:
        value = yield from call("OpenImage", (str(ref),))
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


def open_image_optional(
    session: Session, reference: Union[str, ImageReference]
) -> Op[Optional[int]]:
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
        value = yield from call(method, (str(ref),))
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


def close_image(session: Session, image_id: int) -> Op[None]:
    """CloseImage."""
    session.forget_image(image_id)
    yield from call("CloseImage", (image_id,))


def close_open_images(session: Session) -> Op[None]:
    """CloseImage for every image still open (before Shutdown); refusals are ignored."""
    while session.open_images:
        image_id = session.open_images.pop()
        session.forget_image(image_id)
        try:
            yield from call("CloseImage", (image_id,))
        except RequestError:
            pass


def fetch_manifest_raw(image_id: int) -> Op[Tuple[Digest, bytes]]:
    """GetManifest: ``(digest, bytes)``; the bytes are the OCI form of the chosen instance."""
    value, payload = yield from call_piped("GetManifest", (image_id,))
    if not isinstance(value, str):
        raise ProtocolError(f"GetManifest: digest is not a string: {value!r:.40}")
    try:
        digest = Digest(value)
    except ConfigurationError as e:
        raise ProtocolError(f"GetManifest: {e}") from None
    return digest, payload


def fetch_manifest(image_id: int) -> Op[Tuple[Digest, ImageManifest]]:
    """GetManifest, parsed: ``(digest, ImageManifest)``."""
    digest, payload = yield from fetch_manifest_raw(image_id)
    return digest, _parse(ImageManifest, payload, "GetManifest")


# skopeo's refusal of GetFullConfig (and other image-only calls) on an OCI artifact
_ARTIFACT_REFUSAL = "unsupported image-specific operation on artifact"


def is_artifact_refusal(error: RequestError) -> bool:
    """Whether skopeo refused an image-only request because the image is an OCI artifact
    (a manifest whose config is not an image config), on every release."""
    return _ARTIFACT_REFUSAL in error.message


def fetch_config_raw(image_id: int) -> Op[bytes]:
    """GetFullConfig: the OCI image config as bytes."""
    _, payload = yield from call_piped("GetFullConfig", (image_id,))
    return payload


def fetch_config(image_id: int) -> Op[ImageConfig]:
    """GetFullConfig, parsed; an OCI artifact is refused with a message that says so."""
    try:
        payload = yield from fetch_config_raw(image_id)
    except RequestError as e:
        if not is_artifact_refusal(e):
            raise
        raise RequestError(
            e.method,
            f"not a container image but an OCI artifact, whose config is not an image config"
            f" ({e.message}); fetch_config_raw returns its config blob as stored",
            e.error_code,
        ) from None
    return _parse(ImageConfig, payload, "GetFullConfig")


M = TypeVar("M", ImageManifest, ImageConfig)


def _parse(model: Type[M], payload: bytes, method: str) -> M:
    try:
        return model.from_bytes(payload)
    except ConfigurationError as e:
        raise ProtocolError(f"{method}: {e}") from None


def _layer_infos(value: JSONValue, method: str) -> List[LayerInfo]:
    if not isinstance(value, list):
        raise ProtocolError(f"{method}: layer info is not a list")
    try:
        return [LayerInfo.from_json(item) for item in value]
    except ConfigurationError as e:
        raise ProtocolError(f"{method}: {e}") from None


# Transports whose stored layers differ from the manifest's (uncompressed in the store).
_COPY_LAYERS_DIFFER = frozenset({"containers-storage"})


def get_layer_info(
    session: Session, image_id: int, reference: ImageReference
) -> Op[List[LayerInfo]]:
    """The layers as they would be copied: GetLayerInfoPiped, GetLayerInfo, or the manifest."""
    if session.supports(Feature.LAYER_INFO_PIPED):
        _, payload = yield from call_piped("GetLayerInfoPiped", (image_id,))
        return _layer_infos(decode_json(payload, "GetLayerInfoPiped"), "GetLayerInfoPiped")
    if session.supports(Feature.LAYER_INFO):
        return _layer_infos((yield from call("GetLayerInfo", (image_id,))), "GetLayerInfo")
    if reference.transport in _COPY_LAYERS_DIFFER:
        # The manifest names compressed layers the store no longer has.
        session.require(Feature.LAYER_INFO, f"get_layer_info for {reference.transport}: images")
    _, manifest = yield from fetch_manifest(image_id)
    return [LayerInfo.from_descriptor(d) for d in manifest.layers]


def _digest_arg(digest: Union[str, Digest]) -> Digest:
    if not isinstance(digest, str):
        raise ConfigurationError(f"digest must be a string, got {type(digest).__name__}")
    return Digest.parse(digest)


def _size_arg(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_JSON_INT:
        raise ConfigurationError(f"size must be a non-negative integer, got {size!r:.40}")
    return int(size)


def blob_size(
    session: Session, image_id: int, digest: Digest, reference: Optional[ImageReference] = None
) -> Op[int]:
    """The size the image's manifest gives for ``digest`` (its config or a layer), read
    once per image; ConfigurationError if the manifest does not reference it."""
    sizes = session.blob_sizes.get(image_id)
    if sizes is None:
        _, manifest = yield from fetch_manifest(image_id)
        sizes = {d.digest: d.size for d in (manifest.config, *manifest.layers)}
        if image_id in session.open_images:  # not closed meanwhile
            session.blob_sizes[image_id] = sizes
    size = sizes.get(digest)
    if size is None:
        raise ConfigurationError(
            f"get_blob: {digest} is neither the config nor a layer of "
            f"{reference or 'the image'}, so its size is not known: pass size="
        )
    return size


def get_blob(
    session: Session,
    image_id: int,
    digest: Union[str, Digest],
    size: Optional[int],
    reference: Optional[ImageReference] = None,
) -> Op[object]:
    """The best verified stream: GetRawBlob verified here (0.2.8), else GetBlob.

    Without ``size``: the one recorded from the manifest if it was read already, else
    GetRawBlob's own (0.2.8), else the manifest's (:func:`blob_size`).
    """
    d = _digest_arg(digest)
    n: Optional[int] = None if size is None else _size_arg(size)
    if n is None and image_id in session.blob_sizes:
        n = yield from blob_size(session, image_id, d, reference)
    if session.supports(Feature.RAW_BLOB):
        spec = StreamSpec(StreamKind.RAW, d, n, verify=True)
        return (yield from _open_with_retries(session, "GetRawBlob", (image_id, str(d)), spec))
    if n is None:
        n = yield from blob_size(session, image_id, d, reference)
    # skopeo verifies GetBlob streams itself; hashing here too only pays when a transfer
    # may be resumed, which needs the hash of what was handed out
    spec = StreamSpec(StreamKind.PIPE, d, n, verify=session.config.retries > 0)
    return (yield from _open_with_retries(session, "GetBlob", (image_id, str(d), n), spec))


def _open_with_retries(
    session: Session, method: str, args: Tuple[Arg, ...], spec: StreamSpec
) -> Op[object]:
    retries = session.config.retries
    attempt = 0
    while True:
        try:
            return (yield from open_stream(method, args, spec))
        except RequestError as e:
            if not e.retryable or attempt >= retries:
                raise
        yield Sleep(backoff(attempt))
        attempt += 1


def get_raw_blob(
    session: Session,
    image_id: int,
    digest: Union[str, Digest],
    size: Optional[int],
    verify: bool,
) -> Op[object]:
    """GetRawBlob as the proxy offers it (0.2.8), optionally verified here."""
    session.require(Feature.RAW_BLOB, "get_raw_blob")
    d = _digest_arg(digest)
    n = None if size is None else _size_arg(size)
    spec = StreamSpec(StreamKind.RAW, d, n, verify=verify)
    return (yield from _open_with_retries(session, "GetRawBlob", (image_id, str(d)), spec))


__all__ = [
    "blob_size",
    "close_image",
    "close_open_images",
    "fetch_config",
    "fetch_config_raw",
    "fetch_manifest",
    "fetch_manifest_raw",
    "get_blob",
    "get_layer_info",
    "get_raw_blob",
    "initialize",
    "open_image",
    "open_image_optional",
]
