"""The wire protocol of skopeo's image proxy, without any I/O.

Requests are JSON objects sent one per SEQPACKET message; replies are JSON objects that may
carry file descriptors. This module turns requests into bytes and (bytes, fds) into typed
replies, validating everything a peer could get wrong, and holds the version and feature
table. Nothing here touches a socket: the front ends feed it what they received.

Ownership rule: every fd handed to :func:`decode_reply` is either returned inside the reply
object or closed before the function raises, so a malformed reply can never leak an fd.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, List, Optional, Sequence, Tuple, Union

from .._errors import (
    ConfigurationError,
    MetadataTooLargeError,
    ProtocolError,
    ProxyTooOldError,
    RequestError,
)

#: The proxy reads requests into a buffer of this size; a larger request would be cut.
MAX_REQUEST_SIZE = 32 * 1024
#: Replies are not bounded by the proxy; a SEQPACKET message is bounded by the peer's send
#: buffer (about 208 KiB by default), so a 1 MiB receive buffer always holds a whole reply.
MAX_REPLY_SIZE = 1024 * 1024
#: JSON numbers above this lose precision; the proxy rejects them.
MAX_JSON_INT = (1 << 53) - 1
#: JSON from skopeo nested deeper than this is refused. Image metadata nests fewer than ten
#: levels; the bound keeps every recursive walk over what was decoded (``to_json``,
#: ``json.dumps``, a caller's own) far from Python's recursion limit.
MAX_JSON_DEPTH = 256

Version = Tuple[int, int, int]

MINIMUM_VERSION: Version = (0, 2, 3)
MINIMUM_RELEASE = "1.6"


class Feature(str, Enum):
    """Capabilities that depend on the proxy's protocol version."""

    FULL_CONFIG = "GetFullConfig"
    OPEN_IMAGE_OPTIONAL = "OpenImageOptional"
    LAYER_INFO = "GetLayerInfo"
    POLICY_ENFORCEMENT = "policy-enforcement"
    LAYER_INFO_PIPED = "GetLayerInfoPiped"
    RAW_BLOB = "GetRawBlob"
    ERROR_CODES = "error-codes"


#: The protocol version, and the first skopeo release, that brought each feature.
FEATURES: dict[Feature, tuple[Version, str]] = {
    Feature.FULL_CONFIG: ((0, 2, 3), "1.6"),
    Feature.OPEN_IMAGE_OPTIONAL: ((0, 2, 4), "1.11"),
    Feature.LAYER_INFO: ((0, 2, 5), "1.11"),
    Feature.POLICY_ENFORCEMENT: ((0, 2, 6), "1.13"),
    Feature.LAYER_INFO_PIPED: ((0, 2, 7), "1.19"),
    Feature.RAW_BLOB: ((0, 2, 8), "1.19"),
    Feature.ERROR_CODES: ((0, 2, 8), "1.19"),
}

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


def parse_version(text: object) -> Version:
    """Parse the ``major.minor.patch`` string that ``Initialize`` returns."""
    if not isinstance(text, str):
        raise ProtocolError(f"Initialize returned a non-string version: {text!r:.80}")
    m = _VERSION_RE.match(text)
    if m is None:
        raise ProtocolError(f"Initialize returned a malformed version: {text!r:.80}")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)))


def format_version(version: Version) -> str:
    """``(0, 2, 8)`` -> ``"0.2.8"``."""
    return ".".join(str(p) for p in version)


def check_minimum_version(version: Version) -> None:
    """Refuse proxies older than the oldest protocol this client speaks."""
    if version < MINIMUM_VERSION:
        raise ProxyTooOldError(
            "containers_image_proxy",
            format_version(version),
            format_version(MINIMUM_VERSION),
            MINIMUM_RELEASE,
        )


def has_feature(version: Version, feature: Union[Feature, str]) -> bool:
    """Whether a proxy speaking ``version`` offers ``feature``."""
    try:
        feat = Feature(feature)
    except ValueError:
        raise ConfigurationError(
            f"unknown feature {feature!r}; known: {', '.join(f.value for f in Feature)}"
        ) from None
    return version >= FEATURES[feat][0]


