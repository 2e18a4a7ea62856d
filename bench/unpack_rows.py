"""The ``unpack`` measure: the client's layer unpack against ``umoci unpack``.

The comparison of ``bench/bench_unpack.py`` (see there: each unpacker in a fresh process,
alternating, after an untimed round, ``sync`` around every run), made into table rows: the
Debian test image against issue 14's targets (1.5x ``umoci unpack``, 1.25x ``umoci raw
unpack`` with an identical tree), 20,000 files of 4 KiB against 1.25x ``umoci raw
unpack``, the other synthetic images as diagnostic rows (and the points of the unpack
chart), the client's peak RSS, and the rest of the numbers as lines below the table. The
trees are written into tmpfs (/dev/shm) when there is one. A missing prerequisite (root,
umoci, the Debian image) makes a row that says so instead of failing the suite.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from bench.bench_unpack import (
    Image,
    MiB,
    UnpackFailed,
    big_input,
    contenders,
    debian_input,
    log,
    many_files_input,
    measure_in,
    missing_prerequisite,
    summarize,
)
from bench.measure import filesystem_of
from bench.rows import Bench, Row, release_label

DEBIAN = "unpack of the Debian test image"
# umoci time / client time (issue 14): umoci unpack, umoci raw unpack, raw on 20,000 files
TARGET = 1.5
RAW_TARGET = 1.25
FILES_TARGET = 1.25
RSS_TARGET_MIB = 64
# the synthetic images, also the points of the chart: MiB of large files; 4 KiB files
FULL_CURVES = ([32, 128, 512], [2500, 5000, 10000, 20000])
SMOKE_CURVES = ([4], [500, 2000])


def unpack_sizes(smoke: bool) -> tuple[list[int], list[int]]:
    """(synthetic layers in MiB, counts of 4 KiB files)."""
    return SMOKE_CURVES if smoke else FULL_CURVES


def disk_needed(smoke: bool) -> int:
    """Bytes the measure may need at once on the work directory: the images (cached)."""
    sizes, counts = unpack_sizes(smoke)
    debian = 512 * MiB  # its gzip and zstd layouts, and one unpacked rootfs
    return debian + sum(sizes) * MiB + sum(counts) * 8192


def scratch_root(workdir: Path) -> Path:
    """Where the trees are written: a tmpfs (/dev/shm) when there is one with room, as the
    issue measured; else the work directory."""
    shm = Path("/dev/shm")
    try:
        st = os.statvfs(shm)
    except OSError:
        return workdir
    if st.f_bavail * st.f_frsize > 4 << 30:
        return shm
    return workdir


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _last_line(error: BaseException, width: int = 120) -> str:
    """The last line of an error: for a failed command, the end of its stderr."""
    text = str(error).strip()
    line = text.splitlines()[-1] if text else type(error).__name__
    return line if len(line) <= width else line[: width - 3] + "..."


def _not_measured(bench: Bench, label: str, why: str) -> None:
    target = f">= {TARGET:g}x"
    bench.add(Row(DEBIAN, label, f"not measured: {why}", "umoci unpack", "—", target, "—"))


def _tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root``: kind, mode, owner, size, link target or content digest."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            what: Any = None
            if stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                what = h.hexdigest()
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                what = st.st_rdev
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_uid, st.st_gid, size, what)
    return out


class TreeCheck:
    """Compares the client's tree with umoci raw unpack's (the untimed round)."""

    def __init__(self) -> None:
        self.differences: Optional[list[str]] = None
        self.entries = 0

    def __call__(self, client: Path, umoci: Path) -> None:
        ours, theirs = _tree(client), _tree(umoci)
        self.entries = len(theirs)
        diff = [
            f"{name}: client {ours.get(name)} umoci {theirs.get(name)}"
            for name in sorted(set(ours) | set(theirs))
            if ours.get(name) != theirs.get(name)
        ]
        self.differences = diff


def unpack_rows(bench: Bench, release: Any, workdir: Path) -> None:
    """Measure with ``release`` (the newest skopeo, as bench_unpack.py does); images are
    built once and cached under ``workdir``."""
    label = release_label(release)
    missing = missing_prerequisite()
    if missing:
        _not_measured(bench, label, missing)
        return
    workdir.mkdir(parents=True, exist_ok=True)
    images: List[Image] = []
    debian: Optional[Image] = None
    if bench.s.smoke:
        # the Debian image takes about a minute to unpack three ways: full runs only
        _not_measured(bench, label, "full runs only (--smoke)")
    else:
        try:
            started = time.monotonic()
            debian, built = debian_input(workdir, release)
            if built:
                print(f"  (Debian image built in {time.monotonic() - started:.0f} s)", flush=True)
            images.append(debian)
        except Exception as e:  # a missing debootstrap, an unreachable mirror ...: say so
            log(f"the Debian image could not be built:\n{e}")
            _not_measured(bench, label, f"no Debian image ({_first_line(e)})")
    sizes, counts = unpack_sizes(bench.s.smoke)
    by_size = {big_input(workdir, mib).label: mib for mib in sizes}
    by_count = {many_files_input(workdir, n).label: n for n in counts}
    images += [big_input(workdir, mib) for mib in sizes]
    images += [many_files_input(workdir, n) for n in counts]
    scratch = scratch_root(workdir)
    bench.detail(f"unpack: trees written to {scratch} ({filesystem_of(scratch)})")

    conts = contenders(release)
    env: Dict[str, str] = dict(bench.s.env)
    curves: Dict[str, list[Any]] = {"files": [], "sizes": []}
    peak_kib = 0
    for image in images:
        is_debian = image is debian
        largest_files = image.label in by_count and by_count[image.label] == max(counts)
        if is_debian:
            what = f"{DEBIAN} ({image.layers} layers, {image.tar_bytes / MiB:.0f} MiB of tar)"
        else:
            what = f"unpack, {image.label}"
        target = f">= {TARGET:g}x" if is_debian else "(diagnostic)"
        print(f"  measuring: {what}", flush=True)
        started = time.monotonic()
        check = TreeCheck() if is_debian else None
        try:
            results = measure_in(scratch, image, conts, bench.s.repeats, env, check)
        except UnpackFailed as e:
            print(f"unpack: {e}", file=sys.stderr, flush=True)
            met = "NO" if e.contender == "client" and is_debian else "—"
            failed = f"{e.contender} failed: {_last_line(e.__cause__ or e)}"
            bench.add(Row(what, label, failed, "umoci unpack", "—", target, met))
            continue
        names = ", ".join(c.name for c in conts)
        print(f"    ({names}: {time.monotonic() - started:.0f} s)", flush=True)
        s = summarize(results)
        peak_kib = max(peak_kib, s.client_hwm_kib)
        point = (s.client, s.umoci, s.raw)
        if image.label in by_count:
            curves["files"].append((by_count[image.label], point))
        if image.label in by_size:
            curves["sizes"].append((by_size[image.label], point))
        ratio = s.umoci / s.client
        bench.add(
            Row(
                what,
                label,
                f"client {s.client:.2f} s",
                f"umoci unpack {s.umoci:.2f} s",
                f"{ratio:.2f}x faster",
                target,
                bench.judge(ratio >= TARGET) if is_debian else "—",
            )
        )
        if is_debian or largest_files:
            raw_ratio = s.raw / s.client
            want = RAW_TARGET if is_debian else FILES_TARGET
            same = True
            note = ""
            if check is not None:
                same = check.differences == []
                n_diff = len(check.differences or [])
                note = (
                    f", identical tree ({check.entries} entries)"
                    if same
                    else f", tree DIFFERS in {n_diff} entries"
                )
                for line in (check.differences or [])[:5]:
                    bench.detail(f"unpack tree difference: {line}")
            bench.add(
                Row(
                    what + " vs umoci raw unpack",
                    label,
                    f"client {s.client:.2f} s",
                    f"umoci raw unpack {s.raw:.2f} s",
                    f"{raw_ratio:.2f}x faster{note}",
                    f">= {want:g}x" + (", identical tree" if check is not None else ""),
                    bench.judge(raw_ratio >= want and same),
                )
            )
        bench.detail(
            f"{label}: unpack of {image.label}, {image.tar_bytes / MiB:.0f} MiB of tar "
            f"({image.blob_bytes / MiB:.0f} MiB gzip): umoci unpack {s.umoci:.2f} s, umoci raw "
            f"unpack {s.raw:.2f} s, client {s.client:.2f} s ({s.in_unpack:.2f} s in unpack; "
            f"{s.raw / s.client:.2f}x the speed of umoci raw unpack); peak RSS: client "
            f"{s.client_hwm_kib >> 10} MiB (+{s.client_growth_kib >> 10} MiB during the "
            f"unpack), its skopeo {s.skopeo_rss_kib >> 10} MiB, umoci {s.umoci_rss_kib >> 10} MiB"
        )
    bench.s.plots["unpack"] = curves
    if peak_kib:
        bench.add(
            Row(
                "peak RSS of the client during unpack (every image above)",
                label,
                f"{peak_kib >> 10} MiB",
                "(VmHWM of the client process)",
                "—",
                f"< {RSS_TARGET_MIB} MiB",
                bench.judge(peak_kib >> 10 < RSS_TARGET_MIB),
            )
        )
