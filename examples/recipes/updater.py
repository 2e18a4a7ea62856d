#!/usr/bin/env python3
"""An updater: bring a local OCI layout to the image's current version, fetching only the
layers that changed, with progress.

    python updater.py IMAGE LAYOUT_DIR [--tls-verify=false]

Blobs already in LAYOUT_DIR are verified (hashed) and kept; the others are downloaded,
verified and renamed into place; index.json moves the tag last, so an interrupted update
leaves the previous version usable and the next run resumes. Prints one line per blob
("fetched" or "kept"), then "current DIGEST".
"""

from __future__ import annotations

import sys
import threading

from containers_image_proxy import ImageProxy, ProxyConfig, TransferProgress, pull


def main(image: str, layout: str, tls_verify: bool = True) -> None:
    lock = threading.Lock()  # reports come from the threads fetching blobs side by side

    def progress(p: TransferProgress) -> None:
        if p.finished:  # one report per blob says it is done; the others say how far
            with lock:
                print(f"{'kept' if p.local else 'fetched'} {p.digest} ({p.total} bytes)")

    with ImageProxy(ProxyConfig(tls_verify=tls_verify)) as proxy:
        digest = pull(proxy, image, layout, tag="current", progress=progress)
    print(f"current {digest}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(args[0], args[1], tls_verify="--tls-verify=false" not in sys.argv)
