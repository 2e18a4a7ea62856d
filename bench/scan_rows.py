"""Rows of issue 14 on many images: a scanner, and images per second against pool size.

- ``scan``: from every tag of the local registry, ``/etc/os-release`` and the dpkg status
  file, read by ``read_files`` (``read_file`` per path where the library has no
  ``read_files`` yet: the row says which) through ``ProxyPool`` with as many threads,
  against what a script does without the library: ``skopeo copy`` to ``dir:`` and
  ``tar -x`` of those paths from every layer, image after image.
- ``pools``: the 50 tags (open + manifest + config + close) through ``ProxyPool`` of 1 to
  50 proxies, pool start included, on the local registry and through the 20 ms relay; the
  best pool against one ``ImageProxy`` through the relay is a row, the rest a chart.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Any, Dict, List, Sequence

from bench.inputs import SCANNED
from bench.measure import MeasureError, median
from bench.rows import Bench, Row, release_label

RELAY_TARGET = 10.0
SCAN_TARGET = 5.0


def _scan_by_hand(bench: Bench, release: Any, refs: Sequence[str]) -> Dict[str, Any]:
    """skopeo copy to dir: + tar -x of the scanned paths, per image: the baseline."""
    work = bench.s.out_dir / "scan"
    members = [p.lstrip("/") for p in SCANNED]
    got = 0
    t0 = time.perf_counter()
    for ref in refs:
        shutil.rmtree(work, ignore_errors=True)
        copied, out = work / "dir", work / "files"
        out.mkdir(parents=True)
        argv = [*release.argv, "--insecure-policy", "copy", "-q", "--src-tls-verify=false"]
        proc = subprocess.run([*argv, ref, f"dir:{copied}"], capture_output=True)
        if proc.returncode != 0:
            raise MeasureError(f"skopeo copy {ref}: {proc.stderr.decode(errors='replace')}")
        manifest = json.loads((copied / "manifest.json").read_bytes())
        for layer in manifest["layers"]:
            blob = copied / layer["digest"].split(":", 1)[1]
            # a layer without some of the paths makes tar exit 2 ("not found in archive")
            tar = subprocess.run(
                ["tar", "-x", "-f", str(blob), "-C", str(out), *members], capture_output=True
            )
            if tar.returncode not in (0, 2):
                raise MeasureError(f"tar -x {blob}: {tar.stderr.decode(errors='replace')}")
        got += sum((out / m).stat().st_size for m in members)
    total = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    return {"total": total, "bytes": got}


def scan_rows(bench: Bench, release: Any, refs: Sequence[str]) -> None:
    label = release_label(release)
    size = bench.s.pool_size
    spec = {
        "kind": "scan",
        "skopeo": list(release.argv),
        "refs": list(refs),
        "paths": list(SCANNED),
        "size": size,
    }
    res = bench.interleave(
        {"client": bench._workload(spec), "by-hand": lambda: _scan_by_hand(bench, release, refs)}
    )
    client = median([r["total"] for r in res["client"]])
    by_hand = median([r["total"] for r in res["by-hand"]])
    api = res["client"][0]["api"]
    same = res["client"][0]["bytes"] == res["by-hand"][0]["bytes"]
    ratio = by_hand / client
    bench.add(
        Row(
            f"scanner: os-release + dpkg status from {len(refs)} tags ({api}), ProxyPool({size})",
            label,
            f"client {client:.2f} s",
            f"skopeo copy dir: + tar -x per image {by_hand:.2f} s",
            f"{ratio:.2f}x faster" + ("" if same else " (DIFFERENT bytes)"),
            f">= {SCAN_TARGET:g}x",
            bench.judge(same and ratio >= SCAN_TARGET),
        )
    )
    bench.detail(
        f"{label}: scanner, {len(refs)} images: client ({api}, pool of {size}, start "
        f"included) {client:.2f} s, {res['client'][0]['bytes']} bytes read; by hand "
        f"{by_hand:.2f} s, {res['by-hand'][0]['bytes']} bytes extracted"
    )


def pool_sizes(smoke: bool, tags: int) -> List[int]:
    sizes = [4] if smoke else [2, 4, 8, 16, 32, 50]
    return [s for s in sizes if s <= tags]


def pool_sweep(bench: Bench, release: Any, refs: Sequence[str], relayed: bool) -> None:
    """Images per second for one proxy and pools of every size (threads as many)."""
    label = release_label(release)
    n = len(refs)
    rtt = f"+{2000 * bench.s.relay_delay:g} ms per round trip"
    runs = {"single": bench._tags_spec(release, refs, "single")}
    for size in pool_sizes(bench.s.smoke, n):
        runs[f"pool-{size}"] = bench._tags_spec(release, refs, "pool", size)
    res = bench.interleave(runs)
    rates = {k: n / median([r["total"] for r in v]) for k, v in res.items()}
    starts = {k: median([r["start"] for r in v]) for k, v in res.items()}
    where = "relay" if relayed else "local"
    bench.s.plots.setdefault("pools", {})[where] = {
        "tags": n,
        "rtt_ms": 2000 * bench.s.relay_delay,
        "single": rates["single"],
        "sizes": [(int(k.split("-")[1]), r) for k, r in rates.items() if k != "single"],
    }
    bench.detail(
        f"{label}: {n} tags, {rtt if relayed else 'local registry'}, "
        "images/s (start of the pool): "
        + "; ".join(f"{k} {rates[k]:.1f} ({starts[k]:.2f} s)" for k in rates)
    )
    if not relayed:
        return
    best = max((k for k in rates if k != "single"), key=lambda k: rates[k])
    ratio = rates[best] / rates["single"]
    bench.add(
        Row(
            f"the same {n} tags, {rtt}, best pool (start included)",
            label,
            f"ProxyPool({best.split('-')[1]}) {rates[best]:.1f} images/s",
            f"one proxy {rates['single']:.1f} images/s",
            f"{ratio:.2f}x",
            f">= {RELAY_TARGET:g}x",
            bench.judge(ratio >= RELAY_TARGET),
        )
    )
