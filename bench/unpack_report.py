"""The report of bench/bench_unpack.py: medians and peaks of the runs, the table lines, and
cProfile over every thread of the client's child (``--profile``)."""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # bench_unpack imports this module
    from bench.bench_unpack import Image, Sample

MiB = 1 << 20


def _profile_all_threads() -> list[Any]:
    """cProfile the main thread and every thread started from now on (the engine parses
    in a thread of its own: a main-thread profile would miss all of that)."""
    import cProfile
    import threading

    main = cProfile.Profile()
    profiles = [main]
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        prof = cProfile.Profile()
        try:
            prof.enable()
        except ValueError:  # Python 3.12+: one profiler at a time
            original(self)
            return
        profiles.append(prof)
        try:
            original(self)
        finally:
            prof.disable()

    threading.Thread.run = run  # type: ignore[method-assign]
    main.enable()
    return profiles


def _print_profile(profiles: list[Any]) -> None:
    import io
    import pstats

    profiles[0].disable()
    out = io.StringIO()
    stats = pstats.Stats(profiles[0], stream=out)
    for prof in profiles[1:]:
        stats.add(prof)
    stats.sort_stats("tottime").print_stats(25)
    print(f"cProfile, {len(profiles)} threads merged (own time first):", file=sys.stderr)
    print(out.getvalue(), file=sys.stderr)


# --- report ---------------------------------------------------------------------------


def _mib(kib: float) -> str:
    return f"{kib / 1024:.0f} MiB"


@dataclass(frozen=True)
class Summary:
    """Medians of the wall times (seconds) and peaks of the RSS (KiB) of one image's runs."""

    umoci: float  # umoci unpack
    raw: float  # umoci raw unpack
    client: float  # the client's whole process
    in_unpack: float  # the client's open + unpack, inside its process
    client_hwm_kib: int
    client_growth_kib: int  # how much the client's RSS grew during the unpack
    skopeo_rss_kib: int
    umoci_rss_kib: int


def summarize(results: dict[str, list[Sample]]) -> Summary:
    med = {name: statistics.median(s.wall for s in samples) for name, samples in results.items()}
    client = results["client"]
    return Summary(
        umoci=med["umoci unpack"],
        raw=med["umoci raw unpack"],
        client=med["client"],
        in_unpack=statistics.median(s.extra["seconds"] for s in client),
        client_hwm_kib=max(s.extra["hwm_kib"] for s in client),
        client_growth_kib=max(s.extra["hwm_kib"] - s.extra["rss_before_kib"] for s in client),
        skopeo_rss_kib=max(s.extra["skopeo_maxrss_kib"] for s in client),
        umoci_rss_kib=max(s.maxrss_kib for s in results["umoci unpack"]),
    )


def report(image: Image, results: dict[str, list[Sample]]) -> list[str]:
    s = summarize(results)
    return [
        f"| {image.label} | {image.tar_bytes / MiB:.0f} MiB ({image.blob_bytes / MiB:.0f} gz) "
        f"| {s.umoci:.2f} s | {s.raw:.2f} s | {s.client:.2f} s ({s.in_unpack:.2f} in unpack) "
        f"| **{s.client / s.umoci:.2f}** | {s.client / s.raw:.2f} "
        f"| {_mib(s.client_hwm_kib)} (+{_mib(s.client_growth_kib)}) | {_mib(s.skopeo_rss_kib)} "
        f"| {_mib(s.umoci_rss_kib)} |"
    ]


HEADER = [
    "| image | tar (blob) | umoci unpack | umoci raw unpack | client (wall) "
    "| client/umoci | client/raw | client peak RSS (growth) | skopeo RSS | umoci RSS |",
    "|---|---|---|---|---|---|---|---|---|---|",
]
