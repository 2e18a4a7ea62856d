"""What a Python user meets first: ``async with proxy.get_blob(...)``, an optional size, the
pid, errors that say where they come from and how to fix the call, and fork safety."""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import signal
import traceback
import warnings
from pathlib import Path
from typing import Any, Iterator, List

import pytest

import containers_image_proxy
from conftest import make_config
from containers_image_proxy import (
    AsyncImageProxy,
    AsyncProxyPool,
    BlobVerificationError,
    ConfigurationError,
    ImageNotFoundError,
    ImageProxy,
    ProxyClosedError,
    ProxyConfig,
    ProxyError,
    ProxyPool,
    RequestError,
)
from testbed.fronts import open_proxy
from testbed.images import LayoutBuilder, Layouts, corrupt_blob, random_layer, truncate_blob
from testbed.releases import SkopeoRelease

pytestmark = pytest.mark.integration


class Unwinding(Exception):
    """The caller's own error, raised inside an ``async with`` block."""


class _Warnings:
    """Records every warning issued in the block (a never-awaited coroutine warns from a
    finalizer, where warnings-as-errors could only print it); gc runs at the end."""

    def __enter__(self) -> List[str]:
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        self.messages: List[str] = []
        return self.messages

    def __exit__(self, *exc: object) -> None:
        gc.collect()
        self._catcher.__exit__(*exc)
        self.messages.extend(str(w.message) for w in self._caught)


# --- 1. async with proxy.get_blob(...) ------------------------------------------------------


def test_get_blob_is_an_awaitable_async_context_manager(
    config: ProxyConfig, skopeo_release: SkopeoRelease, layouts: Layouts, no_leaks: None
) -> None:
    """``async with proxy.get_blob(...)`` (no await in between) and ``await
    proxy.get_blob(...)`` both work, for get_descriptor, get_raw_blob and the pool too, and
    neither leaves a never-awaited coroutine; create_task and gather take it."""
    small = layouts.small
    layer = small.layers[0]

    async def main() -> None:
        async with AsyncImageProxy(config) as proxy:
            async with await proxy.open_image(layouts.ref("small")) as img:
                async with proxy.get_blob(img, layer.digest, layer.size) as blob:
                    assert await blob.read() == layer.blob
                assert blob.closed
                blob = await proxy.get_blob(img, layer.digest, layer.size)
                async with blob:
                    assert await blob.read() == layer.blob
                _, manifest = await proxy.fetch_manifest(img)
                async with proxy.get_descriptor(img, manifest.config) as blob:
                    assert await blob.read() == small.config
                # an error inside the block closes the reader quietly and comes through
                with pytest.raises(Unwinding):
                    async with proxy.get_descriptor(img, manifest.layers[0]) as blob:
                        raise Unwinding()
                assert blob.closed
                readers = await asyncio.gather(
                    proxy.get_blob(img, layer.digest, layer.size),
                    asyncio.create_task(proxy.get_descriptor(img, manifest.config)),
                )
                assert [await r.read() for r in readers] == [layer.blob, small.config]
                for r in readers:
                    await r.close()
                if skopeo_release.has_protocol("0.2.8"):
                    async with proxy.get_raw_blob(img, layer.digest, verify=True) as blob:
                        assert await blob.read() == layer.blob
        async with AsyncProxyPool(config, size=1) as pool:
            async with await pool.open_image(layouts.ref("small")) as img:
                async with pool.get_blob(img, layer.digest) as blob:
                    assert await blob.read() == layer.blob
                async with pool.get_descriptor(img, layer_descriptor(layer)) as blob:
                    assert await blob.read() == layer.blob
                assert await (await pool.get_blob(img, layer.digest)).read() == layer.blob

    with _Warnings() as caught:
        asyncio.run(main())
    assert caught == []


def layer_descriptor(layer: Any) -> containers_image_proxy.Descriptor:
    return containers_image_proxy.Descriptor.from_json(layer.descriptor)


def test_a_forgotten_await_still_warns(
    config: ProxyConfig, layouts: Layouts, no_leaks: None
) -> None:
    """The warning catcher above can fail: an opening never awaited nor entered warns."""
    layer = layouts.small.layers[0]

    async def main() -> None:
        async with AsyncImageProxy(config) as proxy:
            async with await proxy.open_image(layouts.ref("small")) as img:
                proxy.get_blob(img, layer.digest, layer.size)  # neither awaited nor entered

    with _Warnings() as caught:
        asyncio.run(main())
    assert any("was never awaited" in m for m in caught), caught


