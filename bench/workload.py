"""What the client does in each measure, run as ``python -m bench.workload SPEC-JSON``.

Each measurement runs in a fresh interpreter, so peak RSS and CPU time belong to that one
job. The child prints one JSON line: wall times of its phases, its own CPU time, skopeo's
CPU time over the same phase (from /proc), and its peak RSS. Only the public API is used,
except where a measure needs what the client does not offer yet (the zero-copy prototype,
skopeo's pid for its CPU time); those places say so.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional

from containers_image_proxy import AsyncImageProxy, ImageProxy, ProxyConfig

try:
    from containers_image_proxy import AsyncProxyPool, ProxyPool
except ImportError:  # not exported from the package root yet
    from containers_image_proxy import AsyncProxyPool, ProxyPool

from bench.measure import process_cpu
from bench.rawclient import BareProxy
from bench.user_workloads import USER_WORKLOADS

BUF = 1 << 20
PIPE = "|pipe"  # the "out" of a fetch into a pipe rather than a file


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def self_user_cpu() -> float:
    """User-space CPU only: what Python itself spends, without the kernel's copies."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def skopeo_pid(proxy: Any) -> Optional[int]:
    # not public: only used to read skopeo's CPU time from /proc
    process = getattr(proxy, "_process", None)
    return getattr(process, "pid", None)


def config_for(spec: Dict[str, Any], **extra: Any) -> ProxyConfig:
    return ProxyConfig(skopeo=tuple(spec["skopeo"]), **extra)


# --- copying a blob into a file ---------------------------------------------------------


def copy_readinto(blob: Any, fd: int) -> str:
    """The public file-object API at its best: one reused buffer, no bytes objects."""
    view = memoryview(bytearray(BUF))
    while True:
        n = blob.readinto(view)
        if not n:
            return "readinto"
        os.write(fd, view[:n])


def copy_verified(blob: Any, fd: int) -> str:
    if hasattr(blob, "copy_to"):  # a client with a copy method of its own: measure that
        blob.copy_to(fd)
        return "copy_to"
    return copy_readinto(blob, fd)


def copy_zero(blob: Any, fd: int) -> str:
    """Unverified bytes moved with os.splice, never entering this process.

    Through ``BlobReader.copy_to(fd)``; a client measured with ``--client-src`` from before
    copy_to existed gets a prototype that splices from the reader's data pipe itself and
    then lets the reader finish (error pipe, size check) as if it had read the bytes.
    """
    if hasattr(blob, "copy_to"):
        blob.copy_to(fd)
        return "copy_to"
    if not hasattr(os, "splice"):
        return copy_readinto(blob, fd) + " (no os.splice)"
    data_fd = blob._ends.data_fd
    total = 0
    while True:
        n = os.splice(data_fd, fd, 1 << 30)
        if not n:
            break
        total += n
    blob._stream.received += total
    blob.close()
    return "splice prototype"


# --- the workloads ----------------------------------------------------------------------


def run_hash(spec: Dict[str, Any]) -> Dict[str, Any]:
    """sha256 over a file: the fastest a verified stream can be here."""
    view = memoryview(bytearray(BUF))
    h = hashlib.sha256()
    t0 = time.perf_counter()
    with open(spec["path"], "rb", buffering=0) as f:
        while True:
            n = f.readinto(view)
            if not n:
                break
            h.update(view[:n])
    wall = time.perf_counter() - t0
    return {"wall": wall, "digest": "sha256:" + h.hexdigest()}


