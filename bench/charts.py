"""Charts of a run (PNG, matplotlib's Agg backend), from ``Settings.plots``.

- ``pools.png``: images per second against pool size, on the local registry and through
  the relay, one proxy as a dashed line;
- ``unpack.png``: unpack time against file count and against layer size, the client's and
  umoci's (``umoci unpack`` and ``umoci raw unpack``);
- ``fetch.png``: the verified fetch rate into a new file against blob size, with
  hashlib's rate and the rate of ``cat > new file`` (the write limit) as lines.

matplotlib comes with the ``bench`` extra (``pip install -e '.[bench]'``); without it
nothing is drawn and :func:`draw` says so. What they are drawn from is kept beside them
(``plots.json``): ``python -m bench.charts DIR/plots.json DIR "TITLE"`` draws them again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List


def draw(plots: Dict[str, Any], out_dir: Path, title: str) -> List[str]:
    """Draw what ``plots`` holds into ``out_dir``; lines saying what was written (or why
    nothing was)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "plots.json").write_text(json.dumps({"title": title, "plots": plots}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["charts: not drawn, matplotlib is not installed (the bench extra)"]
    out_dir.mkdir(parents=True, exist_ok=True)
    written: List[str] = []
    for name, fn in (("pools", _pools), ("unpack", _unpack), ("fetch", _fetch)):
        fig = fn(plt, plots)
        if fig is None:
            continue
        fig.text(0.99, 0.005, title, ha="right", va="bottom", fontsize=7, color="0.4")
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(f"chart: {path}")
    return written or ["charts: nothing to draw (no measure of them ran)"]


def _plain_log2(ax: Any, ticks: List[float]) -> None:
    """A base-2 log axis labelled with the measured values as plain numbers."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:.0f}" if t >= 10 else f"{t:.2g}" for t in ticks])


def _pools(plt: Any, plots: Dict[str, Any]) -> Any:
    pools = plots.get("pools")
    if not pools:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ticks: set[int] = {1}
    for where, data in pools.items():
        color = "C0" if where == "local" else "C1"
        text = "local registry" if where == "local" else f"+{data['rtt_ms']:g} ms per round trip"
        ticks.update(s for s, _ in data["sizes"])
        sizes = [1] + [s for s, _ in data["sizes"]]
        rates = [data["single"]] + [r for _, r in data["sizes"]]
        ax.plot(sizes, rates, "o-", color=color, label=f"ProxyPool, {text}")
        ax.axhline(data["single"], color=color, ls="--", lw=0.8, label=f"one ImageProxy, {text}")
    _plain_log2(ax, sorted(ticks))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("proxies in the pool (threads as many); 1: one ImageProxy")
    ax.set_ylabel("images per second (pool start included)")
    tags = next(iter(pools.values()))["tags"]
    ax.set_title(f"open + manifest + config + close, {tags} tags, newest skopeo")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _unpack(plt: Any, plots: Dict[str, Any]) -> Any:
    data = plots.get("unpack")
    if not data:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, key, xlabel in (
        (axes[0], "files", "files of 4 KiB in the layer"),
        (axes[1], "sizes", "layer size (MiB of tar, large files)"),
    ):
        points = sorted(data.get(key, []))
        if not points:
            ax.set_visible(False)
            continue
        xs = [p[0] for p in points]
        for i, (who, style) in enumerate(
            (("client", "o-"), ("umoci unpack", "s--"), ("umoci raw unpack", "^:"))
        ):
            ax.plot(xs, [p[1][i] for p in points], style, label=who)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds (whole process)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("unpack into tmpfs, as root: the client against umoci")
    fig.tight_layout()
    return fig


def _fetch(plt: Any, plots: Dict[str, Any]) -> Any:
    points = list(plots.get("fetch_sizes", []))
    if "fetch_1g" in plots:
        points.append(plots["fetch_1g"])
    if not points:
        return None
    points.sort(key=lambda p: p["size"])
    mib = [p["size"] / (1 << 20) for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, style, text in (
        ("fetch", "o-", "verified fetch into a new file (copy_to)"),
        ("hash", "s--", "hashlib.sha256 of the cached layer"),
        ("write", "^:", "cat layer > new file (the write limit)"),
    ):
        ax.plot(mib, [p["size"] / p[key] / 1e9 for p in points], style, label=text)
    _plain_log2(ax, mib)
    ax.set_xlabel("blob size (MiB)")
    ax.set_ylabel("GB/s")
    ax.set_ylim(bottom=0)
    ax.set_title("fetch rate against blob size (newest skopeo)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: List[str]) -> int:
    """Draw the charts of a run again from its plots.json: ``FILE OUT_DIR [TITLE]``."""
    saved = json.loads(Path(argv[0]).read_text())
    title = argv[2] if len(argv) > 2 else saved["title"]
    for line in draw(saved["plots"], Path(argv[1]), title):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
