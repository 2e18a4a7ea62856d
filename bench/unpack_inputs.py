"""The images of bench/bench_unpack.py: synthetic layers of large files or many small
ones, written streaming into an OCI layout (never in memory) and cached."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import shutil
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

MiB = 1 << 20
MEDIA_TYPE_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def log(msg: str) -> None:
    print(f"[bench-unpack] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Image:
    label: str
    layout: Path
    tag: str
    layers: int
    blob_bytes: int  # compressed, all layers
    tar_bytes: int  # uncompressed, all layers

    @property
    def ref(self) -> str:
        return f"oci:{self.layout}:{self.tag}"

    @property
    def umoci_image(self) -> str:
        return f"{self.layout}:{self.tag}"


class _HashingWriter:
    """A write-only file that hashes and counts what goes through it."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.inner.write(data)

    def flush(self) -> None:
        self.inner.flush()


class _Content:
    """Incompressible bytes at memory speed: slices of one random block at moving offsets
    (a PRNG per byte would take longer than the benchmark itself)."""

    BLOCK = 4 * MiB

    def __init__(self, seed: int) -> None:
        block = random.Random(seed).randbytes(self.BLOCK)
        self.ring = block + block  # any slice of up to BLOCK bytes is contiguous
        self.pos = 0

    def take(self, n: int) -> bytes:
        parts = []
        while n > 0:
            k = min(n, self.BLOCK)
            parts.append(self.ring[self.pos : self.pos + k])
            # An odd step: files do not repeat one another block for block.
            self.pos = (self.pos + k + 4093) % self.BLOCK
            n -= k
        return b"".join(parts)

    def reader(self, size: int) -> Any:
        content = self

        class Reader:
            left = size

            def read(self, n: int = -1) -> bytes:
                n = self.left if n < 0 else min(n, self.left)
                self.left -= n
                return content.take(n)

        return Reader()


def synthetic_inputs(workdir: Path, big: int, many: int) -> list[Image]:
    """The synthetic images: layers of ``big`` and ``big // 4`` MiB (none when 0), one of
    ``many`` files of 4 KiB (none when 0). Built once, cached under ``workdir``."""
    images = [big_input(workdir, mib) for mib in sorted({max(big // 4, 1), big} if big > 0 else ())]
    if many > 0:
        images.append(many_files_input(workdir, many))
    return images


def big_input(workdir: Path, mib: int) -> Image:
    """One layer of ``mib`` MiB: a quarter in 4 files, the rest in 1 MiB files."""
    sizes = [mib * MiB // 16] * 4 + [MiB] * (mib - mib // 4)
    return synthetic_input(workdir, f"big-{mib}", f"synthetic, 1 layer of {mib} MiB", sizes)


def many_files_input(workdir: Path, count: int) -> Image:
    """One layer of ``count`` files of 4 KiB: what costs is the entries, not the bytes."""
    label = f"synthetic, 1 layer of {count} files of 4 KiB"
    return synthetic_input(workdir, f"files-{count}", label, [4096] * count)


def synthetic_input(workdir: Path, key: str, label: str, sizes: list[int]) -> Image:
    """One gzip layer holding files of ``sizes`` bytes, 100 to a directory. Written
    streaming (never in memory) and cached in ``workdir/<key>``."""
    where = workdir / key
    ready = where / "ready.json"
    if ready.exists():
        info = json.loads(ready.read_text())
        return Image(label, where / "oci", "big", 1, info["blob"], info["tar"])
    shutil.rmtree(where, ignore_errors=True)
    blobs = where / "oci" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    log(f"writing the image: {label}")
    content = _Content(len(sizes))
    tmp = blobs / "layer.tmp"
    with open(tmp, "wb") as out:
        compressed = _HashingWriter(out)
        # Level 1: the layer's content is incompressible anyway; mtime 0: stable digests.
        gz_args: dict[str, Any] = {"fileobj": compressed, "compresslevel": 1, "mtime": 0}
        with gzip.GzipFile(mode="wb", **gz_args) as gz:
            raw = _HashingWriter(gz)  # type: ignore[arg-type]
            with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for i, size in enumerate(sizes):
                    info = tarfile.TarInfo(f"data/{i // 100:03d}/file-{i:05d}.bin")
                    info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000
                    tar.addfile(info, content.reader(size))
    blob_digest = compressed.sha256.hexdigest()
    tmp.rename(blobs / blob_digest)

    def put(obj: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(obj, separators=(",", ":")).encode()
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    config = put(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{raw.sha256.hexdigest()}"]},
        }
    )
    layer = {"mediaType": MEDIA_TYPE_GZIP, "digest": f"sha256:{blob_digest}"}
    manifest = put(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
            "layers": [{**layer, "size": compressed.size}],
        }
    )
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest,
                "annotations": {"org.opencontainers.image.ref.name": "big"},
            }
        ],
    }
    (where / "oci" / "index.json").write_text(json.dumps(index))
    (where / "oci" / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    ready.write_text(json.dumps({"blob": compressed.size, "tar": raw.size}))
    return Image(label, where / "oci", "big", 1, compressed.size, raw.size)
