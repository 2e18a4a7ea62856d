"""``python -m bench``: build the inputs, run every measure, print the table.

Options: ``--smoke`` (tiny sizes, one repetition: proves the suite runs), ``--repeats N``,
``--only fetch,sizes,tags,pools,relay,scan,layers,engine,unpack``, ``--workdir DIR``
(inputs are cached there; outputs are written there too), ``--charts DIR`` (where the PNG
charts go: DIR/charts by default), ``--client-src DIR`` (measure the client in
DIR/containers_image_proxy instead of the installed one, e.g. a patched copy),
``--markdown FILE`` (also write the table there). ``CIP_SKOPEO_RELEASES=1.22`` restricts
the skopeo releases, as for the tests.

``unpack`` (the client's layer unpack against ``umoci unpack``, see bench/bench_unpack.py)
needs root and umoci; without them its row says what is missing. Its images are cached in
``DIR/unpack``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from bench.charts import draw
from bench.engine_rows import engine_rows
from bench.inputs import REPO_ROOT, RegistryWithTags, big_layers_image, disk_free, tags_layout
from bench.measure import child_env, load_average, machine_lines
from bench.relay import DelayRelay
from bench.rows import Bench, Row, Settings
from bench.scan_rows import pool_sweep, scan_rows
from bench.unpack_rows import disk_needed, unpack_rows
from bench.user_rows import fetch_size_rows, fetch_with_user_rows
from testbed.releases import available_releases

MEASURES = ("fetch", "sizes", "tags", "pools", "relay", "scan", "layers", "engine", "unpack")


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition")
    p.add_argument("--repeats", type=int, default=None, help="runs of each contender (3)")
    p.add_argument("--only", default=",".join(MEASURES), help="measures to run")
    p.add_argument("--workdir", type=Path, default=REPO_ROOT / ".cache" / "bench")
    p.add_argument("--client-src", default=None, help="directory holding a client to measure")
    p.add_argument("--pool-size", type=int, default=4, help="pool for the local registry")
    p.add_argument("--relay-pool-size", type=int, default=16, help="pool behind the relay")
    p.add_argument("--relay-delay", type=float, default=0.010, help="seconds, each way")
    p.add_argument("--markdown", type=Path, default=None, help="write the table here too")
    p.add_argument("--charts", type=Path, default=None, help="PNG charts here (WORKDIR/charts)")
    return p.parse_args(argv)


def render(rows: List[Row], machine: List[str], details: List[str]) -> str:
    order: Dict[str, int] = {}
    for row in rows:
        order.setdefault(row.measure, len(order))
    rows = sorted(rows, key=lambda r: order[r.measure])  # stable: releases stay in order
    out = ["Machine:", *(f"- {line}" for line in machine), ""]
    out.append("| measure | skopeo (protocol) | contender | baseline | ratio | target | met |")
    out.append("|---|---|---|---|---|---|---|")
    for r in rows:
        out.append(
            f"| {r.measure} | {r.release} | {r.contender} | {r.baseline} | {r.ratio} "
            f"| {r.target} | {r.met} |"
        )
    if details:
        out += ["", "Medians behind the table:", *(f"- {d}" for d in details)]
    return "\n".join(out) + "\n"


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    only = {m.strip() for m in args.only.split(",") if m.strip()}
    unknown = only - set(MEASURES)
    if unknown:
        print(f"unknown measures: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    releases = available_releases()
    if not releases:
        print("no skopeo release found (scripts/setup.sh installs one)", file=sys.stderr)
        return 2
    workdir: Path = args.workdir
    out_dir = workdir / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    smoke = args.smoke
    settings = Settings(
        smoke=smoke,
        repeats=args.repeats or (1 if smoke else 3),
        big_size=(4 << 20) if smoke else (1 << 30),
        layer_count=8,
        layer_size=(1 << 20) if smoke else (128 << 20),
        tag_count=5 if smoke else 50,
        pool_size=args.pool_size,
        relay_pool_size=args.relay_pool_size,
        relay_delay=args.relay_delay,
        out_dir=out_dir,
        env=child_env(args.client_src),
    )
    needed = 1 << 30
    if "fetch" in only:
        needed += 3 * settings.big_size
    if "sizes" in only:
        needed += 2 * (336 << 20)
    if "layers" in only:
        needed += settings.layer_count * settings.layer_size
    if "unpack" in only:
        needed += disk_needed(smoke)
    if disk_free(workdir) < needed:
        print(f"not enough space in {workdir}: {needed >> 20} MiB needed", file=sys.stderr)
        return 2

    machine = machine_lines(releases, workdir)
    machine.append(f"commit: {git_commit()}")
    if args.client_src:
        machine.append(f"client measured from: {args.client_src}")
    print("\n".join(machine), flush=True)
    if load_average() > 0.5:
        print("warning: other processes are using the CPU; the numbers will be noisy")
    started = time.monotonic()
    bench = Bench(settings)

    print("building inputs ...", flush=True)
    # only those of the measures asked for (the unpack measure builds its own)
    big = big_layers_image(workdir, 1, settings.big_size, seed=1000) if "fetch" in only else None
    layers = None
    if "layers" in only:
        layers = big_layers_image(workdir, settings.layer_count, settings.layer_size, seed=2000)
    # first reads from disk would make the first contender look slow: read everything once
    for image in (big, layers):
        for layer in image.layers if image is not None else ():
            with open(layer.path, "rb", buffering=0) as f:
                while f.read(1 << 20):
                    pass

    newest = releases[-1]
    if big is not None:
        print(f"fetch: one {big.layers[0].size >> 20} MiB layer", flush=True)
        for release in releases:
            fetch_with_user_rows(bench, release, big, newest=release is newest)
    if "sizes" in only:
        print(f"sizes: fetch rate against blob size, skopeo {newest.name}", flush=True)
        fetch_size_rows(bench, newest, workdir)
    if only & {"tags", "relay", "pools", "scan"}:
        layout, tags = tags_layout(workdir, settings.tag_count)
        registry = RegistryWithTags(layout, tags, releases[-1].argv)
        print(f"pushing {len(tags)} tags to a local registry ...", flush=True)
        registry.start()
        settings.registry_pid = registry.pid
        try:
            if "tags" in only:
                print(f"tags: {len(tags)} images in a local registry", flush=True)
                for release in releases:
                    bench.tags_rows(release, registry.refs())
            if "pools" in only:
                print(f"pools: images/s against pool size, skopeo {newest.name}", flush=True)
                pool_sweep(bench, newest, registry.refs(), relayed=False)
            if only & {"relay", "pools"}:
                delay = settings.relay_delay
                with DelayRelay(("127.0.0.1", registry.port), delay) as relay:
                    print(f"relay: +{2000 * delay:g} ms per round trip", flush=True)
                    if "relay" in only:
                        for release in releases:
                            bench.relay_rows(release, registry.refs(relay.port))
                    if "pools" in only:
                        pool_sweep(bench, newest, registry.refs(relay.port), relayed=True)
            if "scan" in only:
                print(f"scan: a scanner over {len(tags)} tags, skopeo {newest.name}", flush=True)
                scan_rows(bench, newest, registry.refs())
        finally:
            registry.stop()
    if layers is not None:
        print(f"layers: {settings.layer_count} x {settings.layer_size >> 20} MiB", flush=True)
        for release in releases:
            bench.layers_rows(release, layers)
    if "engine" in only:
        print(f"engine: layer shapes that used to cost more, skopeo {newest.name}", flush=True)
        engine_rows(bench, newest, workdir / "shapes")
    if "unpack" in only:
        # one release, the newest, as bench/bench_unpack.py does: what is measured is the
        # client's unpack, not how skopeo serves the blobs
        print(f"unpack: against umoci, with skopeo {releases[-1].name}", flush=True)
        unpack_rows(bench, releases[-1], workdir / "unpack")

    machine.append(f"load average at the end: {load_average():.2f}")
    machine.append(
        f"run: {'smoke' if smoke else 'full'}, {settings.repeats} repetitions, "
        f"{time.monotonic() - started:.0f} s"
    )
    text = render(bench.rows, machine, settings.details)
    print("\n" + text)
    if args.markdown is not None:
        args.markdown.write_text(text)
    commit = git_commit()
    title = f"{'smoke run, numbers mean nothing; ' if smoke else ''}commit {commit}"
    for line in draw(settings.plots, args.charts or workdir / "charts", title):
        print(line)
    return 0


def git_commit() -> str:
    """The commit measured (with "+changes" when the client or the bench has uncommitted
    changes; the docs do not count)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "src", "bench"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+changes" if dirty else "")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
