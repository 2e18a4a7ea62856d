"""How the layer engine scales on shapes that used to be superlinear (issue 14).

``python -m bench.layer_scaling`` prints, for each shape and size, the median wall time of
a few runs. Nothing here asserts a time; compare runs of two trees by hand.

- replaced-dirs: a layer of N directories, then a layer replacing each with a file
  (every replacement forgets the records of the directory it removed).
- implied-dirs: 10 layers of 400 files each under directories no entry lists, then
  ``read_file`` of a file of the bottom layer and ``list_dir`` of the root.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import bench  # noqa: F401 - puts tests/ on sys.path
from containers_image_proxy.layers import list_dir_from_layers, read_file_from_layers, unpack_layers
from containers_image_proxy.layers._apply import TreeWriter
from testbed.layers import d, f, image


def _median(fn: Callable[[], object], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def replaced_dirs(n: int) -> tuple[float, float]:
    """Unpack time, and the part of it spent forgetting removed directories."""
    img = image([d(f"d{i}") for i in range(n)], [f(f"d{i}", b"") for i in range(n)])
    spent = [0.0]
    forget = TreeWriter._forget_removed

    def timed(self: TreeWriter, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return forget(self, *args)
        finally:
            spent[0] += time.perf_counter() - t0

    def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            unpack_layers(img.sources, Path(tmp) / "root", rootless=True)

    TreeWriter._forget_removed = timed  # type: ignore[method-assign]
    try:
        total = _median(run)
    finally:
        TreeWriter._forget_removed = forget  # type: ignore[method-assign]
    return total, spent[0] / 3


def implied_dirs(layers: int = 10, files: int = 400) -> tuple[float, float]:
    img = image(*[[f(f"top{k}/dir{i}/file", b"x") for i in range(files)] for k in range(layers)])
    read = _median(lambda: read_file_from_layers(img.sources, "top0/dir0/file"))
    listing = _median(lambda: list_dir_from_layers(img.sources, "/"))
    return read, listing


def main() -> int:
    for n in (2000, 4000, 8000):
        total, forgetting = replaced_dirs(n)
        print(
            f"replaced-dirs N={n}: unpack {total:.2f} s, of which forgetting {forgetting:.2f} s",
            flush=True,
        )
    read, listing = implied_dirs()
    print(f"implied-dirs 10x400: read_file {read:.2f} s, list_dir {listing:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
