"""The ``unpack`` measure: the client's layer unpack against ``umoci unpack``.

The comparison of ``bench/bench_unpack.py`` (see there: each unpacker in a fresh process,
alternating, after an untimed round, ``sync`` around every run), made into table rows: the
Debian test image against the target (at least as fast as umoci), the synthetic images of
that script as diagnostic rows, and the rest of its numbers (``umoci raw unpack``, peak
RSS) as lines below the table. A missing prerequisite (root, umoci, the Debian image) makes
a row that says so instead of failing the suite.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from bench.bench_unpack import (
    FULL_SIZES,
    SMOKE_SIZES,
    Image,
    MiB,
    UnpackFailed,
    contenders,
    debian_input,
    log,
    measure_in,
    missing_prerequisite,
    summarize,
    synthetic_inputs,
)
from bench.rows import Bench, Row, release_label

DEBIAN = "unpack of the Debian test image"
TARGET = 1.0  # umoci time / client time


def unpack_sizes(smoke: bool) -> tuple[int, int]:
    """(largest synthetic layer in MiB, 4 KiB files): the sizes of bench_unpack.py."""
    return SMOKE_SIZES if smoke else FULL_SIZES


def disk_needed(smoke: bool) -> int:
    """Bytes the measure may need at once: the images (cached) and one unpacked copy."""
    big, many = unpack_sizes(smoke)
    debian = 512 * MiB  # its gzip and zstd layouts, and one unpacked rootfs
    return debian + 3 * (big + big // 4) * MiB + 2 * many * 8192


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _last_line(error: BaseException, width: int = 120) -> str:
    """The last line of an error: for a failed command, the end of its stderr."""
    text = str(error).strip()
    line = text.splitlines()[-1] if text else type(error).__name__
    return line if len(line) <= width else line[: width - 3] + "..."


def _not_measured(bench: Bench, label: str, why: str) -> None:
    bench.add(Row(DEBIAN, label, f"not measured: {why}", "umoci unpack", "—", ">= 1x", "—"))


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
    images += synthetic_inputs(workdir, *unpack_sizes(bench.s.smoke))

    conts = contenders(release)
    env: Dict[str, str] = dict(bench.s.env)
    for image in images:
        is_debian = image is debian
        if is_debian:
            what = f"{DEBIAN} ({image.layers} layers, {image.tar_bytes / MiB:.0f} MiB of tar)"
        else:
            what = f"unpack, {image.label}"
        target = ">= 1x" if is_debian else "(diagnostic)"
        print(f"  measuring: {what}", flush=True)
        started = time.monotonic()
        try:
            results = measure_in(workdir, image, conts, bench.s.repeats, env)
        except UnpackFailed as e:
            print(f"unpack: {e}", file=sys.stderr, flush=True)
            met = "NO" if e.contender == "client" and is_debian else "—"
            failed = f"{e.contender} failed: {_last_line(e.__cause__ or e)}"
            bench.add(Row(what, label, failed, "umoci unpack", "—", target, met))
            continue
        names = ", ".join(c.name for c in conts)
        print(f"    ({names}: {time.monotonic() - started:.0f} s)", flush=True)
        s = summarize(results)
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
        bench.detail(
            f"{label}: unpack of {image.label}, {image.tar_bytes / MiB:.0f} MiB of tar "
            f"({image.blob_bytes / MiB:.0f} MiB gzip): umoci unpack {s.umoci:.2f} s, umoci raw "
            f"unpack {s.raw:.2f} s, client {s.client:.2f} s ({s.in_unpack:.2f} s in unpack; "
            f"{s.raw / s.client:.2f}x the speed of umoci raw unpack); peak RSS: client "
            f"{s.client_hwm_kib >> 10} MiB (+{s.client_growth_kib >> 10} MiB during the "
            f"unpack), its skopeo {s.skopeo_rss_kib >> 10} MiB, umoci {s.umoci_rss_kib >> 10} MiB"
        )