# --- 2. the size is optional -----------------------------------------------------------


def test_get_blob_without_a_size(
    front: str,
    config: ProxyConfig,
    skopeo_release: SkopeoRelease,
    layout_builder: LayoutBuilder,
    no_leaks: None,
) -> None:
    """Layers and the config read without a size on every release; a digest the image does
    not reference is a clear error; a truncated blob still fails at open."""
    image = layout_builder.add_image("t", [random_layer(1, 5000), random_layer(2, 7000)])
    other = layout_builder.add_image("other", [random_layer(3, 3000)])
    short = layout_builder.add_image("short", [random_layer(4, 9000)], compression=None)
    truncate_blob(layout_builder, short.layers[0].digest)
    with open_proxy(front, config) as proxy:
        with proxy.open_image(layout_builder.ref("t")) as img:
            for layer in image.layers:
                with proxy.get_blob(img, layer.digest) as blob:
                    assert blob.read() == layer.blob
            with proxy.get_blob(img, image.config_digest) as blob:
                assert blob.read() == image.config
            absent = "sha256:" + "00" * 32
            if skopeo_release.has_protocol("0.2.8"):
                # GetRawBlob needs no size: skopeo serves what it can reach, or says why not
                with pytest.raises(RequestError, match="00000000"):
                    proxy.get_blob(img, absent)
            else:
                with pytest.raises(ConfigurationError, match="neither the config nor a layer"):
                    proxy.get_blob(img, absent)
                with pytest.raises(ConfigurationError, match="pass size="):
                    proxy.get_blob(img, other.layers[0].digest)
        with proxy.open_image(layout_builder.ref("short")) as img:
            size = short.layers[0].size
            if skopeo_release.has_protocol("0.2.8"):
                # the size is skopeo's own: the digest check at the end catches it
                with proxy.get_blob(img, short.layers[0].digest) as blob:
                    with pytest.raises(BlobVerificationError, match="content has digest"):
                        blob.read()
            else:
                expected = f"source has {size // 2} bytes, expected {size}"
                with pytest.raises(BlobVerificationError, match=expected):
                    proxy.get_blob(img, short.layers[0].digest)  # before any read
        assert proxy.fetch_manifest(proxy.open_image(layout_builder.ref("t")))[0] == (
            image.manifest_digest
        )


# --- 3. errors that show where they come from ---------------------------------------------


def test_exported_exceptions_show_their_public_path_and_pickle() -> None:
    exported = [getattr(containers_image_proxy, name) for name in containers_image_proxy.__all__]
    exceptions = [c for c in exported if isinstance(c, type) and issubclass(c, BaseException)]
    assert len(exceptions) >= 15
    for cls in exceptions:
        assert cls.__module__ == "containers_image_proxy", cls
        assert getattr(containers_image_proxy, cls.__name__) is cls
    assert "containers_image_proxy.RequestError:" in "".join(
        traceback.format_exception_only(RequestError("OpenImage", "boom"))
    )
    # errors travel back from worker processes with their attributes
    samples: List[ProxyError] = [
        RequestError("GetBlob", "boom", "retryable", True),
        ImageNotFoundError("OpenImage", "no such image", None, "oci:/x:y"),
        BlobVerificationError("sha256:" + "ab" * 32, "content has digest sha256:cd"),
        containers_image_proxy.ProxyExitedError(-9, "tail", "GetManifest"),
        containers_image_proxy.ProxyTooOldError("get_raw_blob", "0.2.3", "0.2.8", "1.19"),
        containers_image_proxy.MetadataTooLargeError("GetManifest payload", 4096),
        containers_image_proxy.SkopeoNotFoundError("skopeo", "not found"),
    ]
    for err in samples:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert back.__dict__ == err.__dict__


def _frames(err: BaseException) -> int:
    """The frames a printed traceback shows, chained exceptions included."""
    lines = traceback.format_exception(type(err), err, err.__traceback__)
    return sum(1 for line in lines if line.lstrip().startswith("File "))


