#!/usr/bin/env python3
"""Extract the files under one directory of an image (say /usr/share/doc) as a stream.

    python examples/extract_docs.py IMAGE [PREFIX] > docs.tar

The layers are streamed one after the other through the layer engine (``iter_layer``),
bottom first, and only the entries under PREFIX (default /usr/share/doc) are kept; nothing
else is unpacked or written anywhere. Whiteouts in upper layers remove what lower layers
had, as in the image's merged filesystem. Every layer is read to its end and checked
against the config's diff_id. The result is a tar archive on standard output.
"""

from __future__ import annotations

import io
import sys
import tarfile
from typing import IO, Any, Dict, Optional, Tuple

from containers_image_proxy import ImageProxy, ProxyConfig
from containers_image_proxy.layers import iter_layer

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def clean(name: str) -> str:
    """A tar member name as a path relative to the root, without ./ or //."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def remove(kept: Dict[str, Any], path: str) -> None:
    """A whiteout of ``path``: it and everything under it go."""
    for name in [n for n in kept if under(n, path)]:
        del kept[name]


def extract(image: str, prefix: str, out: IO[bytes], config: ProxyConfig) -> int:
    """Write a tar of the merged files under ``prefix`` to ``out``; returns how many."""
    prefix = clean(prefix)
    kept: Dict[str, Tuple[tarfile.TarInfo, Optional[bytes]]] = {}
    with ImageProxy(config) as proxy, proxy.open_image(image) as img:
        _, manifest = proxy.fetch_manifest(img)
        diff_ids = proxy.fetch_config(img).rootfs.diff_ids
        for layer, diff_id in zip(manifest.layers, diff_ids):
            added = set()
            with proxy.get_descriptor(img, layer) as blob:
                for info, data in iter_layer(blob, layer.media_type, diff_id=diff_id):
                    path = clean(info.name)
                    base = path.rpartition("/")[2]
                    if base.startswith(WHITEOUT):
                        parent = path.rpartition("/")[0]
                        if base == OPAQUE:
                            for name in [n for n in kept if under(n, parent) and n != parent]:
                                if name not in added:
                                    del kept[name]
                        elif not base.startswith(WHITEOUT + WHITEOUT):
                            victim = f"{parent}/{base[len(WHITEOUT) :]}".lstrip("/")
                            remove(kept, victim)
                        continue
                    if not under(path, prefix):
                        continue  # streamed past without being kept
                    if not info.isdir():
                        remove(kept, path)  # a file replaces whatever was there
                    content = data.read() if data is not None else None
                    target = clean(info.linkname)
                    if info.islnk() and target in kept:
                        # a hardlink becomes a copy: its target may not be in the output
                        info.type, content = tarfile.REGTYPE, kept[target][1]
                        info.size = len(content or b"")
                    info.name = path
                    kept[path] = (info, content)
                    added.add(path)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(kept):
            info, content = kept[path]
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return sum(1 for info, _ in kept.values() if info.isreg())


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print("usage: extract_docs.py IMAGE [PREFIX] > files.tar", file=sys.stderr)
        return 2
    prefix = sys.argv[2] if len(sys.argv) == 3 else "/usr/share/doc"
    count = extract(sys.argv[1], prefix, sys.stdout.buffer, ProxyConfig())
    print(f"{count} files under {prefix}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
