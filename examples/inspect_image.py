#!/usr/bin/env python3
"""Open an image, print its digest, platform and layers, and stream every layer through
verification.

    python examples/inspect_image.py [IMAGE]
    python examples/inspect_image.py --write-example DIR   # only write the example image

IMAGE is any reference skopeo understands (docker://..., oci:DIR:TAG, ...). Without one, a
small example image is written to a temporary OCI layout first, so this runs offline.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from containers_image_proxy import ImageProxy, ProxyConfig


def write_example_layout(root: Path) -> str:
    """A two-layer OCI image in ``root``; returns its reference."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    layers, diff_ids = [], []
    for files in (
        {"etc/os-release": b"NAME=example\n"},
        {"usr/bin/hello": b"#!/bin/sh\necho hi\n"},
    ):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o755
                tar.addfile(info, io.BytesIO(data))
        diff_ids.append(f"sha256:{hashlib.sha256(buf.getvalue()).hexdigest()}")
        blob = gzip.compress(buf.getvalue(), mtime=0)
        layers.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": put(blob),
                "size": len(blob),
            }
        )
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": {"Cmd": ["/usr/bin/hello"], "Labels": {"example": "yes"}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put(config),
                "size": len(config),
            },
            "layers": layers,
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": put(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "example"},
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return f"oci:{root}:example"


def inspect(reference: str) -> None:
    """Print what the proxy knows of ``reference`` and verify every layer."""
    with ImageProxy(ProxyConfig()) as proxy, proxy.open_image(reference) as img:
        digest, _ = proxy.fetch_manifest(img)
        config = proxy.fetch_config(img)
        print(f"image:    {reference}")
        print(f"skopeo:   protocol {proxy.protocol_version}")
        print(f"digest:   {digest}")
        print(f"platform: {config.os}/{config.architecture}")
        for layer in proxy.get_layer_info(img):
            start = time.monotonic()
            with proxy.get_descriptor(img, layer) as blob:
                while blob.read(1 << 20):
                    pass
            seconds = time.monotonic() - start
            print(
                f"layer:    {layer.digest} {layer.size:>12,} B  {layer.media_type}  "
                f"verified in {seconds * 1000:.1f} ms"
            )


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--write-example":
        print(write_example_layout(Path(sys.argv[2])))
        return 0
    if len(sys.argv) > 1:
        inspect(sys.argv[1])
        return 0
    with tempfile.TemporaryDirectory(prefix="cip-example-") as tmp:
        inspect(write_example_layout(Path(tmp) / "layout"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
