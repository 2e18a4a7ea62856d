"""The benchmark's inputs: OCI layouts written here, and a local registry filled from them.

Layouts are cached under the work directory, keyed by their parameters: the 1 GiB one takes a
few seconds to write, and its content depends only on the seed. Big layers are uncompressed
tar files streamed to disk, never held in memory.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import random
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from testbed.images import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_MANIFEST,
    LayoutBuilder,
    canonical_json,
    make_tar,
)
from testbed.registry import Registry

REPO_ROOT = Path(__file__).resolve().parent.parent

_BLOCK = 1 << 20


@dataclass(frozen=True)
class BlobInfo:
    """One layer as stored: where, its digest and size."""

    path: str
    digest: str
    size: int


@dataclass(frozen=True)
class ImageInput:
    """An image in a layout, ready to be read: ``ref`` is its ``oci:`` reference."""

    ref: str
    layers: Tuple[BlobInfo, ...]

    @property
    def total(self) -> int:
        return sum(layer.size for layer in self.layers)


class _Content:
    """Incompressible bytes at memory speed: rotations of one random block.

    Drawing every byte from a PRNG costs about 4 s per GiB here; rotating a random 1 MiB
    block by random offsets gives distinct, incompressible chunks at the cost of a copy.
    Nothing on the measured paths compresses or deduplicates, so this is as good as random.
    """

    def __init__(self, seed: int, size: int) -> None:
        self._rng = random.Random(seed)
        self._block = self._rng.randbytes(_BLOCK)
        self._left = size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        out = bytearray()
        while len(out) < n:
            k = self._rng.randrange(_BLOCK)
            out += self._block[k:] + self._block[:k]
        self._left -= n
        return bytes(out[:n])


class _HashingWriter:
    def __init__(self, f: Any) -> None:
        self.f = f
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return int(self.f.write(data))


def _write_layer(builder: LayoutBuilder, seed: int, size: int) -> BlobInfo:
    """A tar holding one file of ``size`` incompressible bytes, streamed into the layout."""
    tmp = builder.blobs / f"layer-{seed}.tmp"
    with tmp.open("wb") as f:
        w = _HashingWriter(f)
        with tarfile.open(fileobj=w, mode="w|", format=tarfile.PAX_FORMAT, bufsize=_BLOCK) as tar:
            info = tarfile.TarInfo(f"data/random-{seed}.bin")
            info.size, info.mtime, info.mode = size, 0, 0o644
            tar.addfile(info, _Content(seed, size))  # type: ignore[arg-type]
    digest = "sha256:" + w.hash.hexdigest()
    target = builder.blob_path(digest)
    tmp.replace(target)
    return BlobInfo(str(target), digest, w.size)


def _add_image(builder: LayoutBuilder, tag: str, layers: Sequence[BlobInfo], label: str) -> None:
    config = canonical_json(
        {
            "created": "2024-01-01T00:00:00Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"bench": label}},
            "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": builder.add_blob(config, MEDIA_TYPE_CONFIG),
            "layers": [
                {"mediaType": MEDIA_TYPE_LAYER, "digest": layer.digest, "size": layer.size}
                for layer in layers
            ],
        }
    )
    builder.tag(tag, builder.add_blob(manifest, MEDIA_TYPE_MANIFEST))


def big_layers_image(workdir: Path, count: int, size: int, seed: int) -> ImageInput:
    """An image of ``count`` uncompressed layers of ``size`` random bytes each (cached)."""
    path = workdir / f"layout-{count}x{size}-s{seed}"
    stamp = path / "bench-ready.json"
    if stamp.exists():
        saved = json.loads(stamp.read_text())
        layers = tuple(BlobInfo(**layer) for layer in saved["layers"])
        if all(Path(layer.path).exists() for layer in layers):
            return ImageInput(saved["ref"], layers)
    shutil.rmtree(path, ignore_errors=True)
    builder = LayoutBuilder(path)
    layers = tuple(_write_layer(builder, seed + i, size) for i in range(count))
    _add_image(builder, "bench", layers, f"{count}x{size}")
    image = ImageInput(builder.ref("bench"), layers)
    stamp.write_text(json.dumps({"ref": image.ref, "layers": [vars(la) for la in layers]}))
    return image


# What a scanner reads from every image (bench/scan_rows.py): in the bottom layer of each.
SCANNED = ("/etc/os-release", "/var/lib/dpkg/status")


def _dpkg_status(rng: random.Random, packages: int = 400) -> bytes:
    """A dpkg status file of made-up packages, about 100 KiB as in a small Debian image."""
    out = []
    for i in range(packages):
        out.append(
            f"Package: pkg{i}-{rng.randrange(1 << 30):x}\nStatus: install ok installed\n"
            f"Priority: optional\nInstalled-Size: {rng.randrange(10, 5000)}\n"
            f"Version: {rng.randrange(1, 9)}.{rng.randrange(99)}-{rng.randrange(9)}\n"
            f"Description: package {i} of the benchmark\n\n"
        )
    return "".join(out).encode()


def tags_layout(workdir: Path, count: int) -> Tuple[Path, List[str]]:
    """A layout of ``count`` small, distinct images tagged t000, t001 ... (cached). Each has
    two layers: a base with /etc/os-release and the dpkg status file, and 4 KiB of its own."""
    path = workdir / f"layout-tags2-{count}"
    tags = [f"t{i:03d}" for i in range(count)]
    stamp = path / "bench-ready"
    if not stamp.exists():
        shutil.rmtree(path, ignore_errors=True)
        builder = LayoutBuilder(path)
        for i, tag in enumerate(tags):
            rng = random.Random(i)
            base = {
                "etc/os-release": f'PRETTY_NAME="Bench Linux {i}"\nID=bench\n'.encode(),
                "var/lib/dpkg/status": _dpkg_status(rng),
            }
            own = {f"etc/bench-{i}": rng.randbytes(4096)}
            blobs = [builder.add_blob(make_tar(files), MEDIA_TYPE_LAYER) for files in (base, own)]
            infos = [BlobInfo("", b["digest"], b["size"]) for b in blobs]
            _add_image(builder, tag, infos, tag)
        stamp.write_text("ok")
    return path, tags


class RegistryWithTags:
    """A local plain-HTTP registry holding the tag images in one repository."""

    REPO = "bench/tags"

    def __init__(self, layout: Path, tags: Sequence[str], skopeo: Sequence[str]) -> None:
        self.layout = layout
        self.tags = list(tags)
        self.skopeo = list(skopeo)
        self.registry: Optional[Registry] = None

    def start(self) -> None:
        registry = Registry("plain")
        registry.start()
        self.registry = registry
        try:
            # pushes are mostly waiting on the registry: a few at a time
            with concurrent.futures.ThreadPoolExecutor(4) as ex:
                pushes = [
                    ex.submit(
                        registry.push,
                        f"oci:{self.layout}:{tag}",
                        f"{self.REPO}:{tag}",
                        self.skopeo,
                    )
                    for tag in self.tags
                ]
                for push in pushes:
                    push.result()
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> Optional[int]:
        """The registry's process id, to read its CPU time."""
        proc = self.registry._proc if self.registry is not None else None
        return proc.pid if proc is not None else None

    @property
    def port(self) -> int:
        assert self.registry is not None
        return self.registry.port

    def refs(self, port: Optional[int] = None) -> List[str]:
        """``docker://`` references of every tag, through ``port`` (a relay) if given."""
        host = f"127.0.0.1:{port if port is not None else self.port}"
        return [f"docker://{host}/{self.REPO}:{tag}" for tag in self.tags]

    def stop(self) -> None:
        if self.registry is not None:
            self.registry.stop()
            self.registry = None


def disk_free(path: Path) -> int:
    """Bytes available to us under ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
