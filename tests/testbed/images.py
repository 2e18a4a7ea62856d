"""OCI image layouts built directly in Python, deterministically.

Everything here depends only on its arguments (seeds, contents): building the same images
twice gives the same digests, so tests can assert exact values and failures reproduce.
No external tool is involved except in :func:`convert`, which uses skopeo to turn a layout
into the other transports (oci-archive:, docker-archive:, dir:).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import struct
import tarfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ._run import run

OCI_LAYOUT_VERSION = "1.0.0"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

# A fixed creation time: a real clock would change every digest on every run.
CREATED = "2024-01-01T00:00:00Z"

PathLike = Union[str, Path]
Descriptor = dict[str, Any]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Compact JSON, keys in insertion order: stable bytes for stable digests."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def gzip_deterministic(data: bytes, level: int = 6) -> bytes:
    """gzip with a fixed header (no name, mtime 0, OS "unknown").

    gzip.compress puts a different OS byte in the header depending on the Python version
    (it switched to zlib's own header writer in 3.11); writing the header here keeps the
    blob digests the same on every interpreter the project supports.
    """
    header = b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x00\xff"
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(data) + compressor.flush()
    trailer = struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return header + body + trailer


def make_tar(files: Mapping[str, bytes]) -> bytes:
    """A tar archive of ``files`` (path -> content) that depends on nothing but them.

    Entries are sorted, owned by 0:0 with mode 0644 (directories 0755) and mtime 0. Parent
    directories get their own entries, as in tars made by image builders. A path ending in
    "/" is an (empty) directory; a basename starting with ".wh." is an OCI whiteout.
    """
    entries: dict[str, Optional[bytes]] = {}
    for raw_name, content in files.items():
        name = raw_name.lstrip("/")
        is_dir = name.endswith("/")
        name = name.rstrip("/")
        if not name:
            raise ValueError(f"empty path in tar: {raw_name!r}")
        parts = name.split("/")
        for depth in range(1, len(parts)):
            entries.setdefault("/".join(parts[:depth]), None)
        entries[name] = None if is_dir else content

    buf = io.BytesIO()
    # PAX only adds extended headers where USTAR cannot express an entry (long names).
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            data = entries[name]
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.mode = 0o644
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def random_bytes(seed: int, size: int) -> bytes:
    """``size`` pseudo-random (incompressible) bytes determined by ``seed``."""
    return random.Random(seed).randbytes(size)


def random_layer(seed: int, size: int) -> bytes:
    """A layer tar holding one file of ``size`` pseudo-random bytes derived from ``seed``."""
    return make_tar({f"data/random-{seed}.bin": random_bytes(seed, size)})


@dataclass(frozen=True)
class LayerInfo:
    """One layer as stored (``blob``, ``digest``, ``size``, ``media_type``) and unpacked."""

    blob: bytes
    digest: str
    size: int
    media_type: str
    diff_id: str
    uncompressed_size: int

    @property
    def descriptor(self) -> Descriptor:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class ImageInfo:
    """What a test needs to check an image read back through skopeo."""

    tag: Optional[str]
    manifest: bytes
    manifest_digest: str
    config: bytes
    config_digest: str
    layers: tuple[LayerInfo, ...]
    architecture: str
    os: str
    variant: Optional[str] = None

    @property
    def manifest_json(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.manifest)
        return result

    @property
    def config_json(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.config)
        return result

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    @property
    def platform(self) -> dict[str, str]:
        platform = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            platform["variant"] = self.variant
        return platform

    @property
    def descriptor(self) -> Descriptor:
        return {
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": self.manifest_digest,
            "size": len(self.manifest),
        }


@dataclass(frozen=True)
class IndexInfo:
    """A multi-platform OCI index and the images it lists."""

    tag: Optional[str]
    index: bytes
    digest: str
    images: tuple[ImageInfo, ...]

    @property
    def index_json(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.index)
        return result

    def for_platform(
        self, architecture: str, os: str = "linux", variant: Optional[str] = None
    ) -> ImageInfo:
        """The instance for a platform (variant ignored when None)."""
        for image in self.images:
            if (image.architecture, image.os) == (architecture, os) and (
                variant is None or image.variant == variant
            ):
                return image
        raise KeyError(f"no image for {os}/{architecture} {variant or ''}".rstrip())


class LayoutBuilder:
    """Writes an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256``).

    ``index.json`` is rewritten after every tagging call, so the layout is valid at any
    point. Opening an existing layout keeps its tags.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.blobs = self.path / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_bytes(
            canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION})
        )
        self._manifests: list[Descriptor] = []
        index_path = self.path / "index.json"
        if index_path.exists():
            self._manifests = list(json.loads(index_path.read_bytes()).get("manifests", []))
        self._write_index()

    def ref(self, tag: str) -> str:
        """The skopeo reference of a tag in this layout."""
        return f"oci:{self.path}:{tag}"

    def blob_path(self, digest: str) -> Path:
        return blob_path(self.path, digest)

    def add_blob(self, data: bytes, media_type: str = "application/octet-stream") -> Descriptor:
        digest = sha256_digest(data)
        target = self.blob_path(digest)
        if not target.exists():
            # Write then rename: a reader (or a crashed build) never sees half a blob.
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def tag(self, tag: str, descriptor: Descriptor) -> None:
        """Point ``tag`` at a manifest or index descriptor (replacing an older one)."""
        self._manifests = [
            m for m in self._manifests if m.get("annotations", {}).get(REF_NAME_ANNOTATION) != tag
        ]
        entry = dict(descriptor)
        entry["annotations"] = {**entry.get("annotations", {}), REF_NAME_ANNOTATION: tag}
        self._manifests.append(entry)
        self._write_index()

    def add_image(
        self,
        tag: Optional[str],
        layers: Sequence[bytes],
        compression: Optional[str] = "gzip",
        config_extra: Optional[Mapping[str, Any]] = None,
        architecture: str = "amd64",
        os: str = "linux",
        variant: Optional[str] = None,
        annotations: Optional[Mapping[str, str]] = None,
    ) -> ImageInfo:
        """Store an image made of ``layers`` (tar data) and tag it unless ``tag`` is None.

        ``config_extra`` is merged into the top level of the image config, after the
        defaults (so it may replace "config", "history" ...); "rootfs" is always computed.
        """
        if compression not in ("gzip", None):
            raise ValueError(f"unsupported compression {compression!r}")
        layer_infos = []
        for tar_data in layers:
            if compression == "gzip":
                blob, media_type = gzip_deterministic(tar_data), MEDIA_TYPE_LAYER_GZIP
            else:
                blob, media_type = tar_data, MEDIA_TYPE_LAYER
            desc = self.add_blob(blob, media_type)
            layer_infos.append(
                LayerInfo(
                    blob=blob,
                    digest=desc["digest"],
                    size=desc["size"],
                    media_type=media_type,
                    diff_id=sha256_digest(tar_data),
                    uncompressed_size=len(tar_data),
                )
            )

        config: dict[str, Any] = {
            "created": CREATED,
            "architecture": architecture,
            "os": os,
        }
        if variant:
            config["variant"] = variant
        config["config"] = {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/sh"]}
        config["history"] = [
            {"created": CREATED, "created_by": f"testbed layer {i}"}
            for i in range(len(layer_infos))
        ]
        if config_extra:
            config.update(config_extra)
        config["rootfs"] = {"type": "layers", "diff_ids": [li.diff_id for li in layer_infos]}
        config_bytes = canonical_json(config)
        config_desc = self.add_blob(config_bytes, MEDIA_TYPE_CONFIG)

        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": config_desc,
            "layers": [li.descriptor for li in layer_infos],
        }
        if annotations:
            manifest["annotations"] = dict(annotations)
        manifest_bytes = canonical_json(manifest)
        manifest_desc = self.add_blob(manifest_bytes, MEDIA_TYPE_MANIFEST)

        info = ImageInfo(
            tag=tag,
            manifest=manifest_bytes,
            manifest_digest=manifest_desc["digest"],
            config=config_bytes,
            config_digest=config_desc["digest"],
            layers=tuple(layer_infos),
            architecture=architecture,
            os=os,
            variant=variant,
        )
        if tag is not None:
            self.tag(tag, info.descriptor)
        return info

    def add_index(self, tag: Optional[str], images: Sequence[ImageInfo]) -> IndexInfo:
        """Store a multi-platform index over ``images`` (already added, untagged or not)."""
        index = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": [{**image.descriptor, "platform": image.platform} for image in images],
        }
        index_bytes = canonical_json(index)
        desc = self.add_blob(index_bytes, MEDIA_TYPE_INDEX)
        info = IndexInfo(tag=tag, index=index_bytes, digest=desc["digest"], images=tuple(images))
        if tag is not None:
            self.tag(tag, desc)
        return info

    def _write_index(self) -> None:
        index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": self._manifests}
        tmp = self.path / "index.json.tmp"
        tmp.write_bytes(canonical_json(index))
        tmp.replace(self.path / "index.json")


