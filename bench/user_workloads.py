"""Workloads written as a user writes them (issue 14), run by ``python -m bench.workload``.

Only public names of ``containers_image_proxy`` (and its ``layers`` package) are used, so
that these survive refactors of the client's internals:

- ``user-fetch``: a verified blob copied with ``shutil.copyfileobj``, a ``readinto`` loop or
  ``for chunk in blob``; the iteration stops at a deadline (it once read one byte at a
  time) and reports the rate over what it got.
- ``scan``: ``read_files`` (or ``read_file`` per path where the library has no
  ``read_files`` yet) of a few paths from many images, through a ``ProxyPool``.
- ``unpack-timed``: ``unpack`` of one image, the unpack call alone timed.
- ``read-or-list``: ``read_file`` of one path, or ``list_dir`` of the root.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import time
from typing import Any, Callable, Dict, List, Sequence

import containers_image_proxy as cip
from containers_image_proxy import ImageProxy, ProxyConfig, ProxyPool
from containers_image_proxy.layers import list_dir

BUF = 1 << 20


def _config(spec: Dict[str, Any], **extra: Any) -> ProxyConfig:
    return ProxyConfig(skopeo=tuple(spec["skopeo"]), **extra)


def run_user_fetch(spec: Dict[str, Any]) -> Dict[str, Any]:
    """One verified layer through the way of copying ``spec["how"]`` names."""
    how, out = spec["how"], spec["out"]
    deadline = float(spec.get("deadline", 1e9))
    with ImageProxy(_config(spec)) as proxy, proxy.open_image(spec["ref"]) as img:
        _, manifest = proxy.fetch_manifest(img)
        layer = max(manifest.layers, key=lambda d: d.size)
        t0 = time.perf_counter()
        done = 0
        complete = True
        with proxy.get_blob(img, layer.digest, layer.size) as blob, open(out, "wb") as f:
            if how == "copyfileobj":
                shutil.copyfileobj(blob, f, BUF)
                done = layer.size
            elif how == "readinto":
                view = memoryview(bytearray(BUF))
                while True:
                    n = blob.readinto(view)
                    if not n:
                        break
                    f.write(view[:n])
                    done += n
            elif how == "iter":
                stop = t0 + deadline
                for checked, chunk in enumerate(blob, 1):
                    f.write(chunk)
                    done += len(chunk)
                    # the clock is read every 64 chunks: chunks may be a byte long
                    if checked & 63 == 0 and time.perf_counter() > stop:
                        complete = False
                        break
            elif how == "copy_to":
                f.flush()
                blob.copy_to(f.fileno())
                done = layer.size
            else:
                raise ValueError(f"unknown way of copying: {how}")
            if not complete:
                # leaving early: the reader must not wait for a verification it cannot do
                blob.close()
        t1 = time.perf_counter()
    if complete and done != layer.size:
        raise AssertionError(f"copied {done} bytes, expected {layer.size}")
    if out != os.devnull:
        os.unlink(out)
    return {
        "fetch": t1 - t0,
        "bytes": done,
        "complete": complete,
        "size": layer.size,
        "deadline": deadline,
    }


def _read_paths(proxy: Any, img: Any, paths: Sequence[str]) -> List[int]:
    """The sizes of ``paths`` in ``img``: through ``read_files`` when the library has it."""
    read_files = getattr(cip, "read_files", None)
    if read_files is not None:
        got = read_files(proxy, img, list(paths))
        values = got.values() if isinstance(got, dict) else got
        return [len(v) if isinstance(v, (bytes, bytearray)) else -1 for v in values]
    return [len(cip.read_file(proxy, img, p)) for p in paths]


def run_scan(spec: Dict[str, Any]) -> Dict[str, Any]:
    """A scanner: a few files from every image, a pool of proxies, pool start included."""
    refs: List[str] = spec["refs"]
    paths: List[str] = spec["paths"]
    size = int(spec["size"])
    t0 = time.perf_counter()
    with ProxyPool(_config(spec, tls_verify=False), size=size) as pool:

        def scan(ref: str) -> List[int]:
            with pool.open_image(ref) as img:
                return _read_paths(pool, img, paths)

        with concurrent.futures.ThreadPoolExecutor(size) as ex:
            sizes = list(ex.map(scan, refs))
    t1 = time.perf_counter()
    return {
        "total": t1 - t0,
        "images": len(refs),
        "bytes": sum(sum(s) for s in sizes),
        "api": "read_files" if hasattr(cip, "read_files") else "read_file per path",
    }


def run_unpack_timed(spec: Dict[str, Any]) -> Dict[str, Any]:
    """``unpack`` of one image (rootless), the call alone timed; the tree is removed."""
    dest = spec["dest"]
    with ImageProxy(_config(spec)) as proxy, proxy.open_image(spec["ref"]) as img:
        t0 = time.perf_counter()
        cip.unpack(proxy, img, dest, rootless=True)
        t1 = time.perf_counter()
    shutil.rmtree(dest)
    return {"seconds": t1 - t0}


def run_read_or_list(spec: Dict[str, Any]) -> Dict[str, Any]:
    """``read_file`` of ``spec["path"]``, or ``list_dir`` of the root: the call timed."""
    with ImageProxy(_config(spec)) as proxy, proxy.open_image(spec["ref"]) as img:
        t0 = time.perf_counter()
        if spec["what"] == "read_file":
            n = len(cip.read_file(proxy, img, spec["path"]))
        else:
            n = len(list_dir(proxy, img, "/"))
        t1 = time.perf_counter()
    return {"seconds": t1 - t0, "n": n}


USER_WORKLOADS: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]] = {
    "user-fetch": run_user_fetch,
    "scan": run_scan,
    "unpack-timed": run_unpack_timed,
    "read-or-list": run_read_or_list,
}
