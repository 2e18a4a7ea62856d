"""Rows of issue 14 on layer shapes whose cost once grew faster than the layers.

The shapes are those of ``bench/layer_scaling.py`` (issue 14), here as OCI layouts read
through skopeo with the public API, each call timed alone in a fresh process:

- ``unpack`` of two layers, N directories then N files replacing them, N = 8,000 against
  N = 2,000 (linear would be 4x; the target allows 5x); destination on tmpfs when there is
  one (/dev/shm), rootless.
- ``read_file`` of a file of the bottom layer of 10 layers of 400 files whose directories
  no entry lists (as some builders write them), against ``list_dir`` of the root of the
  same image (which reads every layer too).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

from bench.measure import median
from bench.rows import Bench, Row, release_label
from testbed.images import LayoutBuilder

LINEAR_TARGET = 5.0
IMPLIED_TARGET = 3.0


def _tar(entries: List[Tuple[str, bool]]) -> bytes:
    """A tar of exactly ``entries`` (name, is a directory): no parent is added."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, is_dir in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if is_dir:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                data = name.encode()
                info.mode, info.size = 0o644, len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _layout(workdir: Path, key: str, layers: List[bytes]) -> str:
    """An image of uncompressed ``layers`` in a layout cached under ``workdir/key``."""
    path = workdir / key
    stamp = path / "bench-ready.json"
    if stamp.exists():
        ref: str = json.loads(stamp.read_text())["ref"]
        return ref
    shutil.rmtree(path, ignore_errors=True)
    builder = LayoutBuilder(path)
    builder.add_image("bench", layers, compression=None)
    ref = builder.ref("bench")
    stamp.write_text(json.dumps({"ref": ref}))
    return ref


def replaced_dirs_image(workdir: Path, n: int) -> str:
    lower = _tar([(f"d{i}", True) for i in range(n)])
    upper = _tar([(f"d{i}", False) for i in range(n)])
    return _layout(workdir, f"replaced-{n}", [lower, upper])


def implied_dirs_image(workdir: Path, layers: int, files: int) -> Tuple[str, str]:
    """(reference, a path in the bottom layer)."""
    tars = [
        _tar([(f"top{k}/dir{i % 20}/sub/file{i}", False) for i in range(files)])
        for k in range(layers)
    ]
    return _layout(workdir, f"implied-{layers}x{files}", tars), "/top0/dir0/sub/file0"


def _scratch() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() else Path("/tmp")


def engine_rows(bench: Bench, release: Any, workdir: Path) -> None:
    label = release_label(release)
    workdir.mkdir(parents=True, exist_ok=True)
    small, big = (200, 800) if bench.s.smoke else (2000, 8000)
    base: Dict[str, Any] = {"skopeo": list(release.argv)}
    dest = _scratch() / "cip-bench-unpack"
    shutil.rmtree(dest, ignore_errors=True)
    runs = {
        str(n): bench._workload(
            {
                **base,
                "kind": "unpack-timed",
                "ref": replaced_dirs_image(workdir, n),
                "dest": str(dest),
            }
        )
        for n in (small, big)
    }
    res = bench.interleave(runs)
    t_small = median([r["seconds"] for r in res[str(small)]])
    t_big = median([r["seconds"] for r in res[str(big)]])
    ratio = t_big / t_small
    bench.add(
        Row(
            f"unpack with N directories replaced by files, N = {big} vs N = {small}",
            label,
            f"N = {big}: {t_big:.2f} s",
            f"N = {small}: {t_small:.2f} s",
            f"{ratio:.2f}x ({big // small}x the entries)",
            f"<= {LINEAR_TARGET:g}x (linear)",
            bench.judge(ratio <= LINEAR_TARGET),
        )
    )

    layers, files = (3, 50) if bench.s.smoke else (10, 400)
    ref, path = implied_dirs_image(workdir, layers, files)
    spec = {**base, "kind": "read-or-list", "ref": ref, "path": path}
    res = bench.interleave(
        {what: bench._workload({**spec, "what": what}) for what in ("read_file", "list_dir")}
    )
    read = median([r["seconds"] for r in res["read_file"]])
    listing = median([r["seconds"] for r in res["list_dir"]])
    ratio = read / listing
    bench.add(
        Row(
            f"read_file on implied-directory layers ({layers} x {files})",
            label,
            f"read_file {read:.2f} s",
            f"list_dir / of the same image {listing:.2f} s",
            f"{ratio:.2f}x its time",
            f"within {IMPLIED_TARGET:g}x",
            bench.judge(ratio <= IMPLIED_TARGET),
        )
    )