def test_a_failed_open_has_a_short_traceback(front: str, config: ProxyConfig) -> None:
    """A missing image and a refused request: the caller's frame, the public method and a
    few of the operation's, not the connection's plumbing (a RequestError showed 11 frames
    before its chain was cut, a not-found one 5 to 6)."""
    with open_proxy(front, config) as proxy:
        errors: List[BaseException] = []
        for ref in ("oci:/nonexistent:x", "dir:/nonexistent", "docker://127.0.0.1:1/x:y"):
            with pytest.raises(RequestError) as info:
                proxy.open_image(ref)
            errors.append(info.value)
            # ... and a second failure on the same proxy is no deeper than the first
            with pytest.raises(RequestError) as again:
                proxy.open_image(ref)
            assert _frames(again.value) == _frames(info.value)
    assert isinstance(errors[0], ImageNotFoundError)
    # the blocking wrapper of the asyncio front end adds its own frames: count from the proxy
    depths = [_frames(e) for e in errors]
    extra = 0 if front == "sync" else 4
    assert max(depths) <= 7 + extra, depths


def test_a_dead_proxys_error_does_not_grow(front: str, config: ProxyConfig) -> None:
    """Every call on a proxy whose skopeo died raises the same error object; its traceback
    used to grow by the frames of each raise (11, 22, 33, 44 frames on the sync proxy)."""
    proxy = open_proxy(front, config)
    os.kill(proxy.pid, signal.SIGKILL)
    depths = []
    for _ in range(4):
        with pytest.raises(ProxyError) as info:
            proxy.open_image("oci:/nonexistent:x")
        depths.append(_frames(info.value))
    assert max(depths) <= depths[0] <= 11 + (0 if front == "sync" else 4), depths
    proxy.close()  # the death was reported already: close() reaps quietly
    assert proxy.pid is None


# --- 4. and 5. a proxy not started; the pid -----------------------------------------------


def test_an_unstarted_async_proxy_says_how_to_start_it(
    config: ProxyConfig, layouts: Layouts, no_leaks: None
) -> None:
    """The message names both ways; ``await proxy.start()`` starts that very proxy (the
    classmethod form still makes a new one)."""
    hint = r"'async with proxy:' or 'await proxy.start\(\)'"

    async def main() -> None:
        proxy = AsyncImageProxy(config)
        assert proxy.pid is None
        with pytest.raises(ProxyClosedError, match=hint):
            await proxy.open_image(layouts.ref("small"))
        with pytest.raises(ProxyError, match=hint):
            _ = proxy.protocol_version
        assert await proxy.start() is proxy
        assert await proxy.start() is proxy  # once started, start() changes nothing
        pid = proxy.pid
        async with await proxy.open_image(layouts.ref("small")) as img:
            assert (await proxy.fetch_manifest(img))[0] == layouts.small.manifest_digest
        assert proxy.pid == pid
        await proxy.close()
        pool = AsyncProxyPool(config, size=1)
        with pytest.raises(ProxyClosedError, match=r"'async with pool:' or 'await pool.start"):
            await pool.open_image(layouts.ref("small"))
        assert await pool.start() is pool
        async with pool, await pool.open_image(layouts.ref("small")) as img:
            assert (await pool.fetch_manifest(img))[0] == layouts.small.manifest_digest
        other = await AsyncImageProxy.start(config)
        assert isinstance(other, AsyncImageProxy) and other.pid is not None
        await other.close()

    asyncio.run(main())


