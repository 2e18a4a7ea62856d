"""Pools of proxies: the balancer alone, then ProxyPool and AsyncProxyPool on real skopeo."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from typing import Any, List

import pytest

from conftest import child_pids
from containers_image_proxy import (
    AsyncImageProxy,
    AsyncProxyPool,
    ConfigurationError,
    ImageProxy,
    OpenedImage,
    PoolShutdownError,
    ProxyClosedError,
    ProxyConfig,
    ProxyError,
    ProxyExitedError,
    ProxyPool,
    SkopeoNotFoundError,
)
from containers_image_proxy._pooling import PoolBalancer
from containers_image_proxy._transport import peer_closed
from testbed.images import Layouts

# Tags of the standard layout whose manifests differ, with what their manifests must be.
TAGS = ("small", "small-uncompressed", "bigconfig", "manylayers")


def expected_digests(layouts: Layouts) -> dict[str, str]:
    return {
        "small": layouts.small.manifest_digest,
        "small-uncompressed": layouts.small_uncompressed.manifest_digest,
        "bigconfig": layouts.big_config.manifest_digest,
        "manylayers": layouts.many_layers.manifest_digest,
    }


def kill_skopeo(proxy: Any) -> None:
    """SIGKILL a member's skopeo from outside, as the OOM killer would, and let it die."""
    os.kill(proxy._process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    # Not reaped here: the pool or the proxy must notice and reap it themselves. Its end of
    # the socket closes once every thread of it is gone (its main thread is a zombie before).
    while not peer_closed(proxy._process.sock):
        assert time.monotonic() < deadline, "skopeo did not die"
        time.sleep(0.01)


class FakeImage(OpenedImage):
    """An image for the balancer alone: only ``closed`` matters to it."""

    def __init__(self) -> None:
        super().__init__(None, 1, None)  # type: ignore[arg-type]


# --- the balancer, without any process ---------------------------------------------------


def test_balancer_spreads_round_robin_when_idle() -> None:
    b = PoolBalancer(3)
    chosen = []
    for _ in range(6):
        slot = b.acquire()
        b.opened(slot, None)  # an open that failed, or found nothing
        chosen.append(slot)
    assert chosen == [0, 1, 2, 0, 1, 2]
    assert b.loads() == [0, 0, 0]


def test_balancer_picks_the_least_busy_member() -> None:
    b = PoolBalancer(3)
    images = []
    for _ in range(7):
        slot = b.acquire()
        img = FakeImage()
        b.opened(slot, img)
        images.append((slot, img))
    assert b.loads() == [3, 2, 2]
    # closing images on their own (not through the pool) is noticed lazily
    for slot, img in images:
        if slot == 0:
            img._closed = True
    assert b.loads() == [0, 2, 2]
    assert b.acquire() == 0
    # an open in flight counts as load until it ends
    assert b.loads() == [1, 2, 2]
    assert b.acquire() == 0
    assert b.loads() == [2, 2, 2]


def test_balancer_forgets_the_images_of_a_replaced_member() -> None:
    b = PoolBalancer(2)
    for _ in range(4):
        b.opened(b.acquire(), FakeImage())
    assert b.loads() == [2, 2]
    b.replaced(1)
    assert b.loads() == [2, 0]


@pytest.mark.parametrize("size", [0, -1, True, 2.5, "4"])
def test_size_must_be_a_positive_integer(size: Any) -> None:
    with pytest.raises(ConfigurationError):
        PoolBalancer(size)
    with pytest.raises(ConfigurationError):
        ProxyPool(ProxyConfig(skopeo="/nonexistent/skopeo"), size=size)


def test_a_member_that_cannot_start_fails_the_pool_cleanly(no_leaks: None) -> None:
    with pytest.raises(SkopeoNotFoundError):
        ProxyPool(ProxyConfig(skopeo="/nonexistent/skopeo"), size=3)

    async def main() -> None:
        with pytest.raises(SkopeoNotFoundError):
            await AsyncProxyPool.start(ProxyConfig(skopeo="/nonexistent/skopeo"), size=3)

    asyncio.run(main())


# --- ProxyPool against real skopeo -------------------------------------------------------

integration = pytest.mark.integration


@integration
def test_each_image_stays_with_the_member_that_opened_it(
    config: ProxyConfig, layouts: Layouts, no_leaks: None
) -> None:
    want = expected_digests(layouts)
    with ProxyPool(config, size=len(TAGS)) as pool:
        assert len(pool.members) == pool.size == len(TAGS)
        assert len({m._process.pid for m in pool.members}) == len(TAGS)
        images = [pool.open_image(layouts.ref(tag)) for tag in TAGS]
        # one image per member, and every member numbers its images from 1: a call routed
        # to the wrong member would silently read another image
        assert [img._owner for img in images] == list(pool.members)
        assert {img.image_id for img in images} == {1}
        for tag, img in zip(TAGS, images):
            digest, manifest = pool.fetch_manifest(img)
            assert digest == want[tag]
            assert pool.fetch_manifest_raw_oci(img)[0] == want[tag]
            assert pool.fetch_config_raw(img)
            assert len(pool.fetch_config(img).rootfs.diff_ids) == len(manifest.layers)
            assert [i.digest for i in pool.get_layer_info(img)] == [
                d.digest for d in manifest.layers
            ]
            for other in pool.members:
                if other is not img._owner:
                    with pytest.raises(ConfigurationError, match="another proxy"):
                        other.fetch_manifest(img)
        small = images[0]
        for layer in layouts.small.layers:
            with pool.get_blob(small, layer.digest, layer.size) as blob:
                assert blob.read() == layer.blob
        _, manifest = pool.fetch_manifest(small)
        with pool.get_descriptor(small, manifest.layers[0]) as blob:
            assert blob.read() == layouts.small.layers[0].blob
        if pool.supports("GetRawBlob"):
            layer = layouts.small.layers[1]
            with pool.get_raw_blob(small, layer.digest, verify=True) as blob:
                assert blob.read() == layer.blob
        assert pool.loads() == [1, 1, 1, 1]
        for img in images:
            pool.close_image(img)
            pool.close_image(img)  # twice is harmless
        assert pool.loads() == [0, 0, 0, 0]
        assert pool.protocol_version == pool.members[0].protocol_version


@integration
def test_foreign_images_are_refused(config: ProxyConfig, layouts: Layouts) -> None:
    with ImageProxy(config) as proxy, ProxyPool(config, size=2) as pool:
        with proxy.open_image(layouts.ref("small")) as img:
            with pytest.raises(ConfigurationError, match="not opened by this pool"):
                pool.fetch_manifest(img)
            with pytest.raises(ConfigurationError, match="not opened by this pool"):
                pool.close_image(img)
        with pytest.raises(ConfigurationError, match="expected an OpenedImage"):
            pool.fetch_config("small")  # type: ignore[arg-type]


@integration
def test_open_image_optional(config: ProxyConfig, layouts: Layouts) -> None:
    with ProxyPool(config, size=2) as pool:
        assert pool.open_image_optional(layouts.ref("no-such-tag")) is None
        img = pool.open_image_optional(layouts.ref("small"))
        assert img is not None
        with img:
            assert pool.fetch_manifest(img)[0] == layouts.small.manifest_digest
            assert sorted(pool.loads()) == [0, 1]
        assert pool.loads() == [0, 0]


@integration
def test_threads_share_a_pool(config: ProxyConfig, layouts: Layouts, no_leaks: None) -> None:
    want = expected_digests(layouts)
    threads, per_thread, size = 8, 5, 4
    errors: List[BaseException] = []
    held: List[OpenedImage] = []
    lock = threading.Lock()
    all_open = threading.Barrier(threads + 1)
    done = threading.Barrier(threads + 1)

    with ProxyPool(config, size=size) as pool:

        def work(n: int) -> None:
            try:
                mine = []
                for i in range(per_thread):
                    tag = TAGS[(n + i) % len(TAGS)]
                    mine.append((tag, pool.open_image(layouts.ref(tag))))
                with lock:
                    held.extend(img for _, img in mine)
                all_open.wait()
                done.wait()  # the main thread looks at the loads meanwhile
                for tag, img in mine:
                    assert pool.fetch_manifest(img)[0] == want[tag]
                    assert pool.fetch_config(img).rootfs.diff_ids
                    with img:  # closes through the member, not the pool
                        pass
            except BaseException as e:
                errors.append(e)
                all_open.abort()
                done.abort()

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        all_open.wait()
        # nothing closed yet, so least-busy placement is exact whatever the interleaving
        assert pool.loads() == [threads * per_thread // size] * size
        assert Counter(img._owner for img in held) == {m: 10 for m in pool.members}
        done.wait()
        for w in workers:
            w.join()
        assert not errors, errors
        assert pool.loads() == [0] * size
    assert all(m._process.proc.returncode == 0 for m in pool.members)


@integration
def test_close_shuts_every_member_down(
    config: ProxyConfig, layouts: Layouts, no_leaks: None
) -> None:
    before = child_pids()
    pool = ProxyPool(config, size=3)
    pids = {m._process.pid for m in pool.members}
    assert pids <= child_pids() - before
    img = pool.open_image(layouts.ref("small"))
    pool.close()
    pool.close()  # twice is harmless
    assert not pids & child_pids()
    assert all(m._process.proc.returncode == 0 for m in pool.members)
    with pytest.raises(ProxyClosedError):
        pool.open_image(layouts.ref("small"))
    with pytest.raises(ProxyError):
        pool.fetch_manifest(img)


@integration
def test_close_reports_failures_after_closing_everything(
    config: ProxyConfig, no_leaks: None
) -> None:
    pool = ProxyPool(config, size=3)
    kill_skopeo(pool.members[0])
    with pytest.raises(ProxyExitedError) as one:
        pool.close()
    assert one.value.returncode == -signal.SIGKILL
    assert all(m._process.proc.returncode is not None for m in pool.members)

    pool = ProxyPool(config, size=3)
    kill_skopeo(pool.members[0])
    kill_skopeo(pool.members[2])
    with pytest.raises(PoolShutdownError) as several:
        pool.close()
    assert len(several.value.errors) == 2
    assert all(isinstance(e, ProxyExitedError) for e in several.value.errors)
    assert pool.members[1]._process.proc.returncode == 0


@integration
def test_a_dead_member_is_replaced(config: ProxyConfig, layouts: Layouts, no_leaks: None) -> None:
    with ProxyPool(config, size=2) as pool:
        first = pool.open_image(layouts.ref("small"))
        victim = first._owner
        kill_skopeo(victim)
        # no open fails: the dead member is noticed first, and its slot gets a fresh skopeo
        images = [pool.open_image(layouts.ref("small")) for _ in range(4)]
        assert victim not in pool.members and len(pool.members) == 2
        for img in images:
            assert pool.fetch_manifest(img)[0] == layouts.small.manifest_digest
        # the image of the dead member fails, as calls on a closed proxy do
        with pytest.raises(ProxyError):
            pool.fetch_manifest(first)
        for img in images:
            pool.close_image(img)


# --- AsyncProxyPool ------------------------------------------------------------------------


@integration
def test_async_pool_routes_and_balances(
    config: ProxyConfig, layouts: Layouts, no_leaks: None
) -> None:
    want = expected_digests(layouts)

    async def main() -> None:
        async with AsyncProxyPool(config, size=len(TAGS)) as pool:
            images = [await pool.open_image(layouts.ref(tag)) for tag in TAGS]
            assert [img._owner for img in images] == list(pool.members)
            assert {img.image_id for img in images} == {1}
            for tag, img in zip(TAGS, images):
                assert (await pool.fetch_manifest(img))[0] == want[tag]
                assert (await pool.fetch_manifest_raw_oci(img))[0] == want[tag]
                assert await pool.fetch_config_raw(img)
                assert (await pool.fetch_config(img)).rootfs.diff_ids
                assert await pool.get_layer_info(img)
            layer = layouts.small.layers[1]
            async with await pool.get_blob(images[0], layer.digest, layer.size) as blob:
                assert await blob.read() == layer.blob
            _, manifest = await pool.fetch_manifest(images[0])
            async with await pool.get_descriptor(images[0], manifest.layers[1]) as blob:
                assert await blob.read() == layer.blob
            if pool.supports("GetRawBlob"):
                async with await pool.get_raw_blob(images[0], layer.digest) as blob:
                    assert await blob.read() == layer.blob
            for img in images:
                await pool.close_image(img)
            assert await pool.open_image_optional(layouts.ref("no-such-tag")) is None
            assert pool.loads() == [0] * len(TAGS)

            async def inspect(tag: str) -> str:
                img = await pool.open_image(layouts.ref(tag))
                async with img:
                    await pool.fetch_config(img)
                    return str((await pool.fetch_manifest(img))[0])

            tags = [TAGS[i % len(TAGS)] for i in range(40)]
            assert await asyncio.gather(*(inspect(t) for t in tags)) == [want[t] for t in tags]
            assert pool.loads() == [0] * len(TAGS)

            held = await asyncio.gather(*(pool.open_image(layouts.ref("small")) for _ in range(12)))
            assert pool.loads() == [3] * len(TAGS)
            assert Counter(img._owner for img in held) == {m: 3 for m in pool.members}
            other = await AsyncImageProxy.start(config)
            async with other:
                foreign = await other.open_image(layouts.ref("small"))
                with pytest.raises(ConfigurationError, match="not opened by this pool"):
                    await pool.fetch_manifest(foreign)
        assert all(m._process is not None for m in pool.members)
        with pytest.raises(ProxyClosedError):
            await pool.open_image(layouts.ref("small"))

    asyncio.run(main())


@integration
def test_async_pool_close_and_replacement(
    config: ProxyConfig, layouts: Layouts, no_leaks: None
) -> None:
    async def main() -> None:
        pool = await AsyncProxyPool.start(config, size=3)
        victim = pool.members[1]
        kill_skopeo(victim)
        images = [await pool.open_image(layouts.ref("small")) for _ in range(3)]
        assert victim not in pool.members
        for img in images:
            assert (await pool.fetch_manifest(img))[0] == layouts.small.manifest_digest
        kill_skopeo(pool.members[0])
        kill_skopeo(pool.members[2])
        with pytest.raises(PoolShutdownError) as several:
            await pool.close()
        assert len(several.value.errors) == 2
        await pool.close()  # twice is harmless

    asyncio.run(main())
