"""The ways users read a blob: ``copy_to`` into any object with ``write()``, its
``progress=`` reports, and the plain reads (``read``, ``readinto``, iteration,
``shutil.copyfileobj``) whose bytes the sync reader hashes behind the caller.

Every way is held to the same promises as ``copy_to`` into a file: every byte, in order,
verified (a flipped byte is caught), nothing leaked (descriptors, children, threads).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest

from conftest import make_config
from containers_image_proxy import (
    AsyncImageProxy,
    BlobVerificationError,
    ImageProxy,
    ProxyConfig,
    TransferProgress,
)
from containers_image_proxy._async import _backend as async_backend
from containers_image_proxy._progress import REPORT_INTERVAL
from containers_image_proxy._stream import hashing
from containers_image_proxy._stream.state import BlobStream
from testbed.images import ImageInfo, LayoutBuilder, corrupt_blob, random_layer
from testbed.releases import SkopeoRelease

pytestmark = pytest.mark.integration

SIZE = 12 * 1024 * 1024 + 12345  # several buffers of every path and a partial last one


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[LayoutBuilder, ImageInfo]:
    builder = LayoutBuilder(tmp_path_factory.mktemp("reader-paths") / "oci")
    return builder, builder.add_image("big", [random_layer(21, SIZE)], compression=None)


@pytest.fixture
def no_thread_leaks() -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    left = [t.name for t in threading.enumerate() if t.ident not in before]
    assert [n for n in left if n.startswith("cip-hash-behind") or n == "cip-write"] == []


def streams(release: SkopeoRelease) -> List[str]:
    """Every kind of stream on this release: spliced (verified by skopeo), and hashed here."""
    kinds = ["get_blob", "get_blob+retries"]
    if release.has_protocol("0.2.8"):
        kinds.append("get_raw_blob")
    return kinds


def config_for(release: SkopeoRelease, how: str) -> ProxyConfig:
    return make_config(release, retries=1 if how == "get_blob+retries" else 0)


def open_sync(proxy: ImageProxy, img: Any, how: str, digest: str, size: int) -> Any:
    if how == "get_raw_blob":
        return proxy.get_raw_blob(img, digest, size, verify=True)
    return proxy.get_blob(img, digest, size)


async def open_async(proxy: AsyncImageProxy, img: Any, how: str, digest: str, size: int) -> Any:
    if how == "get_raw_blob":
        return await proxy.get_raw_blob(img, digest, size, verify=True)
    return await proxy.get_blob(img, digest, size)


class HashingSink:
    """A destination with only ``write`` (returning None), as a hashing wrapper is."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.hash.update(data)
        self.size += len(data)


class ShortWrites:
    """A raw-file-like destination that takes at most 1000 bytes per call."""

    def __init__(self) -> None:
        self.out = io.BytesIO()

    def write(self, data: bytes) -> int:
        return self.out.write(data[:1000])


class AsyncSink:
    """A destination whose ``write`` is a coroutine (an async file)."""

    def __init__(self) -> None:
        self.out = io.BytesIO()

    async def write(self, data: bytes) -> int:
        await asyncio.sleep(0)
        return self.out.write(data)


def copy_sync(
    config: ProxyConfig, ref: str, how: str, layer: Any, target: Any, reports: List[Any]
) -> int:
    """Read 10 bytes, write them, then copy_to the rest into ``target``."""
    with ImageProxy(config) as proxy, proxy.open_image(ref) as img:
        with open_sync(proxy, img, how, layer.digest, layer.size) as blob:
            head = blob.read(10)
            if isinstance(target, Path):
                with open(target, "wb") as f:
                    f.write(head)  # buffered: copy_to flushes it first
                    return int(blob.copy_to(f, progress=reports.append))
            (target.out if hasattr(target, "out") else target).write(head)
            return int(blob.copy_to(target, progress=reports.append))


async def copy_async(
    config: ProxyConfig, ref: str, how: str, layer: Any, target: Any, reports: List[Any]
) -> int:
    """:func:`copy_sync` on the asyncio front end."""
    async with AsyncImageProxy(config) as proxy, await proxy.open_image(ref) as img:
        blob = await open_async(proxy, img, how, layer.digest, layer.size)
        async with blob:
            head = await blob.read(10)
            if isinstance(target, Path):
                with open(target, "wb") as f:
                    f.write(head)
                    return int(await blob.copy_to(f, progress=reports.append))
            (target.out if hasattr(target, "out") else target).write(head)
            return int(await blob.copy_to(target, progress=reports.append))


