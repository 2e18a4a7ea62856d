"""Python client for skopeo's experimental-image-proxy.

The whole containers/image stack (every transport, registries.conf, signature policy,
credentials) for Python programs, streamed without storing the image first::

    from containers_image_proxy import ImageProxy

    with ImageProxy() as proxy, proxy.open_image("docker://quay.io/libpod/busybox") as img:
        digest, manifest = proxy.fetch_manifest(img)
"""

from ._async import AsyncBlobReader, AsyncImageProxy, AsyncProxyPool
from ._config import ProxyConfig
from ._core.protocol import Feature
from ._core.session import OpenedImage
from ._errors import (
    BlobVerificationError,
    ConfigurationError,
    ImageNotFoundError,
    MetadataTooLargeError,
    ProtocolError,
    ProxyClosedError,
    ProxyError,
    ProxyExitedError,
    ProxyStalledError,
    ProxyTooOldError,
    RequestError,
    SkopeoNotFoundError,
)
from ._models import (
    Descriptor,
    Digest,
    History,
    ImageConfig,
    ImageIndex,
    ImageManifest,
    LayerInfo,
    Platform,
    RootFS,
    RuntimeConfig,
)
from ._pooling import PoolShutdownError
from ._progress import TransferProgress
from ._pull import pull, pull_async
from ._reference import ImageReference
from ._sync import BlobReader, ImageProxy, ProxyPool
from .layers import (
    LayerDigestError,
    LayerFormatError,
    UnsafeLayerError,
    copy_file,
    list_dir,
    list_dir_async,
    read_file,
    read_file_async,
    read_files,
    read_files_async,
    unpack,
    unpack_async,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncBlobReader",
    "AsyncImageProxy",
    "AsyncProxyPool",
    "BlobReader",
    "BlobVerificationError",
    "ConfigurationError",
    "Descriptor",
    "Digest",
    "Feature",
    "History",
    "ImageConfig",
    "ImageIndex",
    "ImageManifest",
    "ImageNotFoundError",
    "ImageProxy",
    "ImageReference",
    "LayerDigestError",
    "LayerFormatError",
    "LayerInfo",
    "MetadataTooLargeError",
    "OpenedImage",
    "Platform",
    "PoolShutdownError",
    "ProtocolError",
    "ProxyClosedError",
    "ProxyConfig",
    "ProxyError",
    "ProxyExitedError",
    "ProxyPool",
    "ProxyStalledError",
    "ProxyTooOldError",
    "RequestError",
    "RootFS",
    "RuntimeConfig",
    "SkopeoNotFoundError",
    "TransferProgress",
    "UnsafeLayerError",
    "copy_file",
    "list_dir",
    "list_dir_async",
    "pull",
    "pull_async",
    "read_file",
    "read_file_async",
    "read_files",
    "read_files_async",
    "unpack",
    "unpack_async",
]


def _show_public_paths() -> None:
    # Tracebacks and reprs name an exception by its module: show the path users import it
    # from (containers_image_proxy.RequestError), not the private module it is defined in.
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type) and issubclass(obj, BaseException):
            obj.__module__ = __name__


_show_public_paths()
