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

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, TypeVar, Union, cast

from ._digest import Digest as Digest  # re-exported for the modules that import it from here
from ._digest import _kind, _type_error
from ._errors import ConfigurationError
from ._protocol import MAX_JSON_DEPTH, too_deep

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

# --- parsing and dumping of JSON members ---------------------------------------------------
# A parser takes the raw JSON value and the member's path (for errors) and returns the
# Python value. Dumping needs no table: _dump turns any model value back into JSON.

_Parser = Callable[[Any, str], Any]


def _typed(kind: Any, expected: str, minimum: Optional[int] = None) -> _Parser:
    def parse(value: Any, path: str) -> Any:
        # JSON true is not a number, although bool is an int subclass.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise _type_error(path, expected, value)
        if minimum is not None and value < minimum:
            raise ConfigurationError(f"{path}: expected {expected}, got {value}")
        return value

    return parse


_str = _typed(str, "a string")
_int = _typed(int, "an integer")
_bool = _typed(bool, "a boolean")
_size = _typed(int, "a size >= 0", 0)
_layer_size = _typed(int, "a size >= 0 or -1 (unknown)", -1)


def _digest(value: Any, path: str) -> Digest:
    text = _str(value, path)
    try:
        return Digest.parse(text)
    except ConfigurationError as e:
        raise ConfigurationError(f"{path}: {e}") from None


def _array_of(item: _Parser) -> _Parser:
    def parse(value: Any, path: str) -> tuple[Any, ...]:
        if not isinstance(value, (list, tuple)):
            raise _type_error(path, "an array", value)
        return tuple(item(v, f"{path}[{i}]") for i, v in enumerate(value))

    return parse


_strs = _array_of(_str)
_digests = _array_of(_digest)


def _object(value: Any, path: str) -> dict[str, Any]:
    """Copies a JSON object with string keys; its values stay unchecked JSON."""
    if not isinstance(value, Mapping):
        raise _type_error(path, "an object", value)
    for key in value:
        if not isinstance(key, str):
            raise ConfigurationError(f"{path}: member names must be strings, got {key!r}")
    return {key: _dump(item) for key, item in value.items()}


def _str_map(value: Any, path: str) -> dict[str, str]:
    obj = _object(value, path)
    for key, item in obj.items():
        _str(item, f"{path}[{key!r}]")
    return obj


_SCALARS = (str, int, float, bool, type(None))


