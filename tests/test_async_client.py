"""The asyncio client against real skopeo releases."""

from __future__ import annotations

import asyncio
import random
from typing import Any, List

import pytest

from containers_image_proxy import (
    AsyncBlobReader,
    AsyncImageProxy,
    BlobVerificationError,
    ConfigurationError,
    ProxyClosedError,
    ProxyConfig,
    ProxyTooOldError,
    RequestError,
)
from testbed.images import Layouts
from testbed.releases import SkopeoRelease

pytestmark = pytest.mark.integration


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_every_method(config: ProxyConfig, layouts: Layouts, no_leaks: None) -> None:
    async def main() -> None:
        expected = layouts.small
        async with AsyncImageProxy(config) as proxy:
            assert proxy.protocol_version
            img = await proxy.open_image(layouts.ref("small"))
            async with img:
                digest, raw = await proxy.fetch_manifest_raw_oci(img)
                assert (digest, raw) == (expected.manifest_digest, expected.manifest)
                _, manifest = await proxy.fetch_manifest(img)
                cfg = await proxy.fetch_config(img)
                assert list(cfg.rootfs.diff_ids) == expected.diff_ids
                assert await proxy.fetch_config_raw(img)
                infos = await proxy.get_layer_info(img)
                assert [i.digest for i in infos] == [la.digest for la in expected.layers]
                for layer, desc in zip(expected.layers, manifest.layers):
                    async with await proxy.get_descriptor(img, desc) as blob:
                        assert isinstance(blob, AsyncBlobReader)
                        chunks = [chunk async for chunk in blob]
                    assert b"".join(chunks) == layer.blob
                    blob = await proxy.get_blob(img, layer.digest, layer.size)
                    assert await blob.read() == layer.blob
                    await blob.close()
            assert await proxy.open_image_optional(layouts.ref("nope")) is None

    run(main())


def test_start_classmethod_and_big_payloads(config: ProxyConfig, layouts: Layouts) -> None:
    async def main() -> None:
        proxy = await AsyncImageProxy.start(config)
        try:
            img = await proxy.open_image(layouts.ref("bigconfig"))
            assert len(await proxy.fetch_config_raw(img)) > 1024 * 1024
            await proxy.close_image(img)
            img = await proxy.open_image(layouts.ref("manylayers"))
            assert len(await proxy.get_layer_info(img)) == 300
            await proxy.close_image(img)
        finally:
            await proxy.close()
        with pytest.raises(ProxyClosedError):
            await proxy.open_image(layouts.ref("small"))

    run(main())


def test_concurrent_tasks_one_proxy(config: ProxyConfig, layouts: Layouts, no_leaks: None) -> None:
    layers = layouts.small.layers

    async def main() -> None:
        async with AsyncImageProxy(config) as proxy:
            img = await proxy.open_image(layouts.ref("small"))

            async def fetch(n: int) -> bytes:
                layer = layers[n % len(layers)]
                if n % 7 == 0:
                    await proxy.fetch_config(img)
                blob = await proxy.get_blob(img, layer.digest, layer.size)
                async with blob:
                    data = await blob.read()
                assert data == layer.blob
                return data

            results = await asyncio.gather(*(fetch(n) for n in range(50)))
            assert len(results) == 50
            await proxy.close_image(img)

    run(main())


def test_cancellation_keeps_the_reply_stream_in_step(
    config: ProxyConfig, layouts: Layouts, no_leaks: None
) -> None:
    layers = layouts.small.layers
    rng = random.Random(7)

    async def main() -> None:
        async with AsyncImageProxy(config) as proxy:
            img = await proxy.open_image(layouts.ref("small"))

            async def fetch(n: int) -> None:
                layer = layers[n % len(layers)]
                kind = n % 4
                if kind == 0:
                    await proxy.fetch_manifest(img)
                    return
                if kind == 1:
                    opened = await proxy.open_image(layouts.ref("small"))
                    await proxy.close_image(opened)
                    return
                async with await proxy.get_blob(img, layer.digest, layer.size) as blob:
                    if kind == 2:
                        await blob.read(100)  # early close
                        return
                    assert await blob.read() == layer.blob

            tasks = [asyncio.ensure_future(fetch(n)) for n in range(120)]
            await asyncio.sleep(0)
            for t in tasks:
                if rng.random() < 0.4:
                    t.cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            unexpected = [
                d for d in done if d is not None and not isinstance(d, asyncio.CancelledError)
            ]
            assert unexpected == []
            # every reply still reaches the right caller afterwards
            for layer in layers:
                async with await proxy.get_blob(img, layer.digest, layer.size) as blob:
                    assert await blob.read() == layer.blob
            assert (await proxy.fetch_manifest(img))[0] == layouts.small.manifest_digest
            await proxy.close_image(img)

    run(main())


def test_async_errors(
    config: ProxyConfig, skopeo_release: SkopeoRelease, layouts: Layouts, no_leaks: None
) -> None:
    layer = layouts.small.layers[0]

    async def main() -> None:
        async with AsyncImageProxy(config) as proxy:
            with pytest.raises(ConfigurationError):
                await proxy.open_image("bogus:x")
            with pytest.raises(RequestError):
                await proxy.open_image(layouts.ref("nope"))
            async with await proxy.open_image(layouts.ref("small")) as img:
                with pytest.raises(BlobVerificationError):
                    await proxy.get_blob(img, layer.digest, layer.size + 3)
                with pytest.raises(RequestError):
                    await proxy.get_blob(img, "sha256:" + "1" * 64, 3)
                if not skopeo_release.has_protocol("0.2.8"):
                    with pytest.raises(ProxyTooOldError):
                        await proxy.get_raw_blob(img, layer.digest)
                else:
                    async with await proxy.get_raw_blob(img, layer.digest) as blob:
                        assert await blob.read() == layer.blob
                chunks: List[bytes] = []
                async with await proxy.get_blob(img, layer.digest, layer.size) as blob:
                    async for chunk in blob:
                        chunks.append(chunk)
                assert b"".join(chunks) == layer.blob

    run(main())


def test_async_copy_to(config: ProxyConfig, layouts: Layouts, tmp_path: Any) -> None:
    layer = layouts.small.layers[1]

    async def main() -> None:
        async with AsyncImageProxy(config) as proxy:
            async with await proxy.open_image(layouts.ref("small")) as img:
                async with await proxy.get_blob(img, layer.digest, layer.size) as blob:
                    with open(tmp_path / "out", "wb") as out:
                        assert await blob.copy_to(out) == layer.size

    run(main())
    assert (tmp_path / "out").read_bytes() == layer.blob
