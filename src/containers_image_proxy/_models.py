"""Image metadata: digests, descriptors, manifests, indexes, configs and layer infos.

The classes mirror the JSON documents of the OCI image specification and their Docker
schema 2 twins. Parsing is strict about types and tolerant about what varies in the wild.
Members the classes do not model are kept in ``extra``, and the parsed document's explicit
nulls and empty arrays are remembered, so ``X.from_json(obj).to_json() == obj`` holds for
every object ``X.from_json`` accepts::

    manifest = ImageManifest.from_bytes(raw)
    for layer in manifest.layers:
        print(layer.digest.hex, layer.size)

The objects are frozen dataclasses; their mappings are plain dicts that should be treated
as read-only. ``dataclasses.replace`` gives a changed copy, whose ``to_json`` then emits the
canonical form (empty optional members left out).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from ._digest import Digest as Digest  # re-exported for the modules that import it from here
from ._errors import ConfigurationError
from ._schema import (
    _array_of,
    _bool,
    _digest,
    _digests,
    _Field,
    _int,
    _layer_size,
    _many,
    _map,
    _Model,
    _object,
    _opt,
    _req,
    _size,
    _str,
    _strs,
)

MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_GZIP = MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE + "+gzip"
MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_ZSTD = MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE + "+zstd"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

_INDEX_TYPES = (MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST)
_MANIFEST_TYPES = (MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST)


@dataclass(frozen=True)
class Platform(_Model):
    """The platform an image runs on (the ``platform`` of an index entry)."""

    architecture: str
    os: str
    variant: Optional[str] = None
    os_version: Optional[str] = None
    os_features: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    _FIELDS = (
        _req("architecture", "architecture", _str),
        _req("os", "os", _str),
        _opt("os.version", "os_version"),
        _many("os.features", "os_features", _strs),
        _opt("variant", "variant"),
    )


@dataclass(frozen=True)
class Descriptor(_Model):
    """A reference to content: its media type, digest and size, plus optional metadata.

    ``data`` is the embedded content, base64-encoded, exactly as in the JSON.
    """

    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Optional[Platform] = None
    artifact_type: Optional[str] = None
    data: Optional[str] = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    _FIELDS = (
        _req("mediaType", "media_type", _str),
        _req("digest", "digest", _digest),
        _req("size", "size", _size),
        _many("urls", "urls", _strs),
        _map("annotations", "annotations"),
        _opt("data", "data"),
        _opt("artifactType", "artifact_type"),
        _opt("platform", "platform", Platform._parse),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "digest", _digest(self.digest, "Descriptor.digest"))
        _size(self.size, "Descriptor.size")


def _schema_version(value: Any, path: str) -> int:
    version: int = _int(value, path)
    if version == 1:
        # skopeo's GetManifest converts or rejects these; only a raw fetch can meet one.
        raise ConfigurationError(f"{path}: Docker schema 1 manifests are not supported")
    return version


@dataclass(frozen=True)
class ImageManifest(_Model):
    """An OCI image manifest or a Docker schema 2 manifest: a config and its layers."""

    config: Descriptor
    layers: tuple[Descriptor, ...] = ()
    schema_version: int = 2
    media_type: Optional[str] = MEDIA_TYPE_OCI_MANIFEST
    annotations: Mapping[str, str] = field(default_factory=dict)
    subject: Optional[Descriptor] = None
    artifact_type: Optional[str] = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    _FIELDS = (
        _req("schemaVersion", "schema_version", _schema_version),
        _opt("mediaType", "media_type"),
        _opt("artifactType", "artifact_type"),
        _req("config", "config", Descriptor._parse),
        _many("layers", "layers", _array_of(Descriptor._parse), always=True),
        _opt("subject", "subject", Descriptor._parse),
        _map("annotations", "annotations"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.media_type in _INDEX_TYPES:
            raise ConfigurationError(
                f"ImageManifest.mediaType: {self.media_type} is an index; use ImageIndex"
            )


@dataclass(frozen=True)
class ImageIndex(_Model):
    """An OCI image index or a Docker manifest list: one manifest per platform."""

    manifests: tuple[Descriptor, ...] = ()
    schema_version: int = 2
    media_type: Optional[str] = MEDIA_TYPE_OCI_INDEX
    annotations: Mapping[str, str] = field(default_factory=dict)
    subject: Optional[Descriptor] = None
    artifact_type: Optional[str] = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    _FIELDS = (
        _req("schemaVersion", "schema_version", _schema_version),
        _opt("mediaType", "media_type"),
        _opt("artifactType", "artifact_type"),
        _many("manifests", "manifests", _array_of(Descriptor._parse), always=True),
        _opt("subject", "subject", Descriptor._parse),
        _map("annotations", "annotations"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.media_type in _MANIFEST_TYPES:
            raise ConfigurationError(
                f"ImageIndex.mediaType: {self.media_type} is an image manifest; use ImageManifest"
            )

    def find(
        self, os: str, architecture: str, variant: Optional[str] = None
    ) -> Optional[Descriptor]:
        """Returns the first entry for this platform, or None (never raises).

        With ``variant=None`` any variant matches. For arm64, no variant and ``"v8"`` are
        the same, as in containers/image::

            index.find("linux", "arm64", "v8")
        """
        v8 = ("v8", None) if architecture == "arm64" else ()
        for entry in self.manifests:
            p = entry.platform
            if p is None or p.os != os or p.architecture != architecture:
                continue
            if variant is None or p.variant == variant or (p.variant in v8 and variant in v8):
                return entry
        return None


@dataclass(frozen=True)
class RootFS(_Model):
    """The ``rootfs`` of an image config: the uncompressed layers' digests (diff ids)."""

    type: str = "layers"
    diff_ids: tuple[Digest, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    _FIELDS = (
        _req("type", "type", _str),
        _many("diff_ids", "diff_ids", _digests, always=True),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "diff_ids", _digests(self.diff_ids, "RootFS.diff_ids"))


@dataclass(frozen=True)
class History(_Model):
    """One entry of an image config's history; ``empty_layer`` entries made no layer."""

    created: Optional[str] = None
    created_by: Optional[str] = None
    author: Optional[str] = None
    comment: Optional[str] = None
    empty_layer: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    _FIELDS = (
        _opt("created", "created"),
        _opt("created_by", "created_by"),
        _opt("author", "author"),
        _opt("comment", "comment"),
        _Field("empty_layer", "empty_layer", _bool, empty=bool),
    )


@dataclass(frozen=True)
class RuntimeConfig(_Model):
    """The ``config`` member of an image config: how to run a container from the image.

    ``entrypoint`` and ``cmd`` are None when unset, which differs from an empty list.
    """

    user: Optional[str] = None
    exposed_ports: Mapping[str, Any] = field(default_factory=dict)
    env: tuple[str, ...] = ()
    entrypoint: Optional[tuple[str, ...]] = None
    cmd: Optional[tuple[str, ...]] = None
    volumes: Mapping[str, Any] = field(default_factory=dict)
    working_dir: Optional[str] = None
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_signal: Optional[str] = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    _FIELDS = (
        _opt("User", "user"),
        _map("ExposedPorts", "exposed_ports", _object),
        _many("Env", "env", _strs),
        _opt("Entrypoint", "entrypoint", _strs),
        _opt("Cmd", "cmd", _strs),
        _map("Volumes", "volumes", _object),
        _opt("WorkingDir", "working_dir"),
        _map("Labels", "labels"),
        _opt("StopSignal", "stop_signal"),
    )


@dataclass(frozen=True)
class ImageConfig(_Model):
    """An image configuration (OCI or Docker): platform, runtime defaults, layers, history.

    ``created`` is kept as the RFC 3339 string of the document.
    """

    architecture: str = ""
    os: str = ""
    variant: Optional[str] = None
    os_version: Optional[str] = None
    os_features: tuple[str, ...] = ()
    created: Optional[str] = None
    author: Optional[str] = None
    config: Optional[RuntimeConfig] = None
    rootfs: RootFS = field(default_factory=RootFS)
    history: tuple[History, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    _FIELDS = (
        _opt("created", "created"),
        _opt("author", "author"),
        _Field("architecture", "architecture", _str, empty=str, always=True),
        _opt("variant", "variant"),
        _Field("os", "os", _str, empty=str, always=True),
        _opt("os.version", "os_version"),
        _many("os.features", "os_features", _strs),
        _opt("config", "config", RuntimeConfig._parse),
        _Field("rootfs", "rootfs", RootFS._parse, RootFS, always=True),
        _many("history", "history", _array_of(History._parse)),
    )

    @property
    def platform(self) -> Platform:
        """The platform this image is for."""
        return Platform(self.architecture, self.os, self.variant, self.os_version, self.os_features)


@dataclass(frozen=True)
class LayerInfo(_Model):
    """A layer as the proxy's GetLayerInfo reports it; ``size`` is -1 when unknown."""

    digest: Digest
    size: int
    media_type: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    _FIELDS = (
        _req("digest", "digest", _digest),
        _req("size", "size", _layer_size),
        _req("media_type", "media_type", _str),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "digest", _digest(self.digest, "LayerInfo.digest"))
        _layer_size(self.size, "LayerInfo.size")

    @classmethod
    def from_descriptor(cls, descriptor: Descriptor) -> LayerInfo:
        """Returns the layer info of a manifest's layer descriptor."""
        return cls(descriptor.digest, descriptor.size, descriptor.media_type)