# --- Ready-made images ---------------------------------------------------------------


def small_image(
    builder: LayoutBuilder,
    tag: Optional[str] = "small",
    seed: int = 1,
    compression: Optional[str] = "gzip",
    architecture: str = "amd64",
    variant: Optional[str] = None,
) -> ImageInfo:
    """Three layers: a few files, 64 KiB of random data, a whiteout of a layer-1 file."""
    base = make_tar(
        {
            "etc/os-release": f'NAME="testbed"\nVERSION_ID="{seed}"\n'.encode(),
            "etc/motd": b"deleted by the third layer\n",
            "bin/hello": b"#!/bin/sh\necho hello\n",
            "tmp/": b"",
        }
    )
    data = random_layer(seed, 64 * 1024)
    whiteout = make_tar({"etc/.wh.motd": b"", "etc/hostname": f"testbed-{seed}\n".encode()})
    return builder.add_image(
        tag,
        [base, data, whiteout],
        compression=compression,
        config_extra={
            "config": {
                "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
                "Cmd": ["/bin/hello"],
                "Labels": {"org.example.testbed.seed": str(seed)},
            },
            "history": [
                {"created": CREATED, "created_by": "ADD base"},
                {"created": CREATED, "created_by": "ADD data"},
                {"created": CREATED, "created_by": "RUN rm /etc/motd"},
                {"created": CREATED, "created_by": "LABEL seed", "empty_layer": True},
            ],
        },
        architecture=architecture,
        variant=variant,
    )