def check_reports(reports: List[TransferProgress], digest: str, start: int, size: int) -> None:
    assert reports, "no progress reported"
    assert all(r.digest == digest and r.total == size and not r.local for r in reports)
    done = [r.done for r in reports]
    assert done[0] == start and done == sorted(done)
    assert done[-1] == size and reports[-1].finished
    assert sum(r.finished for r in reports) == 1, "the last report comes once"


@pytest.mark.parametrize("front", ["sync", "async"])
def test_copy_to_any_writer_with_progress(
    skopeo_release: SkopeoRelease,
    big: tuple[LayoutBuilder, ImageInfo],
    tmp_path: Path,
    front: str,
    no_leaks: None,
    no_thread_leaks: None,
) -> None:
    """BytesIO, a write-only hashing wrapper, a writer taking short counts, and a file: the
    same bytes, on every kind of stream; progress reports each copy up to done == total."""
    builder, image = big
    layer = image.layers[0]
    expected = hashlib.sha256(layer.blob).hexdigest()
    for how in streams(skopeo_release):
        config = config_for(skopeo_release, how)
        targets: List[Any] = [io.BytesIO(), HashingSink(), ShortWrites(), tmp_path / how]
        if front == "async":
            targets.append(AsyncSink())
        for target in targets:
            reports: List[TransferProgress] = []
            began = time.monotonic()
            ref = builder.ref("big")
            if front == "sync":
                copied = copy_sync(config, ref, how, layer, target, reports)
            else:
                copied = asyncio.run(copy_async(config, ref, how, layer, target, reports))
            elapsed = time.monotonic() - began
            what = f"{how} into {type(target).__name__}"
            assert copied == layer.size - 10, what
            if isinstance(target, HashingSink):
                assert target.size == layer.size and target.hash.hexdigest() == expected, what
            elif isinstance(target, Path):
                assert target.read_bytes() == layer.blob, what
            else:
                out = target.out if hasattr(target, "out") else target
                assert out.getvalue() == layer.blob, what
            check_reports(reports, layer.digest, 10, layer.size)
            # bounded: one per interval at most, plus the first and the last
            assert len(reports) <= 3 + elapsed / REPORT_INTERVAL, what


@pytest.mark.parametrize("front", ["sync", "async"])
def test_copy_to_writer_detects_corruption(
    config: ProxyConfig,
    skopeo_release: SkopeoRelease,
    layout_builder: LayoutBuilder,
    front: str,
    no_leaks: None,
    no_thread_leaks: None,
) -> None:
    """A flipped byte is caught on the plain-write path too; no last progress report."""
    if not skopeo_release.has_protocol("0.2.8"):
        pytest.skip("needs GetRawBlob (protocol 0.2.8) for a stream that only we verify")
    image = layout_builder.add_image("t", [random_layer(22, SIZE)], compression=None)
    layer = image.layers[0]
    corrupt_blob(layout_builder, layer.digest)
    reports: List[TransferProgress] = []
    if front == "sync":
        with ImageProxy(config) as proxy, proxy.open_image(layout_builder.ref("t")) as img:
            with pytest.raises(BlobVerificationError, match="digest"):
                with proxy.get_raw_blob(img, layer.digest, layer.size, verify=True) as blob:
                    blob.copy_to(HashingSink(), progress=reports.append)
            assert proxy.fetch_manifest(img)[0]  # the proxy still serves
    else:

        async def main() -> None:
            async with AsyncImageProxy(config) as proxy:
                async with await proxy.open_image(layout_builder.ref("t")) as img:
                    with pytest.raises(BlobVerificationError, match="digest"):
                        blob = await proxy.get_raw_blob(img, layer.digest, layer.size, verify=True)
                        async with blob:
                            await blob.copy_to(io.BytesIO(), progress=reports.append)
                    assert (await proxy.fetch_manifest(img))[0]

        asyncio.run(main())
    assert reports and not any(r.finished for r in reports)


def read_all_ways(blob: Any, way: str) -> bytes:
    """The blob's bytes, read as a user's program would."""
    if way == "copyfileobj":
        out = io.BytesIO()
        shutil.copyfileobj(blob, out, 1024 * 1024)
        return out.getvalue()
    if way == "readinto":
        parts = []
        buf = bytearray(1024 * 1024)
        while n := blob.readinto(buf):
            parts.append(bytes(buf[:n]))
            buf[:n] = b"\0" * n  # the caller reuses its buffer at once
        return b"".join(parts)
    if way == "iterate":
        return b"".join(blob)
    if way == "read1":
        parts = []
        while part := blob.read1(300 * 1024):
            parts.append(part)
        return b"".join(parts)
    return bytes(blob.read())


