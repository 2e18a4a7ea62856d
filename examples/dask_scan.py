#!/usr/bin/env python3
"""Scan many image tags over a Dask cluster: one proxy pool per worker process.

    python examples/dask_scan.py [--scheduler ADDRESS] [--workers N] [--pool-size N]
                                 [--tls-verify=false] REFERENCE...

For each image it reads the manifest and config and two files (``/etc/os-release`` and
dpkg's status file) and prints one JSON line: the digest, the platform, the files found.
Without ``--scheduler`` it starts a LocalCluster of ``--workers`` processes on this machine;
with one, it runs on that cluster (every worker needs skopeo and this package).

Each worker starts one :class:`ProxyPool` when it joins (a Dask worker plugin) and closes it
when it leaves: the skopeo processes belong to the worker, never travel, and are never
shared across a fork. Only the :class:`ProxyConfig` (it pickles) and the references cross
the network, and only small results come back.

Needs the ``dask`` extra: ``pip install 'containers-image-proxy[dask]'``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, Optional

from distributed import Client, LocalCluster, Worker, WorkerPlugin, get_worker

from containers_image_proxy import ProxyConfig, ProxyPool, read_files

PLUGIN_NAME = "containers-image-proxy-pool"
PATHS = ("/etc/os-release", "/var/lib/dpkg/status")


class ProxyPoolPlugin(WorkerPlugin):
    """One ProxyPool per Dask worker, started in the worker and closed with it."""

    name = PLUGIN_NAME

    def __init__(self, config: ProxyConfig, size: int) -> None:
        self.config = config
        self.size = size
        self.pool: Optional[ProxyPool] = None

    def setup(self, worker: Worker) -> None:
        self.pool = ProxyPool(self.config, size=self.size)

    def teardown(self, worker: Worker) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def scan_image(reference: str, paths: Sequence[str] = PATHS) -> dict[str, Any]:
    """One task: open ``reference`` on this worker's pool and read what a scanner needs."""
    plugin = get_worker().plugins[PLUGIN_NAME]
    pool = plugin.pool
    assert pool is not None, "the pool plugin is not set up on this worker"
    with pool.open_image(reference) as img:
        digest, _ = pool.fetch_manifest(img)
        config = pool.fetch_config(img)
        files = read_files(pool, img, paths, max_size=16 << 20)
    return {
        "reference": reference,
        "digest": str(digest),
        "platform": f"{config.os}/{config.architecture}",
        "files": {path: data.decode("utf-8", "replace") for path, data in files.items()},
    }


def scan(
    client: Client, config: ProxyConfig, references: Sequence[str], pool_size: int = 4
) -> list[dict[str, Any]]:
    """Scan ``references`` on ``client``'s cluster; results in the order of ``references``."""
    client.register_plugin(ProxyPoolPlugin(config, pool_size))
    # pure=False: the same tag read twice may have moved; never reuse a cached result
    futures = client.map(scan_image, list(references), pure=False)
    results: list[dict[str, Any]] = client.gather(futures)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("references", nargs="+", metavar="REFERENCE")
    parser.add_argument("--scheduler", help="address of a running Dask scheduler")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes")
    parser.add_argument("--pool-size", type=int, default=4, help="skopeo processes per worker")
    parser.add_argument("--tls-verify", default="true", choices=["true", "false"])
    args = parser.parse_args(argv)
    config = ProxyConfig(tls_verify=args.tls_verify == "true")
    if args.scheduler:
        with Client(args.scheduler) as client:
            results = scan(client, config, args.references, args.pool_size)
    else:
        # threads_per_worker = pool size: each thread keeps one skopeo of the pool busy
        with (
            LocalCluster(
                n_workers=args.workers, threads_per_worker=args.pool_size, processes=True
            ) as cluster,
            Client(cluster) as client,
        ):
            results = scan(client, config, args.references, args.pool_size)
    for result in results:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
