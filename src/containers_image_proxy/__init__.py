"""Python client for skopeo's experimental-image-proxy."""

from ._errors import (
    BlobVerificationError,
    ConfigurationError,
    ProtocolError,
    ProxyError,
    ProxyExitedError,
    ProxyStalledError,
    ProxyTooOldError,
    RequestError,
    SkopeoNotFoundError,
)

__all__ = [
    "BlobVerificationError",
    "ConfigurationError",
    "ProtocolError",
    "ProxyError",
    "ProxyExitedError",
    "ProxyStalledError",
    "ProxyTooOldError",
    "RequestError",
    "SkopeoNotFoundError",
]
