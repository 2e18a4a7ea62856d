"""The proxy-facing functions (unpack, read_file and their async twins) over fake proxies.

The fakes have the shape of ImageProxy / AsyncImageProxy (fetch_config, get_layer_info,
get_blob) and serve in-memory blobs, so these tests need no skopeo.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

from containers_image_proxy import BlobVerificationError, ProxyError, TransferProgress
from containers_image_proxy.layers import (
    LayerDigestError,
    LayerFormatError,
    UnsafeLayerError,
    copy_file,
    read_file,
    read_file_async,
    unpack,
    unpack_async,
)
from testbed.layers import Blob, TrackingReader, blob, d, f, sha256, sym, wh


@dataclass(frozen=True)
class Info:
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class RootFS:
    diff_ids: tuple[str, ...]


@dataclass(frozen=True)
class Config:
    rootfs: RootFS


class FakeProxy:
    def __init__(self, layers: list[Blob], diff_ids: Optional[list[str]] = None) -> None:
        self.layers = layers
        self.diff_ids = diff_ids if diff_ids is not None else [b.diff_id for b in layers]
        self.fetched: list[str] = []
        self.readers: list[TrackingReader] = []
        self.by_digest = {b.digest: b for b in layers}

    def fetch_config(self, image: Any) -> Config:
        assert image == "IMG"
        return Config(RootFS(tuple(self.diff_ids)))

    def get_layer_info(self, image: Any) -> list[Info]:
        return [Info(b.digest, len(b.data), b.media_type) for b in self.layers]

    def get_blob(self, image: Any, digest: Any, size: int) -> TrackingReader:
        self.fetched.append(digest)
        b = self.by_digest[digest]
        assert size == len(b.data)
        return TrackingReader(b.data, self.readers)


class AsyncReader:
    def __init__(self, data: bytes, gate: Optional[asyncio.Event] = None) -> None:
        self._data = data
        self._pos = 0
        self._gate = gate
        self.closed = False
        self.closed_quietly = False

    async def read(self, n: int = -1) -> bytes:
        if self._gate is not None:
            await self._gate.wait()
        await asyncio.sleep(0)
        if n < 0:
            n = len(self._data)
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk

    async def close(self) -> None:
        self.closed = True

    async def close_quietly(self) -> None:
        self.closed = self.closed_quietly = True

    async def __aenter__(self) -> AsyncReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class FakeAsyncProxy:
    def __init__(self, layers: list[Blob], stall_on: Optional[str] = None) -> None:
        self.sync = FakeProxy(layers)
        self.readers: list[AsyncReader] = []
        self.stall_on = stall_on
        self.gate: Optional[asyncio.Event] = None
        self.loop_thread = threading.get_ident()

    async def fetch_config(self, image: Any) -> Config:
        return self.sync.fetch_config(image)

    async def get_layer_info(self, image: Any) -> list[Info]:
        return self.sync.get_layer_info(image)

    async def get_blob(self, image: Any, digest: Any, size: int) -> AsyncReader:
        assert threading.get_ident() == self.loop_thread, "coroutines run on the caller's loop"
        self.sync.fetched.append(digest)
        gate = None
        if digest == self.stall_on:
            gate = self.gate = asyncio.Event()
        reader = AsyncReader(self.sync.by_digest[digest].data, gate)
        self.readers.append(reader)
        return reader


LAYERS = [
    blob(
        [d("etc"), f("etc/os-release", b"ID=base\n"), f("etc/motd", b"hi"), sym("bin", "usr/bin")]
    ),
    blob([d("usr/bin"), f("bin/tool", b"tool"), d("etc"), wh("etc/.wh.motd")], "zstd"),
    blob([d("etc"), f("etc/os-release", b"ID=top\n")]),
]


def test_unpack_through_a_proxy(tmp_path: Path) -> None:
    proxy = FakeProxy(LAYERS)
    unpack(proxy, "IMG", tmp_path / "root", rootless=True)
    root = tmp_path / "root"
    assert (root / "etc/os-release").read_bytes() == b"ID=top\n"
    assert not (root / "etc/motd").exists()
    assert (root / "usr/bin/tool").read_bytes() == b"tool"
    assert proxy.fetched == [b.digest for b in LAYERS], "one fetch per layer, in order"
    assert all(r.reached_eof and r.was_closed for r in proxy.readers)


def test_read_file_through_a_proxy_fetches_only_what_it_needs() -> None:
    proxy = FakeProxy(LAYERS)
    assert read_file(proxy, "IMG", "/etc/os-release") == b"ID=top\n"
    assert proxy.fetched == [LAYERS[2].digest]
    proxy = FakeProxy(LAYERS)
    assert read_file(proxy, "IMG", "/bin/tool") == b"tool"
    with pytest.raises(FileNotFoundError):
        read_file(proxy, "IMG", "/etc/motd")


def test_layer_and_diff_id_counts_must_agree(tmp_path: Path) -> None:
    proxy = FakeProxy(LAYERS, diff_ids=[LAYERS[0].diff_id])
    with pytest.raises(LayerFormatError, match="diff_ids"):
        unpack(proxy, "IMG", tmp_path / "root", rootless=True)
    assert proxy.fetched == []


def test_blob_verification_errors_propagate_and_nothing_is_left(tmp_path: Path) -> None:
    class Failing(FakeProxy):
        def get_blob(self, image: Any, digest: Any, size: int) -> TrackingReader:
            reader = super().get_blob(image, digest, size)
            if digest == LAYERS[1].digest:

                def read(size: Optional[int] = -1, /) -> bytes:
                    data = TrackingReader.read(reader, size)
                    if not data:
                        raise BlobVerificationError(digest, "digest mismatch")
                    return data

                reader.read = read  # type: ignore[method-assign]
            return reader

    proxy = Failing(LAYERS)
    with pytest.raises(BlobVerificationError):
        unpack(proxy, "IMG", tmp_path / "root", rootless=True)
    assert os.listdir(tmp_path) == []
    assert all(r.was_closed for r in proxy.readers)


def test_a_layer_that_fails_verification_reports_no_completion(tmp_path: Path) -> None:
    wrong = [LAYERS[0].diff_id, "sha256:" + "0" * 64, LAYERS[2].diff_id]
    reports: list[TransferProgress] = []
    with pytest.raises(LayerDigestError):
        unpack(FakeProxy(LAYERS, wrong), "IMG", tmp_path / "root", rootless=True,
               progress=reports.append)  # fmt: skip
    finished = [r.digest for r in reports if r.finished]
    assert finished == [LAYERS[0].digest]  # the verified layer only
    assert any(r.digest == LAYERS[1].digest for r in reports)  # it was being read
    assert all(r.digest != LAYERS[2].digest for r in reports)  # never opened


def test_unsafe_layer_through_a_proxy(tmp_path: Path) -> None:
    proxy = FakeProxy([blob([f("a")]), blob([f("b")]), blob([])])
    proxy.layers[1] = blob([f("b"), f("c")])
    proxy.layers[2] = blob([wh("b/../.wh..")])
    proxy.by_digest = {b.digest: b for b in proxy.layers}
    proxy.diff_ids = [b.diff_id for b in proxy.layers]
    with pytest.raises(UnsafeLayerError) as info:
        unpack(proxy, "IMG", tmp_path / "root", rootless=True)
    assert info.value.layer == proxy.layers[2].digest
    assert os.listdir(tmp_path) == []


def test_unpack_checks_the_destination_before_fetching(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"")
    proxy = FakeProxy(LAYERS)
    with pytest.raises(Exception, match="not empty"):
        unpack(proxy, "IMG", tmp_path, rootless=True)
    assert proxy.fetched == []


def test_async_twins(tmp_path: Path) -> None:
    async def main() -> None:
        proxy = FakeAsyncProxy(LAYERS)
        await unpack_async(proxy, "IMG", tmp_path / "root", rootless=True)
        assert (tmp_path / "root/etc/os-release").read_bytes() == b"ID=top\n"
        assert all(r.closed for r in proxy.readers)
        proxy = FakeAsyncProxy(LAYERS)
        assert await read_file_async(proxy, "IMG", "etc/os-release") == b"ID=top\n"
        assert proxy.sync.fetched == [LAYERS[2].digest]
        with pytest.raises(FileNotFoundError):
            await read_file_async(proxy, "IMG", "etc/motd")

    asyncio.run(main())


def test_async_errors_propagate(tmp_path: Path) -> None:
    bad = blob([f("a")])
    bad.diff_id = sha256(b"wrong")

    async def main() -> None:
        proxy = FakeAsyncProxy([bad])
        with pytest.raises(BlobVerificationError):
            await unpack_async(proxy, "IMG", tmp_path / "root", rootless=True)

    asyncio.run(main())
    assert os.listdir(tmp_path) == []


def test_cancelling_unpack_async_stops_the_worker_and_cleans_up(tmp_path: Path) -> None:
    threads_before = threading.active_count()

    async def main() -> None:
        proxy = FakeAsyncProxy(LAYERS, stall_on=LAYERS[1].digest)
        task = asyncio.ensure_future(unpack_async(proxy, "IMG", tmp_path / "root", rootless=True))
        for _ in range(500):
            await asyncio.sleep(0.01)
            if proxy.gate is not None:
                break
        assert proxy.gate is not None, "the second layer is being read"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert os.listdir(tmp_path) == [], "no destination, no staged tree"
        for _ in range(100):  # the worker thread closes them as it stops: a deadline
            if all(r.closed for r in proxy.readers):
                break
            await asyncio.sleep(0.05)
        assert all(r.closed for r in proxy.readers)

    asyncio.run(main())
    for _ in range(100):
        if threading.active_count() <= threads_before:
            break
        threading.Event().wait(0.05)
    assert threading.active_count() <= threads_before


def test_max_size_and_copy_file_through_proxies() -> None:
    proxy = FakeProxy(LAYERS)
    assert read_file(proxy, "IMG", "/etc/os-release", max_size=7) == b"ID=top\n"
    with pytest.raises(ProxyError, match="7 bytes, over the limit of 6"):
        read_file(proxy, "IMG", "/etc/os-release", max_size=6)
    chunks: list[bytes] = []
    assert copy_file(FakeProxy(LAYERS), "IMG", "/bin/tool", chunks.append) == 4
    assert chunks == [b"tool"]
    with pytest.raises(ProxyError, match="over the limit of 3"):
        copy_file(FakeProxy(LAYERS), "IMG", "/bin/tool", chunks.append, max_size=3)
    assert chunks == [b"tool"], "nothing written past the limit"

    async def main() -> None:
        proxy = FakeAsyncProxy(LAYERS)
        assert await read_file_async(proxy, "IMG", "etc/os-release", max_size=7) == b"ID=top\n"
        with pytest.raises(ProxyError, match="7 bytes, over the limit of 6"):
            await read_file_async(FakeAsyncProxy(LAYERS), "IMG", "etc/os-release", max_size=6)

    asyncio.run(main())