def run_fetch(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Start a proxy, open the image, fetch its layer into a file, close."""
    t0 = time.perf_counter()
    with ImageProxy(config_for(spec)) as proxy, proxy.open_image(spec["ref"]) as img:
        _, manifest = proxy.fetch_manifest(img)
        layer = max(manifest.layers, key=lambda d: d.size)
        rss_before = peak_rss_kib()
        pid = skopeo_pid(proxy)
        u0, c0, s0, t1 = self_user_cpu(), self_cpu(), process_cpu(pid), time.perf_counter()
        reader = None
        if spec["out"] == PIPE:
            # a pipe read by another process (cat into /dev/null), as when the blob feeds
            # `tar -x` or a socket: the one destination os.splice can fill by reference
            rfd, fd = os.pipe()
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), BUF)
            reader = subprocess.Popen(["cat"], stdin=rfd, stdout=subprocess.DEVNULL)
            os.close(rfd)
        else:
            fd = os.open(spec["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if spec["mode"] == "verified":
                with proxy.get_blob(img, layer.digest, layer.size) as blob:
                    path = copy_verified(blob, fd)
            else:
                blob = proxy.get_raw_blob(img, layer.digest, layer.size, verify=False)
                copy = copy_zero if spec["mode"] == "raw-zerocopy" else copy_readinto
                with blob:
                    path = copy(blob, fd)
        finally:
            os.close(fd)
            if reader is not None:
                reader.wait()
        t2, c1, s1 = time.perf_counter(), self_cpu(), process_cpu(pid)
        u1 = self_user_cpu()
    t3 = time.perf_counter()
    into_file = spec["out"] not in (os.devnull, PIPE)
    size = os.stat(spec["out"]).st_size if into_file else blob.bytes_read
    if size != layer.size:
        raise AssertionError(f"wrote {size} bytes, expected {layer.size}")
    return {
        "total": t3 - t0,
        "fetch": t2 - t1,
        "client_cpu": c1 - c0,
        "client_user_cpu": u1 - u0,
        "skopeo_cpu": s1 - s0,
        "rss_before_kib": rss_before,
        "peak_rss_kib": peak_rss_kib(),
        "bytes": layer.size,
        "path": path,
    }


def _inspect_sync(proxy: Any, ref: str) -> None:
    img = proxy.open_image(ref)
    try:
        proxy.fetch_manifest(img)
        proxy.fetch_config(img)
    finally:
        proxy.close_image(img)


async def _inspect_async(proxy: Any, ref: str) -> None:
    img = await proxy.open_image(ref)
    try:
        await proxy.fetch_manifest(img)
        await proxy.fetch_config(img)
    finally:
        await proxy.close_image(img)


def run_tags(spec: Dict[str, Any]) -> Dict[str, Any]:
    """open + manifest + config + close for every reference; proxy start included."""
    refs: List[str] = spec["refs"]
    mode, size = spec["mode"], spec.get("size", 1)
    flags = spec.get("image_flags", [])
    cpu0 = self_cpu()
    t0 = time.perf_counter()
    if mode == "bare":
        bare: Any = BareProxy(spec["skopeo"], flags)
        t1 = time.perf_counter()
        for ref in refs:
            bare.inspect(ref)
        t2 = time.perf_counter()
        bare.close()
    elif mode == "async-pool":
        t1, t2 = asyncio.run(_tags_async(spec, refs, size))
    else:
        config = config_for(spec, tls_verify=False)
        proxy: Any = ImageProxy(config) if mode == "single" else ProxyPool(config, size=size)
        with proxy:
            t1 = time.perf_counter()
            if mode == "single":
                for ref in refs:
                    _inspect_sync(proxy, ref)
            else:
                with concurrent.futures.ThreadPoolExecutor(size) as ex:
                    list(ex.map(lambda r: _inspect_sync(proxy, r), refs))
            t2 = time.perf_counter()
    t3 = time.perf_counter()
    # every skopeo is reaped by now, so the children's usage is complete
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = self_cpu() - cpu0 + children.ru_utime + children.ru_stime
    return {"total": t3 - t0, "start": t1 - t0, "job": t2 - t1, "images": len(refs), "cpu": cpu}


async def _tags_async(spec: Dict[str, Any], refs: List[str], size: int) -> Any:
    async with AsyncProxyPool(config_for(spec, tls_verify=False), size=size) as pool:
        t1 = time.perf_counter()
        gate = asyncio.Semaphore(size)

        async def one(ref: str) -> None:
            async with gate:
                await _inspect_async(pool, ref)

        await asyncio.gather(*(one(r) for r in refs))
        t2 = time.perf_counter()
    return t1, t2


def _drain(blob: Any) -> int:
    view = memoryview(bytearray(BUF))
    total = 0
    with blob:
        while True:
            n = blob.readinto(view)
            if not n:
                return total
            total += n


async def _drain_async(blob: Any) -> int:
    view = memoryview(bytearray(BUF))
    total = 0
    async with blob:
        while True:
            n = await blob.readinto(view)
            if not n:
                return total
            total += n


def run_layers(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Every layer of the image read to its verified end (bytes discarded), one proxy."""
    mode = spec["mode"]
    if mode == "async":
        return asyncio.run(_layers_async(spec))
    with ImageProxy(config_for(spec)) as proxy, proxy.open_image(spec["ref"]) as img:
        _, manifest = proxy.fetch_manifest(img)
        layers = manifest.layers
        pid = skopeo_pid(proxy)
        c0, s0, t1 = self_cpu(), process_cpu(pid), time.perf_counter()
        fetch: Callable[[Any], int] = lambda d: _drain(proxy.get_blob(img, d.digest, d.size))  # noqa: E731
        if mode == "seq":
            total = sum(fetch(d) for d in layers)
        else:
            with concurrent.futures.ThreadPoolExecutor(len(layers)) as ex:
                total = sum(ex.map(fetch, layers))
        t2, c1, s1 = time.perf_counter(), self_cpu(), process_cpu(pid)
    return {"fetch": t2 - t1, "bytes": total, "client_cpu": c1 - c0, "skopeo_cpu": s1 - s0}


async def _layers_async(spec: Dict[str, Any]) -> Dict[str, Any]:
    async with AsyncImageProxy(config_for(spec)) as proxy:
        img = await proxy.open_image(spec["ref"])
        async with img:
            _, manifest = await proxy.fetch_manifest(img)
            pid = skopeo_pid(proxy)
            c0, s0, t1 = self_cpu(), process_cpu(pid), time.perf_counter()

            async def fetch(d: Any) -> int:
                return await _drain_async(await proxy.get_blob(img, d.digest, d.size))

            total = sum(await asyncio.gather(*(fetch(d) for d in manifest.layers)))
            t2, c1, s1 = time.perf_counter(), self_cpu(), process_cpu(pid)
    return {"fetch": t2 - t1, "bytes": total, "client_cpu": c1 - c0, "skopeo_cpu": s1 - s0}


WORKLOADS: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]] = {
    "hash": run_hash,
    "fetch": run_fetch,
    "tags": run_tags,
    "layers": run_layers,
    **USER_WORKLOADS,
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    result = WORKLOADS[spec["kind"]](spec)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