def big_config_image(
    builder: LayoutBuilder, tag: Optional[str] = "bigconfig", seed: int = 2
) -> ImageInfo:
    """An image whose config exceeds 1 MiB, through a long history.

    Far over the 64 KiB pipe buffer: a client that does not drain the config pipe before
    FinishPipe deadlocks on it.
    """
    rng = random.Random(seed)
    history: list[dict[str, Any]] = [{"created": CREATED, "created_by": "ADD base"}]
    for i in range(1200):
        # Random words, so that nothing (not even a future compressing proxy) shrinks it.
        words = " ".join(f"{rng.getrandbits(64):016x}" for _ in range(55))
        history.append(
            {"created": CREATED, "created_by": f"RUN step {i} {words}", "empty_layer": True}
        )
    info = builder.add_image(
        tag,
        [make_tar({"etc/big-config": f"seed {seed}\n".encode()})],
        config_extra={"history": history},
    )
    if len(info.config) <= 1024 * 1024:
        raise AssertionError(f"big config is only {len(info.config)} bytes")
    return info


def many_layers_image(
    builder: LayoutBuilder, tag: Optional[str] = "manylayers", count: int = 300
) -> ImageInfo:
    """``count`` tiny layers: GetLayerInfo replies and layer lists get large."""
    layers = [make_tar({f"layers/{i:04d}": f"layer {i}\n".encode()}) for i in range(count)]
    return builder.add_image(
        tag,
        layers,
        config_extra={
            "history": [{"created": CREATED, "created_by": f"ADD {i}"} for i in range(count)]
        },
    )


# Platforms of the multi-arch index: the host's (amd64) and a few others, one with a variant.
MULTIARCH_PLATFORMS: tuple[tuple[str, Optional[str]], ...] = (
    ("amd64", None),
    ("arm64", "v8"),
    ("s390x", None),
    ("ppc64le", None),
)


def multiarch_index(builder: LayoutBuilder, tag: Optional[str] = "multiarch") -> IndexInfo:
    """An OCI index over small images for several linux platforms (distinct contents)."""
    images = [
        small_image(builder, None, seed=100 + i, architecture=arch, variant=variant)
        for i, (arch, variant) in enumerate(MULTIARCH_PLATFORMS)
    ]
    return builder.add_index(tag, images)


