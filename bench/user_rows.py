"""Rows of issue 14 on fetching: what a user's own code gets, and the machine's two limits.

With the newest skopeo, the 1 GiB fetch measure (``Bench.fetch_rows``) also runs, in the
same interleaved rounds: ``shutil.copyfileobj(blob, f, 1 MiB)`` into a new file, a
``readinto`` loop and ``for chunk in blob`` into /dev/null (workloads in
bench/user_workloads.py). Every release gets the row of the verified fetch into a new file
against the slower of its two limits measured in the same run: ``hashlib.sha256`` of the
cached layer and ``cat layer > new file``.

``sizes``: the fetch rate against blob size (16, 64, 256 MiB and the 1 GiB of the fetch
measure), with hashlib's rate and the write limit at each size: a chart, no row.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List

from bench.inputs import ImageInput, big_layers_image
from bench.measure import median, run_timed
from bench.rows import Bench, Row, _fmt_size, _rate, release_label

ITER_DEADLINE = 15.0  # seconds: iteration once read a byte at a time (90 s did not do a GiB)


def _user(bench: Bench, release: Any, image: ImageInput, how: str, out: str) -> Any:
    spec = {
        "kind": "user-fetch",
        "skopeo": list(release.argv),
        "ref": image.ref,
        "how": how,
        "out": out,
        "deadline": 1.0 if bench.s.smoke else ITER_DEADLINE,
    }
    return bench._workload(spec)


def _cat(bench: Bench, path: str) -> Callable[[], Dict[str, float]]:
    def write_alone() -> Dict[str, float]:
        out = bench.s.out_dir / "cat.out"
        wall, cpu = run_timed(["cat", path], stdout=out)
        out.unlink()
        return {"wall": wall, "cpu": cpu}

    return write_alone


def fetch_with_user_rows(bench: Bench, release: Any, image: ImageInput, newest: bool) -> None:
    """The 1 GiB fetch measure, plus the user's ways of copying when ``newest``."""
    label = release_label(release)
    layer = image.layers[0]
    size = _fmt_size(layer.size)
    extra: Dict[str, Callable[[], Any]] = {}
    if newest:
        new_file = str(bench.s.out_dir / "user.out")
        extra = {
            "copyfileobj": _user(bench, release, image, "copyfileobj", new_file),
            "readinto": _user(bench, release, image, "readinto", os.devnull),
            "iter": _user(bench, release, image, "iter", os.devnull),
        }
    res = bench.fetch_rows(release, image, extra)
    fetch = median([r["fetch"] for r in res["client"]])
    hashed = median([r["wall"] for r in res["hash"]])
    write = median([r["wall"] for r in res["write"]])
    limit, which = max((hashed, "hashlib"), (write, "cat > new file"))
    want = 0.8 if release.protocol == "0.2.8" else None
    bench.add(
        Row(
            f"verified fetch of {size} into a new file, against the slower of its limits",
            label,
            f"fetch {fetch:.2f} s",
            f"slower of hashlib {hashed:.2f} s / cat > file {write:.2f} s: {which}",
            f"{limit / fetch:.2f}x of its rate",
            f">= {want:g}x" if want else "—",
            bench.judge(None if want is None else limit / fetch >= want),
        )
    )
    if newest:
        bench.s.plots["fetch_1g"] = {
            "size": layer.size,
            "fetch": fetch,
            "hash": hashed,
            "write": write,
        }
    if not extra:
        return
    copy_to = fetch
    via = median([r["fetch"] for r in res["copyfileobj"]])
    bench.add(
        Row(
            f"shutil.copyfileobj(blob, f, 1 MiB) of a verified {size} layer, new file",
            label,
            f"copyfileobj {via:.2f} s",
            f"blob.copy_to(f) {copy_to:.2f} s",
            f"{copy_to / via:.2f}x its speed",
            ">= 0.9x",
            bench.judge(copy_to / via >= 0.9),
        )
    )
    dropped = median([r["fetch"] for r in res["discard"]])
    for key, what in (("readinto", "a readinto loop (1 MiB)"), ("iter", "for chunk in blob")):
        runs = res[key]
        rate = median([r["bytes"] / r["fetch"] for r in runs])
        stopped = [r for r in runs if not r["complete"]]
        note = ""
        if stopped:
            got = median([r["bytes"] for r in stopped])
            note = f", stopped at {stopped[0]['deadline']:g} s with {_fmt_size(got)} read"
        ratio = rate / (layer.size / dropped)
        bench.add(
            Row(
                f"{what} of the same verified blob into /dev/null",
                label,
                f"{rate / 1e9:.3g} GB/s{note}",
                f"copy_to into /dev/null {_rate(layer.size, dropped)}",
                f"{ratio:.2f}x its rate",
                ">= 0.9x",
                bench.judge(ratio >= 0.9),
            )
        )


def fetch_size_rows(bench: Bench, release: Any, workdir: Any) -> None:
    """Fetch rate against blob size, with hashlib and the write limit: a chart's data and
    one line below the table per size."""
    sizes_mib = [1, 2] if bench.s.smoke else [16, 64, 256]
    points: List[Dict[str, float]] = []
    for k, mib in enumerate(sizes_mib):
        image = big_layers_image(workdir, 1, mib << 20, seed=3000 + k)
        layer = image.layers[0]
        with open(layer.path, "rb", buffering=0) as f:  # the first read would be from disk
            while f.read(1 << 20):
                pass
        res = bench.interleave(
            {
                "client": bench._workload(bench._fetch_spec(release, image, "verified")),
                "hash": bench._workload({"kind": "hash", "path": layer.path}),
                "write": _cat(bench, layer.path),
            }
        )
        (bench.s.out_dir / "layer.out").unlink(missing_ok=True)
        point = {
            "size": layer.size,
            "fetch": median([r["fetch"] for r in res["client"]]),
            "hash": median([r["wall"] for r in res["hash"]]),
            "write": median([r["wall"] for r in res["write"]]),
        }
        points.append(point)
        bench.detail(
            f"{release_label(release)}: verified fetch of {_fmt_size(layer.size)} into a new "
            f"file {_rate(layer.size, point['fetch'])}; hashlib {_rate(layer.size, point['hash'])}"
            f"; cat > new file {_rate(layer.size, point['write'])}"
        )
    bench.s.plots["fetch_sizes"] = points
