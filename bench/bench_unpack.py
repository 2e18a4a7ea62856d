"""Unpack speed and memory of the client against ``umoci unpack``, on a real image.

    .venv/bin/python bench/bench_unpack.py            # Debian minbase + 128/512 MiB layers
    .venv/bin/python bench/bench_unpack.py --smoke    # tiny: proves it runs (< 1 min warm)
    .venv/bin/python bench/bench_unpack.py --profile  # also: where the client's time goes

Needs root (the image holds files of other owners, devices, setuid files; both unpackers
apply ownership). Images are built once and cached under ``--workdir``: the Debian one by
tests/testbed/debian_image.py (its rootfs is debootstrapped once into the test-bed cache),
and synthetic images of one big gzip layer (a few large files and many 1 MiB ones).

Every contender runs in a fresh process, N times, alternating (the order rotates each
round), into a fresh directory on the same filesystem as the image, page cache warm (one
untimed run of each first), ``sync`` before each run so that one run's writeback does not
land on the next. Contenders:

- ``umoci unpack``: the target (it also writes a bundle and an mtree of the rootfs);
- ``umoci raw unpack``: the rootfs only, umoci's bare extraction;
- the client: ``ImageProxy`` + ``layers.unpack`` through skopeo (the newest release here).

Printed: medians of the wall time, the ratios client/umoci, and peak RSS: the client's
Python process (VmHWM, and how much it grew during the unpack), its skopeo, umoci. The
big-file images come in two sizes (128 and 512 MiB) to show the client's memory does not
follow the layer size; the many-files one (20000 files of 4 KiB) shows the cost per entry.
Nothing here asserts anything.

``python -m bench`` runs the same comparison as its ``unpack`` measure
(:mod:`bench.unpack_rows`), with the pieces below; this script prints the fuller table.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the test bed: releases, the Debian image

from testbed.debian_image import build_debian_image, umoci_version  # noqa: E402
from testbed.releases import SkopeoRelease, available_releases  # noqa: E402

if str(REPO) not in sys.path:  # run as a script: the bench package next to it
    sys.path.insert(1, str(REPO))
from bench.unpack_inputs import (  # noqa: E402
    Image,
    MiB,
    big_input,
    log,
    many_files_input,
    synthetic_input,
    synthetic_inputs,
)
from bench.unpack_report import (  # noqa: E402
    HEADER,
    Summary,
    _print_profile,
    _profile_all_threads,
    report,
    summarize,
)

# used by bench.unpack_rows and by other scripts, from here as before
__all__ = [
    "HEADER",
    "Image",
    "MiB",
    "Summary",
    "big_input",
    "many_files_input",
    "report",
    "summarize",
    "synthetic_input",
]

# The synthetic images: the largest layer in MiB (a quarter of it too), and how many 4 KiB
# files in the many-files one; in a full run, and in a smoke run.
FULL_SIZES = (512, 20000)
SMOKE_SIZES = (16, 2000)


# --- inputs ------------------------------------------------------------------------------


def _layer_sizes(layout: Path, tag: str) -> tuple[int, int, int]:
    """(layers, compressed bytes, uncompressed bytes) of an image in a layout."""
    index = json.loads((layout / "index.json").read_text())
    desc = next(
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    )
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / desc["digest"].split(":")[1]).read_text())
    compressed = uncompressed = 0
    for layer in manifest["layers"]:
        path = blobs / layer["digest"].split(":")[1]
        compressed += layer["size"]
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(4 * MiB):
                uncompressed += len(chunk)
    return len(manifest["layers"]), compressed, uncompressed


def debian_input(workdir: Path, skopeo: SkopeoRelease) -> tuple[Image, dict[str, float]]:
    """The Debian image of the tests, built once into ``workdir/debian``."""
    where = workdir / "debian"
    ready = where / "ready.json"
    if ready.exists():
        info = json.loads(ready.read_text())
        seconds: dict[str, float] = {}
    else:
        shutil.rmtree(where, ignore_errors=True)
        t0 = time.monotonic()
        image = build_debian_image(where, skopeo.argv, log=log)
        seconds = dict(image.seconds, total=time.monotonic() - t0)
        layers, blob, tar = _layer_sizes(image.layout, image.tag)
        info = {"tag": image.tag, "layers": layers, "blob": blob, "tar": tar}
        ready.write_text(json.dumps(info))
    image_ = Image(
        "Debian bookworm minbase (umoci, 2 layers)",
        where / "oci",
        info["tag"],
        info["layers"],
        info["blob"],
        info["tar"],
    )
    return image_, seconds


# --- running ------------------------------------------------------------------------------


@dataclass
class Sample:
    wall: float
    maxrss_kib: int  # of the process and the children it waited for (wait4)
    extra: dict[str, Any] = field(default_factory=dict)


def run_measured(argv: Sequence[str], env: Optional[dict[str, str]] = None) -> Sample:
    """Run ``argv`` to its end; wall time, peak RSS, and its last stdout line as JSON
    (when it prints one)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env
        )
        # wait4 rather than Popen.wait: it also gives the child's resource usage.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        if proc.returncode != 0:
            stderr = err.read().decode(errors="replace")
            raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}:\n{stderr}")
    extra: dict[str, Any] = {}
    lines = stdout.strip().splitlines()
    if lines and lines[-1].startswith("{"):
        extra = json.loads(lines[-1])
    return Sample(wall, usage.ru_maxrss, extra)