def _cmdline(pid: int) -> List[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_pid_is_skopeos(front: str, config: ProxyConfig, no_leaks: None) -> None:
    proxy = open_proxy(front, config)
    with proxy:
        pid = proxy.pid
        assert isinstance(pid, int) and pid != os.getpid()
        assert "experimental-image-proxy" in _cmdline(pid)
        assert f"pid={pid}" in repr(proxy)
    assert proxy.pid is None  # closed: skopeo is gone
    assert not Path(f"/proc/{pid}").exists() or "experimental-image-proxy" not in _cmdline(pid)


# --- 6. fork safety ---------------------------------------------------------------------


def _in_child(body: Any) -> int:
    """Run ``body`` in a forked child; its exit status (0: every check held)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status only
        code = 1
        try:
            body()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture
def proxies(config: ProxyConfig) -> Iterator[List[Any]]:
    made: List[Any] = []
    yield made
    for p in made:
        p.close()


def test_a_forked_child_cannot_use_its_parents_proxy(
    config: ProxyConfig, layouts: Layouts, no_leaks: None
) -> None:
    """In the child, the parent's proxy and pool raise ProxyError naming the fork; a proxy
    made in the child works; closing or dropping the parent's in the child leaves the
    parent's skopeo alone. The parent's proxies work afterwards."""
    layer = layouts.small.layers[0]
    proxy = ImageProxy(config)
    pool = ProxyPool(config, size=1)
    victim = ImageProxy(config)  # dropped in the child: its finalizer must not kill skopeo
    img = proxy.open_image(layouts.ref("small"))
    pool_img = pool.open_image(layouts.ref("small"))
    blob = proxy.get_blob(img, layer.digest, layer.size)
    head = blob.read(10)

    def child() -> None:
        nonlocal victim
        forked = "forked child"
        with pytest.raises(ProxyError, match=forked):
            proxy.fetch_manifest(img)
        with pytest.raises(ProxyError, match=forked):
            proxy.open_image(layouts.ref("small"))
        with pytest.raises(ProxyError, match=forked):
            blob.read(10)  # the pipe is the parent's: not one byte taken from it
        with pytest.raises(ProxyError, match=forked):
            pool.fetch_config(pool_img)
        with pytest.raises(ProxyError, match=forked):
            pool.open_image(layouts.ref("small"))
        cfg = pickle.loads(pickle.dumps(config))
        with ImageProxy(cfg) as own, own.open_image(layouts.ref("small")) as mine:
            assert own.fetch_manifest(mine)[0] == layouts.small.manifest_digest
        proxy.close()  # only the child's copies of the descriptors
        pool.close()
        del victim
        gc.collect()

    assert _in_child(child) == 0
    for p in (proxy, victim):
        assert "experimental-image-proxy" in _cmdline(p.pid)
    assert head + blob.read() == layer.blob
    blob.close()
    assert proxy.fetch_manifest(img)[0] == layouts.small.manifest_digest
    assert pool.fetch_manifest(pool_img)[0] == layouts.small.manifest_digest
    with victim.open_image(layouts.ref("small")) as other:
        assert victim.fetch_manifest(other)[0] == layouts.small.manifest_digest
    proxy.close()
    pool.close()
    victim.close()


def test_a_forked_child_cannot_use_its_parents_async_proxy(
    config: ProxyConfig, layouts: Layouts, no_leaks: None
) -> None:
    async def main() -> None:
        async with AsyncImageProxy(config) as proxy:
            img = await proxy.open_image(layouts.ref("small"))

            def child() -> None:
                async def use() -> None:
                    with pytest.raises(ProxyError, match="forked child"):
                        await proxy.fetch_manifest(img)
                    async with AsyncImageProxy(config) as own:
                        async with await own.open_image(layouts.ref("small")) as mine:
                            await own.fetch_manifest(mine)

                asyncio.new_event_loop().run_until_complete(use())

            assert _in_child(child) == 0
            assert (await proxy.fetch_manifest(img))[0] == layouts.small.manifest_digest

    asyncio.run(main())


def test_proxy_config_pickles() -> None:
    config = ProxyConfig(
        skopeo=("skopeo",), auth_data=b'{"auths": {}}', retries=2, stall_timeout=5.0
    )
    back = pickle.loads(pickle.dumps(config))
    assert back == config
    assert "auths" not in repr(back)


# --- 7. where verification errors come from ------------------------------------------------


@pytest.mark.parametrize("retries", [0, 1])
def test_a_corrupted_blob_names_each_digest_once(
    front: str,
    skopeo_release: SkopeoRelease,
    layout_builder: LayoutBuilder,
    retries: int,
    no_leaks: None,
) -> None:
    """The digest asked for appears once; the actual one too where the client hashed the
    stream (0.2.8, or retries on older releases); skopeo's own check names no other."""
    image = layout_builder.add_image("t", [random_layer(3, 300_000)], compression=None)
    layer = image.layers[0]
    corrupt_blob(layout_builder, layer.digest)
    config = make_config(skopeo_release, retries=retries)
    with open_proxy(front, config) as proxy, proxy.open_image(layout_builder.ref("t")) as img:
        blob = proxy.get_blob(img, layer.digest)  # the size is right: it opens
        with pytest.raises(BlobVerificationError) as info:
            blob.read()
        blob.close_quietly()
    message = str(info.value)
    assert message.count(layer.digest) == 1, message
    hashed = retries > 0 or skopeo_release.has_protocol("0.2.8")
    if hashed:
        assert message.count("sha256:") == 2, message
    else:
        assert message.count("sha256:") == 1 and "skopeo" in message, message