def require_feature(version: Version, feature: Feature, what: str = "") -> None:
    """Raise :class:`ProxyTooOldError` naming the release needed when ``feature`` is missing."""
    if not has_feature(version, feature):
        required, release = FEATURES[feature]
        raise ProxyTooOldError(
            what or feature.value, format_version(version), format_version(required), release
        )


# --- requests -------------------------------------------------------------------------

Arg = Union[str, int]
# one encoder: json.dumps with any option builds a new JSONEncoder on every call
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode_request(method: str, args: Sequence[Arg]) -> bytes:
    """Serialise one request, refusing what the proxy would cut or misread."""
    for arg in args:
        # bool is an int subclass, but the proxy never takes one
        if isinstance(arg, bool) or not isinstance(arg, (str, int)):
            raise ConfigurationError(f"{method}: unsupported argument type {type(arg).__name__}")
        if isinstance(arg, int) and not 0 <= arg <= MAX_JSON_INT:
            raise ConfigurationError(f"{method}: integer argument out of range: {arg}")
    data = _ENCODER.encode({"method": method, "args": list(args)}).encode()
    if len(data) > MAX_REQUEST_SIZE:
        raise ConfigurationError(
            f"{method}: request of {len(data)} bytes exceeds the proxy's {MAX_REQUEST_SIZE}"
        )
    return data


# --- JSON and metadata payloads -------------------------------------------------------


def decode_json(data: bytes, what: str, limit: Optional[int] = None) -> Any:
    """Decode one JSON document that came from skopeo; ``what`` names it in errors.

    Raises :class:`MetadataTooLargeError` when ``data`` is longer than ``limit`` bytes, and
    :class:`ProtocolError` when it is not JSON (bad UTF-8 included) or nests deeper than
    :data:`MAX_JSON_DEPTH`. Messages never quote the document.
    """
    if limit is not None and len(data) > limit:
        raise MetadataTooLargeError(what, limit)
    try:
        obj = json.loads(data)
    except RecursionError:
        raise _too_deep(what) from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ProtocolError(f"{what}: not valid JSON: {_reason(e)}") from None
    if too_deep(obj, data):
        raise _too_deep(what)
    return obj


def _reason(e: ValueError) -> str:
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 at byte {e.start}"
    return str(e)  # a JSONDecodeError says where, not what


def _too_deep(what: str) -> ProtocolError:
    return ProtocolError(f"{what}: JSON nested more than {MAX_JSON_DEPTH} levels deep")


def too_deep(obj: Any, data: Union[bytes, str]) -> bool:
    """Whether decoded JSON ``obj`` (from ``data``) nests deeper than MAX_JSON_DEPTH.

    Without more brackets in the text than the bound (nearly every reply), the walk is
    skipped; it is iterative, so it cannot itself exceed the recursion limit.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if not isinstance(obj, (dict, list)) or data.count(b"[") + data.count(b"{") <= MAX_JSON_DEPTH:
        return False
    stack: List[Tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        for child in value.values() if isinstance(value, dict) else value:
            if isinstance(child, (dict, list)):
                if depth >= MAX_JSON_DEPTH:
                    return True
                if child:  # an empty one nests no further: not worth a visit
                    stack.append((child, depth + 1))
    return False


class MetadataBuffer:
    """Collects a metadata payload read from a pipe, refusing it past ``limit`` bytes.

    A front end reads at most :meth:`room` bytes at a time and :meth:`add` s them: no more
    than ``limit + 1`` bytes are ever held, so an oversize payload costs no more memory
    than an allowed one, and is refused before it is read to its end.
    """

    def __init__(self, what: str, limit: int) -> None:
        self.what = what
        self.limit = limit
        self.size = 0
        self._chunks: List[bytes] = []

    def room(self, chunk: int) -> int:
        """How much the next read should ask for (``chunk`` at most)."""
        return max(1, min(chunk, self.limit + 1 - self.size))

    def add(self, data: bytes) -> None:
        """Keep ``data``; raises :class:`MetadataTooLargeError` once over the limit."""
        self.size += len(data)
        if self.size > self.limit:
            self._chunks.clear()
            raise MetadataTooLargeError(self.what, self.limit)
        self._chunks.append(data)

    def take(self) -> bytes:
        """The whole payload (the buffer is empty afterwards)."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