class UnpackFailed(RuntimeError):
    """One unpacker failed; ``contender`` says which (the message carries its stderr)."""

    def __init__(self, contender: str, error: BaseException) -> None:
        super().__init__(f"{contender}: {error}")
        self.contender = contender


def missing_prerequisite() -> Optional[str]:
    """What this machine lacks for the comparison (None: nothing). The Debian image has
    prerequisites of its own (debootstrap, a mirror), found out when it is built."""
    if os.geteuid() != 0:
        return "needs root (both unpackers apply the image's ownership)"
    if shutil.which("umoci") is None:
        return "umoci is not installed (scripts/setup.sh installs it)"
    return None


@dataclass(frozen=True)
class Contender:
    name: str
    argv: Callable[[Image, Path], list[str]]


def contenders(skopeo: SkopeoRelease) -> list[Contender]:
    def client(image: Image, dest: Path) -> list[str]:
        argv = [sys.executable, __file__, "--child", image.ref, str(dest)]
        return [*argv, "--skopeo-argv", json.dumps(list(skopeo.argv))]

    return [
        Contender(
            "umoci unpack", lambda i, d: ["umoci", "unpack", "--image", i.umoci_image, str(d)]
        ),
        Contender(
            "umoci raw unpack",
            lambda i, d: ["umoci", "raw", "unpack", "--image", i.umoci_image, str(d / "rootfs")],
        ),
        Contender("client", client),
    ]


def child_env(client_src: Optional[str]) -> dict[str, str]:
    env = dict(os.environ)
    paths = [p for p in (client_src, env.get("PYTHONPATH")) if p]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def measure(
    image: Image,
    conts: list[Contender],
    repeats: int,
    scratch: Path,
    env: dict[str, str],
    check_tree: Optional[Callable[[Path, Path], None]] = None,
) -> dict[str, list[Sample]]:
    """Every contender ``repeats`` times, alternating, after one untimed round; raises
    UnpackFailed when one of them fails. ``check_tree(client's rootfs, umoci raw's)`` is
    called on the trees of the untimed round."""
    results: dict[str, list[Sample]] = {c.name: [] for c in conts}
    for round_ in range(repeats + 1):  # round 0 warms the page cache and is not kept
        order = conts[round_ % len(conts) :] + conts[: round_ % len(conts)]
        kept: dict[str, Path] = {}
        for c in order:
            dest = scratch / f"dest-{round_}-{c.name.replace(' ', '-')}"
            if c.name.startswith("umoci raw"):
                dest.mkdir()
            os.sync()
            try:
                sample = run_measured(c.argv(image, dest), env)
            except RuntimeError as e:
                raise UnpackFailed(c.name, e) from e
            if round_ == 0 and check_tree is not None and c.name in ("client", "umoci raw unpack"):
                kept[c.name] = dest
            else:
                shutil.rmtree(dest)
            os.sync()
            if round_:
                results[c.name].append(sample)
        if kept and check_tree is not None:
            try:
                check_tree(kept["client"], kept["umoci raw unpack"] / "rootfs")
            finally:
                for dest in kept.values():
                    shutil.rmtree(dest)
    return results