@dataclass(frozen=True)
class Layouts:
    """The ready-made images, all in one layout at ``path``."""

    path: Path
    small: ImageInfo
    small_uncompressed: ImageInfo
    big_config: ImageInfo
    many_layers: ImageInfo
    multiarch: IndexInfo
    tags: tuple[str, ...] = field(default=())

    def ref(self, tag: str) -> str:
        return f"oci:{self.path}:{tag}"


def build_standard_layout(path: PathLike) -> Layouts:
    builder = LayoutBuilder(path)
    small = small_image(builder, "small")
    raw = small_image(builder, "small-uncompressed", compression=None)
    big = big_config_image(builder, "bigconfig")
    many = many_layers_image(builder, "manylayers")
    multi = multiarch_index(builder, "multiarch")
    return Layouts(
        path=builder.path,
        small=small,
        small_uncompressed=raw,
        big_config=big,
        many_layers=many,
        multiarch=multi,
        tags=("small", "small-uncompressed", "bigconfig", "manylayers", "multiarch"),
    )


# --- Fault injection -----------------------------------------------------------------


def blob_path(layout: Union[PathLike, LayoutBuilder], digest: str) -> Path:
    """Where a blob lives in the layout at ``layout`` (a directory or a builder)."""
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or len(hexdigest) != 64:
        raise ValueError(f"not a sha256 digest: {digest!r}")
    root = layout.path if isinstance(layout, LayoutBuilder) else Path(layout)
    return root / "blobs" / "sha256" / hexdigest


def corrupt_blob(layout: Union[PathLike, LayoutBuilder], digest: str) -> None:
    """Flip one byte in the middle of a blob: same size, wrong digest."""
    path = blob_path(layout, digest)
    data = bytearray(path.read_bytes())
    if not data:
        raise ValueError(f"cannot corrupt the empty blob {digest}")
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate_blob(
    layout: Union[PathLike, LayoutBuilder], digest: str, keep: Optional[int] = None
) -> None:
    """Cut a blob to ``keep`` bytes (default: half): short size, wrong digest."""
    path = blob_path(layout, digest)
    size = path.stat().st_size
    new_size = size // 2 if keep is None else keep
    if not 0 <= new_size < size:
        raise ValueError(f"cannot truncate {size} bytes to {new_size}")
    with path.open("r+b") as f:
        f.truncate(new_size)


# --- Other transports ------------------------------------------------------------------


def convert(
    skopeo_argv: Sequence[str],
    src_ref: str,
    dst_ref: str,
    extra_args: Sequence[str] = (),
    timeout: float = 300,
) -> str:
    """``skopeo copy`` from ``src_ref`` to ``dst_ref``; returns ``dst_ref``.

    Typical destinations: ``oci-archive:FILE:TAG``, ``dir:DIR``, and
    ``docker-archive:FILE:example/img:tag``; a docker archive stores a docker reference,
    not a bare tag, and without one it holds an untagged image.
    The copy ignores the machine's policy.json (--insecure-policy): converting test data
    is not what a test checks.
    """
    run([*skopeo_argv, "--insecure-policy", "copy", *extra_args, src_ref, dst_ref], timeout=timeout)
    return dst_ref


WASM_CONFIG = "application/vnd.wasm.config.v0+json"
WASM_LAYER = "application/wasm"


def add_wasm_artifact(builder: LayoutBuilder, tag: str) -> tuple[bytes, dict[str, Any]]:
    """An OCI artifact: a custom config media type and artifactType, one wasm blob."""
    # The magic number and version of a WebAssembly binary, then an empty module body.
    wasm = b"\x00asm\x01\x00\x00\x00" + bytes(range(256)) * 64
    config = builder.add_blob(canonical_json({"wasm": True}), WASM_CONFIG)
    layer = builder.add_blob(wasm, WASM_LAYER)
    layer["annotations"] = {"org.opencontainers.image.title": "module.wasm"}
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.wasm.v1",
        "config": config,
        "layers": [layer],
    }
    desc = builder.add_blob(canonical_json(manifest), manifest["mediaType"])
    builder.tag(tag, desc)
    return wasm, manifest
