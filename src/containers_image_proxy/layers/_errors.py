"""Errors raised while reading or applying layers."""

from __future__ import annotations

from .._errors import BlobVerificationError, ProxyError


class UnsafeLayerError(ProxyError):
    """A layer entry cannot be honoured inside the destination root.

    Raised for names that are not valid, whiteouts that name the root (or its parent),
    hardlinks to paths the tree does not have, entries under a non-directory, and similar.
    ``entry`` is the entry's name as the tar stores it, ``layer`` the layer's digest when
    known.
    """

    def __init__(self, entry: str, reason: str, layer: str = "") -> None:
        self.entry = entry
        self.reason = reason
        self.layer = layer
        where = f" in layer {layer}" if layer else ""
        super().__init__(f"unsafe layer entry {entry!r}{where}: {reason}")

    def with_layer(self, layer: str) -> UnsafeLayerError:
        """The same error, naming ``layer`` (used once the layer is known)."""
        if self.layer or not layer:
            return self
        err = UnsafeLayerError(self.entry, self.reason, layer)
        err.__cause__ = self.__cause__
        return err


class LayerFormatError(ProxyError):
    """A layer is not a readable tar stream (bad compression, corrupt or truncated data,
    an unsupported media type such as an encrypted layer, a media type that is not a tar
    layer at all, as an OCI artifact's WebAssembly or model blob, refused before it is
    fetched, or a count mismatch between the manifest's layers and the config's
    diff_ids). ``layer`` is the layer's digest when known."""

    def __init__(self, message: str, layer: str = "") -> None:
        self.layer = layer
        where = f"layer {layer}: " if layer else ""
        super().__init__(f"{where}{message}")


class LayerDigestError(BlobVerificationError):
    """A layer's uncompressed content does not match the config's ``rootfs.diff_ids``.

    ``digest`` is the expected diff_id, ``actual`` the digest computed, ``layer`` the
    compressed blob's digest.
    """

    def __init__(self, expected: str, actual: str, layer: str = "") -> None:
        self.expected = expected
        self.actual = actual
        self.layer = layer
        of = f" (blob {layer})" if layer else ""
        super().__init__(expected, f"uncompressed layer{of} has digest {actual}")


__all__ = ["LayerDigestError", "LayerFormatError", "UnsafeLayerError"]
