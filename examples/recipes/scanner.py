#!/usr/bin/env python3
"""A scanner: which OS, and how many Debian packages, in every tag of a repository.

    python scanner.py REPOSITORY [--pool-size=N] [--tls-verify=false]

REPOSITORY is ``docker://registry/repo`` (no tag). The tags come from ``list_tags``; a
``ProxyPool`` overlaps the round trips to the registry; ``read_files`` reads
/etc/os-release and dpkg's status file in one pass over each image's layers, from the top,
never further down than the two files need. Prints one JSON line per tag.
"""

from __future__ import annotations

import concurrent.futures
import json
import sys
from typing import Any

from containers_image_proxy import (
    ImageNotFoundError,
    LayerFormatError,
    ProxyConfig,
    ProxyPool,
    RequestError,
    read_files,
)

OS_RELEASE, DPKG_STATUS = "/etc/os-release", "/var/lib/dpkg/status"


def scan(pool: ProxyPool, reference: str) -> dict[str, Any]:
    try:
        img = pool.open_image(reference)
    except ImageNotFoundError:  # deleted since it was listed
        return {"reference": reference, "missing": True}
    with img:
        digest, _ = pool.fetch_manifest(img)
        try:
            files = read_files(pool, img, [OS_RELEASE, DPKG_STATUS], max_size=64 << 20)
        except (LayerFormatError, RequestError) as e:
            # not a filesystem (a signature or SBOM artifact tag, say): say so, go on
            return {"reference": reference, "digest": str(digest), "error": str(e)}
    os_release = dict(
        line.split("=", 1)
        for line in files.get(OS_RELEASE, b"").decode(errors="replace").splitlines()
        if "=" in line
    )
    status = files.get(DPKG_STATUS, b"").decode(errors="replace")
    return {
        "reference": reference,
        "digest": str(digest),
        "os": os_release.get("ID", "").strip('"') or None,
        "packages": sum(1 for line in status.splitlines() if line.startswith("Package: ")),
    }


def main(repository: str, pool_size: int = 4, tls_verify: bool = True) -> None:
    with ProxyPool(ProxyConfig(tls_verify=tls_verify), size=pool_size) as pool:
        tags = pool.list_tags(repository)
        refs = [f"{repository}:{tag}" for tag in tags]
        with concurrent.futures.ThreadPoolExecutor(pool_size) as ex:
            for result in ex.map(lambda ref: scan(pool, ref), refs):
                print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    size = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--pool-size=")), 4)
    main(args[0], size, tls_verify="--tls-verify=false" not in sys.argv)
