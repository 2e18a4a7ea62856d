"""Tar parsing and unpack speed of the layers engine, on the Debian rootfs and small files.

    PYTHONPATH=src .venv/bin/python bench/bench_tar.py [--repeats N] [--tar PATH]

Runs in this process against whichever ``containers_image_proxy`` PYTHONPATH gives, so
two checkouts can be compared (e.g. a ``git archive`` of an older commit). Measured, median
of N runs, page cache warm, wall time and CPU time (this process, all threads: steadier
than wall time when other work shares the machine):

- ``read``: LayerStream over the uncompressed tar, every file's data read in 256 KiB
  chunks and dropped (the parser and data path alone);
- ``unpack``: unpack_layers of that tar as one uncompressed layer, rootless, into a fresh
  directory (the parser plus the writer).

Inputs: the Debian minbase rootfs tarball from the test-bed cache (built by
tests/testbed/debian_image.py; skipped when absent) and a generated tar of 20000 files of
4 KiB in 200 directories. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from containers_image_proxy.layers import LayerSource, LayerStream, unpack_layers

MEDIA = "application/vnd.oci.image.layer.v1.tar"


def small_files_tar(path: Path, count: int = 20000, size: int = 4096) -> None:
    payload = os.urandom(size)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in range(200):
            info = tarfile.TarInfo(f"d{d}")
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for i in range(count):
            info = tarfile.TarInfo(f"d{i % 200}/f{i}")
            info.size = size
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(payload))


def read_all(path: Path) -> int:
    entries = 0
    with open(path, "rb") as f:
        stream = LayerStream(f, MEDIA)
        for _, data in stream:
            entries += 1
            if data is not None:
                while data.read(256 * 1024):
                    pass
        stream.finish()
    return entries


def unpack(path: Path, workdir: Path) -> None:
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    dest = workdir / "root"
    source = LayerSource(digest, MEDIA, digest, lambda: open(path, "rb"))  # noqa: SIM115
    unpack_layers([source], dest, rootless=True)
    shutil.rmtree(dest)


def timed(fn: object, repeats: int) -> tuple[float, float]:
    """Median wall time and median CPU time (this process, all threads) of ``fn()``."""
    wall, cpu = [], []
    for _ in range(repeats):
        os.sync()  # one run's writeback must not land on the next
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()  # type: ignore[operator]
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tar", type=Path, default=None, help="a rootfs tar to use")
    args = parser.parse_args()
    import containers_image_proxy

    print("client:", containers_image_proxy.__file__, file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="bench-tar-"))
    try:
        inputs = {}
        debian = args.tar or (
            Path.home()
            / ".cache/containers-image-proxy-testbed/debian-minbase/bookworm-minbase-amd64.tar"
        )
        if debian.exists():
            inputs["debian"] = debian
        small = work / "small.tar"
        small_files_tar(small)
        inputs["20000x4KiB"] = small
        for name, path in inputs.items():
            entries = read_all(path)  # warm the cache
            r, r_cpu = timed(lambda p=path: read_all(p), args.repeats)
            u, u_cpu = timed(lambda p=path: unpack(p, work), args.repeats)
            print(
                f"{name:12} {entries:6} entries  read {r:6.3f} s (cpu {r_cpu:6.3f} s)"
                f"  unpack {u:6.3f} s (cpu {u_cpu:6.3f} s)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