# --- replies --------------------------------------------------------------------------


class ReplyShape(Enum):
    """What a successful reply to a method carries besides its JSON."""

    VALUE = 0  #: no fd
    PIPE = 1  #: one pipe fd, a non-zero pipe id; the client must send FinishPipe
    RAW_PIPES = 2  #: a data fd and an error fd, pipe id 0, no FinishPipe


METHOD_SHAPES: dict[str, ReplyShape] = {
    "Initialize": ReplyShape.VALUE,
    "OpenImage": ReplyShape.VALUE,
    "OpenImageOptional": ReplyShape.VALUE,
    "CloseImage": ReplyShape.VALUE,
    "GetLayerInfo": ReplyShape.VALUE,
    "FinishPipe": ReplyShape.VALUE,
    "GetManifest": ReplyShape.PIPE,
    "GetConfig": ReplyShape.PIPE,
    "GetFullConfig": ReplyShape.PIPE,
    "GetLayerInfoPiped": ReplyShape.PIPE,
    "GetBlob": ReplyShape.PIPE,
    "GetRawBlob": ReplyShape.RAW_PIPES,
}


@dataclass(frozen=True)
class ValueReply:
    """A successful reply that carries only a value."""

    value: Any


@dataclass(frozen=True)
class PipeReply:
    """A successful reply whose payload is streamed through ``fd``; owes a FinishPipe."""

    value: Any
    pipe_id: int
    fd: int


@dataclass(frozen=True)
class RawPipesReply:
    """GetRawBlob's reply: data through ``data_fd``, then an error (or nothing) on ``error_fd``."""

    value: Any
    data_fd: int
    error_fd: int


Reply = Union[ValueReply, PipeReply, RawPipesReply]

_ERROR_CODES = ("EPIPE", "retryable", "other")


def close_fds(*fds: int) -> None:
    """Close descriptors, ignoring those already closed (or -1, "none")."""
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def decode_reply(
    method: str,
    data: bytes,
    fds: Sequence[int],
    truncated: bool = False,
    limit: Optional[int] = None,
) -> Reply:
    """Validate one reply to ``method`` and give it its typed shape.

    Raises :class:`RequestError` for a well-formed error reply and :class:`ProtocolError` for
    anything the protocol does not allow (:class:`MetadataTooLargeError` for a reply longer
    than ``limit`` bytes); in every case each fd in ``fds`` is closed.
    """
    try:
        return _decode_reply(method, data, fds, truncated, limit)
    except BaseException:
        close_fds(*fds)
        raise


def _decode_reply(
    method: str, data: bytes, fds: Sequence[int], truncated: bool, limit: Optional[int]
) -> Reply:
    if truncated:
        raise ProtocolError(f"{method}: reply exceeds {MAX_REPLY_SIZE} bytes")
    obj = decode_json(data, f"{method} reply", limit)
    if not isinstance(obj, dict):
        raise ProtocolError(f"{method}: reply is not a JSON object")
    success = obj.get("success")
    if not isinstance(success, bool):
        raise ProtocolError(f"{method}: reply lacks a boolean 'success'")
    pipe_id = obj.get("pipeid", 0)
    if isinstance(pipe_id, bool) or not isinstance(pipe_id, int) or not 0 <= pipe_id < 2**32:
        raise ProtocolError(f"{method}: reply has an invalid 'pipeid': {pipe_id!r:.40}")
    value = obj.get("value")

    if not success:
        if fds:
            raise ProtocolError(f"{method}: error reply carries {len(fds)} fd(s)")
        message = obj.get("error")
        if not isinstance(message, str):
            raise ProtocolError(f"{method}: error reply lacks an 'error' string")
        code = obj.get("error_code")
        if code in (None, ""):
            code = None
        elif code not in _ERROR_CODES:
            raise ProtocolError(f"{method}: unknown error_code {code!r:.40}")
        raise request_error(method, message, code)

    shape = METHOD_SHAPES.get(method, ReplyShape.VALUE)
    if shape is ReplyShape.VALUE:
        if fds or pipe_id:
            raise ProtocolError(f"{method}: reply carries {len(fds)} fd(s), pipe id {pipe_id}")
        return ValueReply(value)
    if shape is ReplyShape.PIPE:
        # The pipe id is the proxy's own fd number for the write end, so 0 is a valid id
        # too (skopeo's stdin is free once Go has taken the socket over).
        if len(fds) != 1:
            raise ProtocolError(f"{method}: expected one fd, got {len(fds)}")
        return PipeReply(value, pipe_id, fds[0])
    if len(fds) != 2 or pipe_id != 0:
        raise ProtocolError(
            f"{method}: expected two fds and no pipe id, got {len(fds)} fd(s), pipe id {pipe_id}"
        )
    return RawPipesReply(value, fds[0], fds[1])


