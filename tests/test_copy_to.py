"""``copy_to`` of streams the client hashes: the read / hash / write pipeline.

A stream is hashed here when it is a verified GetRawBlob (0.2.8) or, on every release, a
GetBlob with ``retries`` set (its prefix hash makes resumption exact). Such a stream of
4 MiB or more is copied by the reader's thread (or loop) while two helper threads hash and
write it; these tests hold it to the same promises as the plain reads: every byte, in
order, verified, errors typed, nothing leaked (descriptors, children, threads).
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

from conftest import make_config
from containers_image_proxy import (
    AsyncImageProxy,
    BlobVerificationError,
    ImageProxy,
    ProxyConfig,
)
from containers_image_proxy._async import _backend as async_backend
from containers_image_proxy._stream.state import BlobStream
from testbed.images import ImageInfo, LayoutBuilder, corrupt_blob, random_layer
from testbed.releases import SkopeoRelease

pytestmark = pytest.mark.integration

SIZE = 12 * 1024 * 1024 + 12345  # several pipeline buffers and a partial last one


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[LayoutBuilder, ImageInfo]:
    builder = LayoutBuilder(tmp_path_factory.mktemp("copy-to") / "oci")
    return builder, builder.add_image("big", [random_layer(7, SIZE)], compression=None)


@pytest.fixture
def no_thread_leaks() -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    left = [t for t in threading.enumerate() if t.ident not in before]
    # the asyncio reader's hashing pool is shared and lives on: only ours count
    assert [t.name for t in left if t.name in ("cip-hash", "cip-write")] == []


def hashed_streams(release: SkopeoRelease) -> List[str]:
    """The ways to get a stream the client hashes, on this release."""
    return ["get_blob+retries", *(["get_raw_blob"] if release.has_protocol("0.2.8") else [])]


def open_stream(proxy: ImageProxy, img: Any, how: str, digest: str, size: int) -> Any:
    if how == "get_raw_blob":
        return proxy.get_raw_blob(img, digest, size, verify=True)
    return proxy.get_blob(img, digest, size)


def copy_sync(config: ProxyConfig, ref: str, how: str, layer: Any, path: Path) -> None:
    with ImageProxy(config) as proxy, proxy.open_image(ref) as img:
        with open_stream(proxy, img, how, layer.digest, layer.size) as blob:
            assert blob._stream.hashing, how
            head = blob.read(10)
            with open(path, "wb") as out:
                out.write(head)  # buffered: copy_to flushes it first
                assert blob.copy_to(out) == layer.size - 10
            assert blob.bytes_read == layer.size


async def copy_async(config: ProxyConfig, ref: str, how: str, layer: Any, path: Path) -> None:
    async with AsyncImageProxy(config) as proxy, await proxy.open_image(ref) as img:
        if how == "get_raw_blob":
            blob = await proxy.get_raw_blob(img, layer.digest, layer.size, verify=True)
        else:
            blob = await proxy.get_blob(img, layer.digest, layer.size)
        async with blob:
            head = await blob.read(10)
            with open(path, "wb") as out:
                out.write(head)
                assert await blob.copy_to(out) == layer.size - 10
            assert blob.bytes_read == layer.size


@pytest.mark.parametrize("front", ["sync", "async"])
def test_copy_to_hashed_streams(
    skopeo_release: SkopeoRelease,
    big: tuple[LayoutBuilder, ImageInfo],
    tmp_path: Path,
    front: str,
    no_leaks: None,
    no_thread_leaks: None,
) -> None:
    builder, image = big
    layer = image.layers[0]
    config = make_config(skopeo_release, retries=1)
    for how in hashed_streams(skopeo_release):
        path = tmp_path / how
        if front == "sync":
            copy_sync(config, builder.ref("big"), how, layer, path)
        else:
            asyncio.run(copy_async(config, builder.ref("big"), how, layer, path))
        assert path.read_bytes() == layer.blob, how


@pytest.mark.parametrize("front", ["sync", "async"])
def test_copy_to_detects_corruption(
    config: ProxyConfig,
    skopeo_release: SkopeoRelease,
    layout_builder: LayoutBuilder,
    tmp_path: Path,
    front: str,
    no_leaks: None,
    no_thread_leaks: None,
) -> None:
    """A flipped byte in a 12 MiB blob is caught after the pipeline has hashed it."""
    if not skopeo_release.has_protocol("0.2.8"):
        pytest.skip("needs GetRawBlob (protocol 0.2.8) for a stream that only we verify")
    image = layout_builder.add_image("t", [random_layer(8, SIZE)], compression=None)
    layer = image.layers[0]
    corrupt_blob(layout_builder, layer.digest)
    out_path = tmp_path / "out"
    if front == "sync":
        with ImageProxy(config) as proxy, proxy.open_image(layout_builder.ref("t")) as img:
            with pytest.raises(BlobVerificationError, match="digest"):
                with proxy.get_raw_blob(img, layer.digest, layer.size, verify=True) as blob:
                    with open(out_path, "wb") as out:
                        blob.copy_to(out)
            assert proxy.fetch_manifest(img)[0]  # the proxy still serves
        return

    async def main() -> None:
        async with AsyncImageProxy(config) as proxy:
            async with await proxy.open_image(layout_builder.ref("t")) as img:
                with pytest.raises(BlobVerificationError, match="digest"):
                    blob = await proxy.get_raw_blob(img, layer.digest, layer.size, verify=True)
                    async with blob:
                        with open(out_path, "wb") as out:
                            await blob.copy_to(out)
                assert (await proxy.fetch_manifest(img))[0]

    asyncio.run(main())


@pytest.mark.parametrize("front", ["sync", "async"])
def test_copy_to_write_error(
    skopeo_release: SkopeoRelease,
    big: tuple[LayoutBuilder, ImageInfo],
    front: str,
    no_leaks: None,
    no_thread_leaks: None,
) -> None:
    """A destination that fails (a full disk) raises its OSError from copy_to; the stream
    is abandoned cleanly and the proxy goes on serving."""
    builder, image = big
    layer = image.layers[0]
    config = make_config(skopeo_release, retries=1)
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        if front == "sync":
            with ImageProxy(config) as proxy, proxy.open_image(builder.ref("big")) as img:
                with pytest.raises(OSError) as caught:
                    with proxy.get_blob(img, layer.digest, layer.size) as blob:
                        blob.copy_to(full)
                assert caught.value.errno == errno.ENOSPC
                with proxy.get_blob(img, layer.digest, layer.size) as blob:
                    assert len(blob.read()) == layer.size
        else:

            async def main() -> None:
                async with AsyncImageProxy(config) as proxy:
                    async with await proxy.open_image(builder.ref("big")) as img:
                        with pytest.raises(OSError) as caught:
                            async with await proxy.get_blob(img, layer.digest, layer.size) as b:
                                await b.copy_to(full)
                        assert caught.value.errno == errno.ENOSPC
                        async with await proxy.get_blob(img, layer.digest, layer.size) as b:
                            assert len(await b.read()) == layer.size

            asyncio.run(main())
    finally:
        os.close(full)


def test_async_cancelled_reads_lose_nothing(
    skopeo_release: SkopeoRelease,
    big: tuple[LayoutBuilder, ImageInfo],
    monkeypatch: pytest.MonkeyPatch,
    no_leaks: None,
) -> None:
    """Large chunks are hashed on a worker thread; a read cancelled while its chunk is
    being hashed keeps the chunk for the next read (the bytes have left the pipe)."""
    builder, image = big
    layer = image.layers[0]
    config = make_config(skopeo_release, retries=1)  # hashed here on every release
    hashed_while_cancelled = []
    real_hash_bytes: Callable[..., Any] = async_backend.hash_bytes
    cut = {"next": False}  # whether the read now starting is to be cancelled while hashing
    hashing: List[asyncio.Event] = []

    async def held_hash(stream: Any, data: memoryview) -> None:
        if not cut["next"]:
            await real_hash_bytes(stream, data)
            return
        hashing[0].set()
        try:
            await asyncio.Event().wait()  # held until the test cancels the read
        except asyncio.CancelledError:
            await real_hash_bytes(stream, data)
            hashed_while_cancelled.append(len(data))
            raise

    monkeypatch.setattr(async_backend, "hash_bytes", held_hash)

    async def main() -> bytes:
        hashing.append(asyncio.Event())
        parts = []
        async with AsyncImageProxy(config) as proxy:
            async with await proxy.open_image(builder.ref("big")) as img:
                async with await proxy.get_blob(img, layer.digest, layer.size) as blob:
                    buf = bytearray(1024 * 1024)
                    assert await blob.readinto(bytearray(0)) == 0  # not the end
                    for i in range(10_000):
                        # every other read is cancelled while its chunk is hashed
                        cut["next"] = i % 2 == 1
                        hashing[0].clear()
                        read = asyncio.ensure_future(blob.readinto(buf))
                        held = asyncio.ensure_future(hashing[0].wait())
                        await asyncio.wait({read, held}, return_when=asyncio.FIRST_COMPLETED)
                        held.cancel()
                        if not read.done():
                            read.cancel()
                            with pytest.raises(asyncio.CancelledError):
                                await read
                            # a cancelled read handed nothing out, whatever left the pipe
                            assert blob.bytes_read == sum(map(len, parts))
                            continue
                        got = read.result()
                        if not got:
                            break
                        parts.append(bytes(buf[:got]))
        return b"".join(parts)

    assert asyncio.run(main()) == layer.blob
    assert hashed_while_cancelled, "no read was cancelled while hashing"


@pytest.mark.parametrize("front", ["sync", "async"])
def test_copy_to_judges_the_end_after_every_byte_is_hashed(
    skopeo_release: SkopeoRelease,
    big: tuple[LayoutBuilder, ImageInfo],
    tmp_path: Path,
    front: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a slow hash the reader reaches the end of the pipe long before the hasher:
    the digest must still be checked over every byte (it would mismatch otherwise)."""
    builder, image = big
    layer = image.layers[0]
    real_hash = BlobStream.hash

    def slow_hash(self: BlobStream, data: Any) -> None:
        time.sleep(0.02)
        real_hash(self, data)

    monkeypatch.setattr(BlobStream, "hash", slow_hash)
    config = make_config(skopeo_release, retries=1)
    path = tmp_path / "layer"
    if front == "sync":
        copy_sync(config, builder.ref("big"), "get_blob+retries", layer, path)
    else:
        asyncio.run(copy_async(config, builder.ref("big"), "get_blob+retries", layer, path))
    assert path.read_bytes() == layer.blob
