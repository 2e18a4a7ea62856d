#!/usr/bin/env python3
"""Fetch a non-container artifact and write its blob out (say a WebAssembly module).

    python examples/fetch_artifact.py IMAGE OUTPUT [MEDIA_TYPE]

An OCI artifact is a manifest whose config (or artifactType) is not an image config and
whose layers are plain blobs: here exactly one, of MEDIA_TYPE (default application/wasm).
The blob is streamed to a temporary file beside OUTPUT, verified (size and digest, by the
reader at its end) and only then renamed to OUTPUT: OUTPUT is never half written.
Prints the artifact type and the blob's digest.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from containers_image_proxy import ImageProxy, ProxyConfig

IMAGE_CONFIGS = (
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
)


def fetch(image: str, output: str, media_type: str, config: ProxyConfig) -> str:
    """Write the artifact's single ``media_type`` blob to ``output``; returns its digest."""
    with ImageProxy(config) as proxy, proxy.open_image(image) as img:
        _, manifest = proxy.fetch_manifest(img)
        kind = manifest.artifact_type or manifest.config.media_type
        if manifest.artifact_type is None and kind in IMAGE_CONFIGS:
            raise SystemExit(f"{image} is a container image, not an artifact")
        blobs = [layer for layer in manifest.layers if layer.media_type == media_type]
        if len(blobs) != 1:
            raise SystemExit(f"{image}: expected one {media_type} blob, found {len(blobs)}")
        blob = blobs[0]
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(output)), prefix=".")
        try:
            with os.fdopen(fd, "wb") as out, proxy.get_descriptor(img, blob) as reader:
                shutil.copyfileobj(reader, out)  # reads to the end: verified
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, output)
        except BaseException:
            os.unlink(tmp)
            raise
    print(f"{kind} {blob.digest}")
    return blob.digest


def main() -> int:
    if len(sys.argv) not in (3, 4):
        print("usage: fetch_artifact.py IMAGE OUTPUT [MEDIA_TYPE]", file=sys.stderr)
        return 2
    media_type = sys.argv[3] if len(sys.argv) == 4 else "application/wasm"
    fetch(sys.argv[1], sys.argv[2], media_type, ProxyConfig())
    return 0


if __name__ == "__main__":
    sys.exit(main())
