#!/usr/bin/env python3
"""Mirror a multi-platform image into an OCI layout: every platform, the index kept as
stored, so the mirror's tag has the source's own digest (for an OCI index; a Docker
manifest list's instances are converted to OCI, and an index of the conversions is written).

    python mirror.py IMAGE LAYOUT_DIR[:TAG] [--tls-verify=false]

IMAGE is a ``docker://`` reference (instances are opened by digest). Prints the platforms
the index lists, then the digest the tag points at. For a single-platform image it mirrors
that image.
"""

from __future__ import annotations

import sys

from containers_image_proxy import ImageProxy, ProxyConfig, pull


def main(image: str, target: str, tls_verify: bool = True) -> None:
    layout, _, tag = target.rpartition(":") if ":" in target else (target, "", "")
    with ImageProxy(ProxyConfig(tls_verify=tls_verify)) as proxy:
        found = proxy.fetch_index(image)
        if found is not None:
            digest, index = found
            print(f"index {digest}")
            for entry in index.manifests:
                p = entry.platform
                if p is not None:
                    variant = f"/{p.variant}" if p.variant else ""
                    print(f"  {p.os}/{p.architecture}{variant} {entry.digest}")
        written = pull(proxy, image, layout, tag=tag or None, platforms="all")
    print(f"mirrored {written}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(args[0], args[1], tls_verify="--tls-verify=false" not in sys.argv)
