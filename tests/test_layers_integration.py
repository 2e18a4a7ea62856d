"""unpack / read_file against real skopeo releases, on an OCI layout made by the test bed."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Callable

import pytest

from containers_image_proxy import AsyncImageProxy, ImageProxy, ProxyConfig, TransferProgress
from containers_image_proxy.layers import (
    LayerFormatError,
    list_dir,
    list_dir_async,
    read_file,
    read_file_async,
    read_files,
    read_files_async,
    unpack,
    unpack_async,
)
from testbed.images import LayoutBuilder, add_wasm_artifact
from testbed.layers import d, f, hl, make_tar, sym, wh

pytestmark = pytest.mark.integration

LAYERS = [
    make_tar(
        [
            d("etc"),
            f("etc/os-release", b"ID=base\n"),
            f("etc/motd", b"hello"),
            d("usr/bin"),
            f("usr/bin/busybox", b"BB" * 5000, mode=0o755),
            sym("bin", "usr/bin"),
        ]
    ),
    make_tar(
        [
            d("etc"),
            wh("etc/.wh.motd"),
            f("etc/os-release", b"ID=top\n"),
            hl("usr/bin/sh", "usr/bin/busybox"),
            f("bin/through", b"via the symlink"),
        ]
    ),
]


@pytest.fixture
def image_ref(layout_builder) -> str:  # type: ignore[no-untyped-def]
    layout_builder.add_image("layers", LAYERS, compression="gzip")
    ref: str = layout_builder.ref("layers")
    return ref


def test_unpack_and_read_file(config: ProxyConfig, image_ref: str, tmp_path: Path) -> None:
    with ImageProxy(config) as proxy, proxy.open_image(image_ref) as img:
        unpack(proxy, img, tmp_path / "root", rootless=True)
        assert read_file(proxy, img, "/etc/os-release") == b"ID=top\n"
        assert read_file(proxy, img, "/bin/through") == b"via the symlink"
        with pytest.raises(FileNotFoundError):
            read_file(proxy, img, "/etc/motd")
        # The proxy is still usable after all that.
        assert len(proxy.get_layer_info(img)) == 2
    root = tmp_path / "root"
    assert (root / "etc/os-release").read_bytes() == b"ID=top\n"
    assert not (root / "etc/motd").exists()
    assert (root / "usr/bin/through").read_bytes() == b"via the symlink"
    assert os.lstat(root / "usr/bin/sh").st_ino == os.lstat(root / "usr/bin/busybox").st_ino


def test_async_twins(config: ProxyConfig, image_ref: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncImageProxy(config) as proxy:
            img = await proxy.open_image(image_ref)
            async with img:
                await unpack_async(proxy, img, tmp_path / "root", rootless=True)
                data = await read_file_async(proxy, img, "usr/bin/sh")
                assert data == b"BB" * 5000

    asyncio.run(main())
    assert (tmp_path / "root/etc/os-release").read_bytes() == b"ID=top\n"


def check_reports(reports: list[TransferProgress], layers: list[tuple[str, int]]) -> None:
    """One transfer per layer blob, in order, counting up to the layer's size."""
    by_digest: dict[str, list[TransferProgress]] = {}
    for report in reports:
        by_digest.setdefault(report.digest, []).append(report)
    assert list(by_digest) == [digest for digest, _ in layers]
    for digest, size in layers:
        mine = by_digest[digest]
        assert all(r.total == size and not r.local for r in mine), mine
        dones = [r.done for r in mine]
        assert dones[0] == 0 and dones == sorted(dones)
        assert dones[-1] == size and [r.finished for r in mine].count(True) == 1


def test_unpack_reports_progress_per_layer(
    config: ProxyConfig, image_ref: str, tmp_path: Path
) -> None:
    reports: list[TransferProgress] = []
    with ImageProxy(config) as proxy, proxy.open_image(image_ref) as img:
        layers = [(str(i.digest), i.size) for i in proxy.get_layer_info(img)]
        unpack(proxy, img, tmp_path / "root", rootless=True, progress=reports.append)
    check_reports(reports, layers)
    assert (tmp_path / "root/etc/os-release").read_bytes() == b"ID=top\n"


def test_unpack_async_reports_progress_on_the_loop(
    config: ProxyConfig, image_ref: str, tmp_path: Path
) -> None:
    reports: list[TransferProgress] = []
    threads: set[int] = set()

    def on_report(report: TransferProgress) -> None:
        threads.add(threading.get_ident())
        reports.append(report)

    async def main() -> list[tuple[str, int]]:
        async with AsyncImageProxy(config) as proxy:
            img = await proxy.open_image(image_ref)
            async with img:
                infos = await proxy.get_layer_info(img)
                await unpack_async(proxy, img, tmp_path / "root", rootless=True, progress=on_report)
                return [(str(i.digest), i.size) for i in infos]

    layers = asyncio.run(main())
    assert threads == {threading.get_ident()}  # asyncio.run's loop runs in this thread
    check_reports(reports, layers)  # every report, the last ones included, came in time


class CountingProxy:
    """A real ImageProxy, with the blobs asked of it counted."""

    def __init__(self, proxy: ImageProxy) -> None:
        self._proxy = proxy
        self.blobs_asked = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._proxy, name)

    def get_blob(self, *args: Any, **kwargs: Any) -> Any:
        self.blobs_asked += 1
        return self._proxy.get_blob(*args, **kwargs)


NOT_A_LAYER = r"media type 'application/wasm' is not a filesystem layer"


def test_artifact_layers_are_refused_before_fetching(
    config: ProxyConfig, layout_builder: LayoutBuilder, tmp_path: Path
) -> None:
    add_wasm_artifact(layout_builder, "wasm")
    with ImageProxy(config) as real, real.open_image(layout_builder.ref("wasm")) as img:
        proxy = CountingProxy(real)
        (layer,) = real.get_layer_info(img)
        calls: list[Callable[[], object]] = [
            lambda: unpack(proxy, img, tmp_path / "root", rootless=True),
            lambda: read_file(proxy, img, "/module.wasm"),
            lambda: read_files(proxy, img, ["/a", "/b"]),
            lambda: list_dir(proxy, img, "/"),
        ]
        for call in calls:
            with pytest.raises(LayerFormatError, match=NOT_A_LAYER) as caught:
                call()
            assert caught.value.layer == str(layer.digest)
        assert proxy.blobs_asked == 0
    assert not (tmp_path / "root").exists()


def test_artifact_layers_are_refused_by_the_async_twins(
    config: ProxyConfig, layout_builder: LayoutBuilder, tmp_path: Path
) -> None:
    add_wasm_artifact(layout_builder, "wasm")

    async def main() -> int:
        async with AsyncImageProxy(config) as proxy:
            img = await proxy.open_image(layout_builder.ref("wasm"))
            async with img:
                calls: list[Callable[[], Awaitable[object]]] = [
                    lambda: unpack_async(proxy, img, tmp_path / "root", rootless=True),
                    lambda: read_file_async(proxy, img, "/module.wasm"),
                    lambda: read_files_async(proxy, img, ["/a"]),
                    lambda: list_dir_async(proxy, img, "/"),
                ]
                for call in calls:
                    with pytest.raises(LayerFormatError, match=NOT_A_LAYER):
                        await call()
                # the proxy is still fine: nothing was left half-read
                return len(await proxy.get_layer_info(img))

    assert asyncio.run(main()) == 1
    assert not (tmp_path / "root").exists()