# --- errors ---------------------------------------------------------------------------

# Before 0.2.8 errors are bare strings; these are the transient network failures that
# containers/image reports, recognised by their Go error text.
_RETRYABLE_TEXT = re.compile(
    r"connection reset by peer|connection refused|unexpected EOF|i/o timeout"
    r"|TLS handshake timeout|broken pipe|use of closed network connection"
    r"|server misbehaving|too many requests|503 Service Unavailable|502 Bad Gateway"
    r"|http2: server sent GOAWAY|context deadline exceeded",
    re.IGNORECASE,
)

# What containers/image says when an image is not there, as opposed to unreachable.
_NOT_FOUND_TEXT = re.compile(
    r"manifest unknown|name unknown|no descriptor found for reference"
    r"|identifier is not an image|does not resolve to an image ID|image not known"
    r"|no such image|reference .* not found|repository name not known",
    re.IGNORECASE,
)


# What a registry or a store says of content that is not there. Asking again cannot make
# it appear, whatever the code: skopeo 1.22 codes a registry's "blob unknown" as retryable.
_ABSENT_TEXT = re.compile(
    r"blob unknown|manifest unknown|name unknown|repository name not known"
    r"|no such file or directory|invalid status code from registry 404",
    re.IGNORECASE,
)


def is_retryable(message: str, error_code: Optional[str]) -> bool:
    """Whether an error may go away if the request is sent again.

    Content that is not there (a blob the registry does not know, a file missing from a
    layout) is never retried, even when the proxy codes it "retryable". Otherwise the
    proxy's code is trusted when it says "retryable" or "EPIPE" (we closed the pipe);
    "other" still gets the text check, since containers/image does not classify a
    connection cut mid-body (``unexpected EOF``) as retryable, though it is transient.
    """
    if _ABSENT_TEXT.search(message) is not None:
        return False
    if error_code == "retryable":
        return True
    if error_code == "EPIPE":
        return False
    return _RETRYABLE_TEXT.search(message) is not None


def is_not_found(message: str) -> bool:
    """Whether an OpenImage error means "no such image" rather than a failure to look."""
    return _NOT_FOUND_TEXT.search(message) is not None


def request_error(method: str, message: str, error_code: Optional[str]) -> RequestError:
    """Build the :class:`RequestError` for an error the proxy reported."""
    return RequestError(method, message, error_code, is_retryable(message, error_code))


def decode_raw_blob_error(payload: bytes) -> Optional[RequestError]:
    """Decode what GetRawBlob's error pipe held once it reached EOF (empty means success)."""
    if not payload.strip():
        return None
    obj = decode_json(payload, "GetRawBlob: error pipe")
    if not isinstance(obj, dict):
        raise ProtocolError("GetRawBlob: error pipe holds a non-object")
    code = obj.get("code")
    message = obj.get("message")
    if code not in _ERROR_CODES or not isinstance(message, str):
        raise ProtocolError(f"GetRawBlob: malformed error object: {payload[:120]!r}")
    return request_error("GetRawBlob", message, code)