WAYS = ["copyfileobj", "readinto", "iterate", "read1", "read"]


@pytest.mark.parametrize("slow_hash", [False, True])
def test_plain_reads_are_verified_behind_the_caller(
    skopeo_release: SkopeoRelease,
    big: tuple[LayoutBuilder, ImageInfo],
    monkeypatch: pytest.MonkeyPatch,
    slow_hash: bool,
    no_leaks: None,
    no_thread_leaks: None,
) -> None:
    """Every plain way of reading gives the blob's bytes; with a hash slower than the
    reads, the reader is far ahead of the hasher at the end, which must still be judged
    on every byte (the digest would mismatch otherwise)."""
    builder, image = big
    layer = image.layers[0]
    if slow_hash:
        real_hash = BlobStream.hash

        def slowly(self: BlobStream, data: Any) -> None:
            time.sleep(0.005)
            real_hash(self, data)

        monkeypatch.setattr(BlobStream, "hash", slowly)
    hows = [h for h in streams(skopeo_release) if h != "get_blob"]  # hashed here
    for how in hows:
        config = config_for(skopeo_release, how)
        with ImageProxy(config) as proxy, proxy.open_image(builder.ref("big")) as img:
            for way in WAYS:
                with open_sync(proxy, img, how, layer.digest, layer.size) as blob:
                    assert blob._stream.hashing
                    assert read_all_ways(blob, way) == layer.blob, (how, way)
                    assert blob.bytes_read == layer.size


@pytest.mark.parametrize("way", WAYS)
def test_plain_reads_detect_corruption(
    config: ProxyConfig,
    skopeo_release: SkopeoRelease,
    layout_builder: LayoutBuilder,
    way: str,
    no_leaks: None,
    no_thread_leaks: None,
) -> None:
    """A flipped byte in the middle is caught by each plain way of reading."""
    if not skopeo_release.has_protocol("0.2.8"):
        pytest.skip("needs GetRawBlob (protocol 0.2.8) for a stream that only we verify")
    image = layout_builder.add_image("t", [random_layer(23, SIZE)], compression=None)
    layer = image.layers[0]
    corrupt_blob(layout_builder, layer.digest)
    with ImageProxy(config) as proxy, proxy.open_image(layout_builder.ref("t")) as img:
        with pytest.raises(BlobVerificationError, match="digest"):
            with proxy.get_raw_blob(img, layer.digest, layer.size, verify=True) as blob:
                read_all_ways(blob, way)
        assert proxy.fetch_manifest(img)[0]


def test_abandoned_read_stops_the_hasher(
    skopeo_release: SkopeoRelease,
    big: tuple[LayoutBuilder, ImageInfo],
    monkeypatch: pytest.MonkeyPatch,
    no_leaks: None,
    no_thread_leaks: None,
) -> None:
    """Closing a stream while bytes still wait to be hashed stops the helper thread and
    drops them; the proxy serves the next stream, verified."""
    builder, image = big
    layer = image.layers[0]
    gate = threading.Event()
    real_hash = BlobStream.hash

    def held(self: BlobStream, data: Any) -> None:
        gate.wait(30)  # hold the hasher so that bytes wait behind it
        real_hash(self, data)

    config = make_config(skopeo_release, retries=1)
    with ImageProxy(config) as proxy, proxy.open_image(builder.ref("big")) as img:
        monkeypatch.setattr(BlobStream, "hash", held)
        with proxy.get_blob(img, layer.digest, layer.size) as blob:
            for _ in range(3):
                assert len(blob.read(1024 * 1024)) == 1024 * 1024
            behind: Optional[hashing.HashBehind] = blob._hashing
            assert behind is not None and behind._behind > 0
            gate.set()
            blob.close_quietly()
        monkeypatch.setattr(BlobStream, "hash", real_hash)
        with proxy.get_blob(img, layer.digest, layer.size) as blob:
            assert blob.read() == layer.blob


def test_async_splice_wait_on_a_regular_file(tmp_path: Path) -> None:
    """A splice into a file can meet an empty pipe that refills before the reader looks
    again; the asyncio reader then waits for its destination, which epoll refuses for a
    regular file (EPERM). That wait returns at once: a file is always writable."""
    with open(tmp_path / "out", "wb") as f:
        asyncio.run(asyncio.wait_for(async_backend.wait_writable(f.fileno()), 10))
