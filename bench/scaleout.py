"""Scale-out figures for docs/scaling-out.md: a tag scan (open, manifest, config, two files
with ``read_files``) over N registry tags by one proxy, a pool, and the Dask example on a
LocalCluster, each timed start to finish (starting proxies, pools and workers included,
as a user's script pays it), optionally through a relay adding round-trip latency.

    .venv/bin/python -m bench.scaleout [--tags 50] [--delay-ms 20] [--repeats 3]

Prints images per second per way (medians); nothing is asserted. Not part of ``make bench``
(the Dask cluster's start alone takes seconds); run it by hand to refresh the docs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from containers_image_proxy import ImageProxy, ProxyConfig, ProxyPool, read_files
from testbed.images import LayoutBuilder, make_tar, random_layer
from testbed.registry import Registry
from testbed.relay import Relay

ROOT = Path(__file__).resolve().parent.parent
PATHS = ["/etc/os-release", "/var/lib/dpkg/status"]


def _scan(proxy: Any, ref: str) -> None:
    with proxy.open_image(ref) as img:
        proxy.fetch_manifest(img)
        proxy.fetch_config(img)
        assert len(read_files(proxy, img, PATHS)) == 2


def one_proxy(config: ProxyConfig, refs: list[str]) -> None:
    with ImageProxy(config) as proxy:
        for ref in refs:
            _scan(proxy, ref)


def pool(size: int) -> Callable[[ProxyConfig, list[str]], None]:
    def run(config: ProxyConfig, refs: list[str]) -> None:
        with ProxyPool(config, size=size) as p, concurrent.futures.ThreadPoolExecutor(size) as ex:
            list(ex.map(lambda r: _scan(p, r), refs))

    return run


def dask(workers: int, pool_size: int) -> Callable[[ProxyConfig, list[str]], None]:
    spec = importlib.util.spec_from_file_location("dask_scan", ROOT / "examples" / "dask_scan.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules["dask_scan"] = example
    spec.loader.exec_module(example)

    def run(config: ProxyConfig, refs: list[str]) -> None:
        from distributed import Client, LocalCluster

        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=pool_size,
                processes=True,
                dashboard_address=None,
                silence_logs=50,
            ) as cluster,
            Client(cluster) as client,
        ):
            client.upload_file(str(ROOT / "examples" / "dask_scan.py"))
            results = example.scan(client, config, refs, pool_size)
            assert len(results) == len(refs)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tags", type=int, default=50)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cip-scaleout-") as tmp, Registry("plain") as reg:
        builder = LayoutBuilder(Path(tmp) / "layout")
        base = random_layer(1, 256 * 1024)
        for n in range(args.tags):
            top = make_tar(
                {
                    "etc/os-release": f"ID=scan\nVERSION_ID={n}\n".encode(),
                    "var/lib/dpkg/status": f"Package: p{n}\n".encode() * 50,
                }
            )
            builder.add_image(f"t{n}", [base, top])
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            list(
                ex.map(lambda n: reg.push(builder.ref(f"t{n}"), f"scan/img:t{n}"), range(args.tags))
            )
        config = ProxyConfig(tls_verify=False)
        ways: dict[str, Callable[[ProxyConfig, list[str]], None]] = {
            "one proxy": one_proxy,
            "ProxyPool(4), 4 threads": pool(4),
            "ProxyPool(8), 8 threads": pool(8),
            "Dask LocalCluster, 2 workers x pool 4": dask(2, 4),
        }
        print(f"{args.tags} tags; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}")
        for delay in (0.0, args.delay_ms):
            with Relay(reg.host, delay_ms=delay) as relay:
                refs = [f"docker://{relay.host}/scan/img:t{n}" for n in range(args.tags)]
                for name, way in ways.items():
                    times = []
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        way(config, refs)
                        times.append(time.perf_counter() - t0)
                    t = statistics.median(times)
                    print(
                        f"| {name} | {delay:g} ms | {t:.2f} s | {args.tags / t:.1f} images/s |",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