def _dump(value: Any) -> Any:
    """Turns a value into fresh JSON data, so that no two objects share a dict or list."""
    # exact types first: what json.loads makes, checked without the ABC machinery
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is dict:
        return {key: _dump(item) for key, item in value.items()}
    if kind is list:
        return [_dump(item) for item in value]
    if isinstance(value, _Model):
        return value.to_json()
    if isinstance(value, Digest):
        return str(value)
    if isinstance(value, Mapping):
        return {key: _dump(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_dump(item) for item in value]
    return value


def _none() -> None:
    return None


@dataclass(frozen=True)
class _Field:
    """How one JSON member maps to one attribute."""

    key: str  # the JSON member name
    attr: str  # the attribute name
    parse: _Parser
    empty: Callable[[], Any] = _none  # the value when the member is absent or null
    required: bool = False  # absent or null is an error
    always: bool = False  # to_json emits it even when empty (for objects not parsed)


def _req(key: str, attr: str, parse: _Parser) -> _Field:
    return _Field(key, attr, parse, required=True, always=True)


def _opt(key: str, attr: str, parse: _Parser = _str) -> _Field:
    return _Field(key, attr, parse)


def _many(key: str, attr: str, parse: _Parser, always: bool = False) -> _Field:
    return _Field(key, attr, parse, tuple, always=always)


def _map(key: str, attr: str, parse: _Parser = _str_map) -> _Field:
    return _Field(key, attr, parse, dict)


@dataclass(frozen=True)
class _Shape:
    """What to_json needs to reproduce a parsed object exactly."""

    keys: tuple[str, ...]  # member names in document order
    nulls: frozenset[str]  # modelled members that were explicitly null


_M = TypeVar("_M", bound="_Model")


class _Model:
    """The JSON mapping shared by the model classes, driven by each class's ``_FIELDS``."""

    _FIELDS: ClassVar[tuple[_Field, ...]] = ()
    _KEYS: ClassVar[frozenset[str]] = frozenset()  # the members of _FIELDS, made once
    extra: Mapping[str, Any]
    # Set by from_json only, so that replace() and hand-built objects emit canonical JSON.
    _shape: Optional[_Shape] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._KEYS = frozenset(f.key for f in cls._FIELDS)

    def __post_init__(self) -> None:
        clash = sorted(self._KEYS.intersection(self.extra)) if self.extra else ()
        if clash:
            raise ConfigurationError(
                f"{type(self).__name__}.extra must not hold modelled members: {', '.join(clash)}"
            )
        for f in self._FIELDS:
            # Accept lists from hand-built objects, but keep the frozen objects' tuples.
            value = getattr(self, f.attr)
            if isinstance(value, list):
                object.__setattr__(self, f.attr, tuple(value))

    @classmethod
    def from_json(cls: type[_M], obj: Mapping[str, Any]) -> _M:
        """Builds the object from parsed JSON; a malformed one raises ConfigurationError."""
        try:
            return cls._parse(obj, cls.__name__)
        except RecursionError:
            raise ConfigurationError(f"{cls.__name__}: JSON nested too deeply") from None

    @classmethod
    def _parse(cls: type[_M], obj: Any, path: str) -> _M:
        if not isinstance(obj, Mapping):
            raise _type_error(path, "a JSON object", obj)
        values: dict[str, Any] = {}
        nulls = set()
        for f in cls._FIELDS:
            where = f"{path}.{f.key}"
            raw = obj.get(f.key)
            if raw is not None:
                values[f.attr] = f.parse(raw, where)
            elif f.required:
                state = "null" if f.key in obj else "missing"
                raise ConfigurationError(f"{where}: required member is {state}")
            else:
                values[f.attr] = f.empty()
                if f.key in obj:
                    nulls.add(f.key)
        known = cls._KEYS
        extra = _object({k: v for k, v in obj.items() if k not in known}, path)
        instance = cast(Any, cls)(extra=extra, **values)
        object.__setattr__(instance, "_shape", _Shape(tuple(obj), frozenset(nulls)))
        return cast(_M, instance)

    @classmethod
    def from_bytes(cls: type[_M], data: Union[bytes, bytearray, memoryview]) -> _M:
        """Parses a JSON document; invalid JSON or content raises ConfigurationError."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ConfigurationError(f"{cls.__name__}: expected bytes, got {_kind(data)}")
        data = bytes(data)
        deep = False
        try:
            obj = json.loads(data)
            deep = too_deep(obj, data)
        except RecursionError:
            deep = True
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise ConfigurationError(f"{cls.__name__}: not valid JSON: {e}") from None
        if deep:
            raise ConfigurationError(
                f"{cls.__name__}: JSON nested more than {MAX_JSON_DEPTH} levels deep"
            )
        return cls.from_json(obj)

    def to_json(self) -> dict[str, Any]:
        """Returns the object as fresh JSON data (dicts, lists, str, int, bool, None).

        For an object made by ``from_json`` this equals the object it was made from.
        """
        shape = self._shape
        out: dict[str, Any] = {}
        for f in self._FIELDS:
            value = getattr(self, f.attr)
            empty = value == f.empty()
            if shape is not None and f.key in shape.nulls and empty:
                out[f.key] = None
            elif not empty or (f.key in shape.keys if shape is not None else f.always):
                out[f.key] = _dump(value)
        for key, value in self.extra.items():
            out.setdefault(key, _dump(value))
        if shape is not None:
            # Document order first; members added since come last, in their own order.
            rank = {key: i for i, key in enumerate(shape.keys)}
            out = {key: out[key] for key in sorted(out, key=lambda k: rank.get(k, len(rank)))}
        return out


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
        """Returns the first entry for this platform, or None.

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