def measure_in(
    workdir: Path,
    image: Image,
    conts: list[Contender],
    repeats: int,
    env: dict[str, str],
    check_tree: Optional[Callable[[Path, Path], None]] = None,
) -> dict[str, list[Sample]]:
    """:func:`measure`, with destinations in a scratch directory of ``workdir`` (the same
    filesystem as the image, or a tmpfs given as ``workdir``), removed afterwards."""
    with tempfile.TemporaryDirectory(dir=workdir, prefix="dest-") as scratch:
        return measure(image, conts, repeats, Path(scratch), env, check_tree)


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def child(ref: str, dest: str, skopeo_argv: list[str], profile: bool) -> None:
    """One client unpack in this (fresh) process; prints a JSON line of measurements."""
    import resource

    from containers_image_proxy import ImageProxy, ProxyConfig
    from containers_image_proxy.layers import unpack

    profiles: list[Any] = []
    if profile:
        profiles = _profile_all_threads()
    rss_before = _status_kib("VmRSS")
    t0 = time.perf_counter()
    config = ProxyConfig(skopeo=tuple(skopeo_argv))
    with ImageProxy(config) as proxy, proxy.open_image(ref) as img:
        unpack(proxy, img, dest)
    seconds = time.perf_counter() - t0
    if profile:
        _print_profile(profiles)
    result = {
        "seconds": seconds,
        "rss_before_kib": rss_before,
        "hwm_kib": _status_kib("VmHWM"),
        # skopeo, reaped when the proxy closed.
        "skopeo_maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }
    print(json.dumps(result), flush=True)


def machine(workdir: Path, skopeo: SkopeoRelease) -> list[str]:
    fs = subprocess.run(
        ["stat", "-f", "-c", "%T", str(workdir)], capture_output=True, text=True
    ).stdout.strip()
    return [
        f"{os.cpu_count()} CPUs, {platform.machine()}, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        f"{umoci_version()}; {skopeo}; workdir {workdir} ({fs})",
    ]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition")
    p.add_argument("--repeats", type=int, default=None, help="timed runs of each (5)")
    p.add_argument(
        "--big-mib", type=int, default=None, help="largest synthetic layer (512; 0: none)"
    )
    p.add_argument("--many-files", type=int, default=None, help="4 KiB files (20000; 0: none)")
    p.add_argument("--no-debian", action="store_true", help="synthetic images only")
    p.add_argument("--workdir", type=Path, default=REPO / ".cache" / "bench-unpack")
    p.add_argument("--skopeo", default=None, help="release name or prefix (newest)")
    p.add_argument("--client-src", default=None, help="measure the client in this directory")
    p.add_argument("--profile", action="store_true", help="cProfile one client unpack")
    p.add_argument("--child", nargs=2, metavar=("REF", "DEST"), help=argparse.SUPPRESS)
    p.add_argument("--skopeo-argv", default="[]", help=argparse.SUPPRESS)
    p.add_argument("--child-profile", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.child:
        ref, dest = args.child
        child(ref, dest, json.loads(args.skopeo_argv), args.child_profile)
        return 0
    missing = missing_prerequisite()
    if missing:
        log(missing)
        return 2
    repeats = args.repeats or (1 if args.smoke else 5)
    big, many = SMOKE_SIZES if args.smoke else FULL_SIZES
    big = args.big_mib if args.big_mib is not None else big
    many = args.many_files if args.many_files is not None else many
    releases = available_releases()
    chosen = [r for r in releases if args.skopeo in (None, r.name)]
    chosen = chosen or [r for r in releases if r.name.startswith(f"{args.skopeo}.")]
    if not chosen:
        log(f"no skopeo release {args.skopeo!r}; have {[r.name for r in releases]}")
        return 2
    skopeo = chosen[-1]
    args.workdir.mkdir(parents=True, exist_ok=True)
    env = child_env(args.client_src)

    images: list[Image] = []
    if not args.no_debian:
        t0 = time.monotonic()
        debian, built = debian_input(args.workdir, skopeo)
        how = "cached" if not built else ", ".join(f"{k} {v:.1f}s" for k, v in built.items())
        log(f"Debian image ready in {time.monotonic() - t0:.1f}s ({how})")
        images.append(debian)
    images += synthetic_inputs(args.workdir, big, many)

    conts = contenders(skopeo)
    lines = [
        "",
        *(f"- {m}" for m in machine(args.workdir, skopeo)),
        "",
        f"Medians of {repeats} run(s) each, wall time of the whole process:",
        "",
        *HEADER,
    ]
    for image in images:
        log(f"measuring {image.label}")
        lines += report(image, measure_in(args.workdir, image, conts, repeats, env))
    print("\n".join(lines))

    if args.profile:
        with tempfile.TemporaryDirectory(dir=args.workdir, prefix="dest-") as scratch:
            image = images[0]
            argv = [*conts[-1].argv(image, Path(scratch) / "profiled"), "--child-profile"]
            proc = subprocess.run(argv, env=env, capture_output=True, text=True)
            print(f"\nProfile of the client on {image.label}:\n{proc.stderr}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
