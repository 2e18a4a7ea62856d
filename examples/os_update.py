#!/usr/bin/env python3
"""An OS-update style import: fetch only the layers that changed since the last run.

    python examples/os_update.py IMAGE STATE_DIR

1. Open the image and read its manifest digest. If it equals the one recorded in
   STATE_DIR/last-digest by the previous run, stop early: nothing changed.
2. Read the config's rootfs.diff_ids: the identities of the uncompressed layers, which do
   not depend on how a registry happens to compress them.
3. Fetch only the layers whose diff_id is not stored in STATE_DIR/layers/ yet, and verify
   each twice: the blob reader checks the compressed blob's size and digest, and the
   uncompressed stream is hashed here against its diff_id before it is stored.
4. Record the new manifest digest.

Prints "unchanged DIGEST", or one line per layer ("have DIFF_ID" / "fetched DIFF_ID")
and then "updated DIGEST". IMAGE is any reference skopeo understands.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

from containers_image_proxy import Descriptor, ImageProxy, OpenedImage, ProxyConfig
from containers_image_proxy.layers import DecompressingReader


def store_layer(
    proxy: ImageProxy, img: OpenedImage, layer: Descriptor, diff_id: str, dest: Path
) -> None:
    """Fetch one layer, decompress it into ``dest`` and check its diff_id, atomically."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        hasher = hashlib.new(diff_id.partition(":")[0])
        with os.fdopen(fd, "wb") as out, proxy.get_descriptor(img, layer) as blob:
            plain = DecompressingReader(blob, layer.media_type)
            while chunk := plain.read(1 << 20):
                hasher.update(chunk)
                out.write(chunk)
            blob.read()  # the blob's end: where its size and digest are checked
            out.flush()
            os.fsync(out.fileno())
        actual = f"{hasher.name}:{hasher.hexdigest()}"
        if actual != diff_id:
            raise RuntimeError(f"layer {layer.digest}: diff_id {actual}, expected {diff_id}")
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise


def update(image: str, state: Path, config: ProxyConfig) -> bool:
    """Import ``image`` into ``state``; False if it had not changed since the last run."""
    (state / "layers").mkdir(parents=True, exist_ok=True)
    last = state / "last-digest"
    seen = last.read_text().strip() if last.exists() else None
    with ImageProxy(config) as proxy, proxy.open_image(image) as img:
        digest, manifest = proxy.fetch_manifest(img)
        if digest == seen:
            print(f"unchanged {digest}")
            return False
        diff_ids = proxy.fetch_config(img).rootfs.diff_ids
        if len(diff_ids) != len(manifest.layers):
            raise RuntimeError("the config's diff_ids do not match the manifest's layers")
        for layer, diff_id in zip(manifest.layers, diff_ids):
            dest = state / "layers" / diff_id.replace(":", "-")
            if dest.exists():
                print(f"have {diff_id}")
                continue
            store_layer(proxy, img, layer, diff_id, dest)
            print(f"fetched {diff_id}")
    last.write_text(f"{digest}\n")
    print(f"updated {digest}")
    return True


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    update(sys.argv[1], Path(sys.argv[2]), ProxyConfig())
    return 0


if __name__ == "__main__":
    sys.exit(main())
