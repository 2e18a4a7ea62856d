"""Where the two front ends must agree: ``with`` on images and readers, and iteration."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import warnings
from typing import Any, List

import pytest

from containers_image_proxy import AsyncImageProxy, BlobVerificationError, ImageProxy, ProxyConfig
from containers_image_proxy._transport import READ_CHUNK
from testbed.fronts import open_proxy
from testbed.images import LayoutBuilder, Layouts, corrupt_blob, random_layer
from testbed.releases import SkopeoRelease

pytestmark = pytest.mark.integration


class Unwinding(Exception):
    """The caller's own error, raised inside a ``with`` block."""


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class _no_warning:
    """Fails if a warning (a never-awaited coroutine, say) is issued inside the block."""

    def __enter__(self) -> None:
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc: object) -> None:
        gc.collect()
        self._catcher.__exit__(*exc)
        assert [str(w.message) for w in self._caught] == []


def test_plain_with_on_an_async_image_says_async_with(
    config: ProxyConfig, layouts: Layouts, no_leaks: None
) -> None:
    async def main() -> None:
        async with AsyncImageProxy(config) as proxy:
            img = await proxy.open_image(layouts.ref("small"))
            with pytest.raises(TypeError, match="async with"):
                with img:
                    raise AssertionError("the body must not run")
            assert not img.closed
            async with img:
                pass
            assert img.closed

    with _no_warning():
        run(main())


def test_async_with_on_a_sync_image_says_with(
    config: ProxyConfig, layouts: Layouts, no_leaks: None
) -> None:
    async def main(proxy: ImageProxy) -> None:
        img = proxy.open_image(layouts.ref("small"))
        with pytest.raises(TypeError, match="plain .with."):
            async with img:
                raise AssertionError("the body must not run")
        assert not img.closed
        with img:
            pass
        assert img.closed

    with ImageProxy(config) as proxy:
        run(main(proxy))


def test_leaving_a_reader_while_unwinding_keeps_the_callers_error(
    front: str, config: ProxyConfig, layout_builder: LayoutBuilder, no_leaks: None
) -> None:
    """The reader holds every byte of a corrupted blob, so closing it would verify and fail:
    leaving its ``with`` because of another error must let that error through, and a
    clean exit must still report the verification failure."""
    image = layout_builder.add_image("t", [random_layer(3, 300_000)], compression=None)
    layer = image.layers[0]
    corrupt_blob(layout_builder, layer.digest)
    with open_proxy(front, config) as proxy, proxy.open_image(layout_builder.ref("t")) as img:
        with pytest.raises(Unwinding):
            with proxy.get_blob(img, layer.digest, layer.size) as blob:
                assert len(blob.read(layer.size)) == layer.size
                raise Unwinding()
        with pytest.raises(BlobVerificationError):
            with proxy.get_blob(img, layer.digest, layer.size) as blob:
                assert len(blob.read(layer.size)) == layer.size
        # the proxy is still usable after both
        assert proxy.fetch_manifest(img)[0] == image.manifest_digest


def test_iteration_yields_the_same_chunks(
    front: str, config: ProxyConfig, layout_builder: LayoutBuilder, no_leaks: None
) -> None:
    """``for chunk in blob`` and ``async for chunk in blob``: whole READ_CHUNK pieces, the
    last one shorter, whatever the pipe returns per read (and never lines)."""
    data = random_layer(5, 2 * READ_CHUNK + 12345)
    assert data.count(b"\n") > 100  # line iteration would show
    image = layout_builder.add_image("t", [data], compression=None)
    layer = image.layers[0]
    with open_proxy(front, config) as proxy, proxy.open_image(layout_builder.ref("t")) as img:
        with proxy.get_blob(img, layer.digest, layer.size) as blob:
            chunks = list(blob)
    assert [len(c) for c in chunks] == [READ_CHUNK, READ_CHUNK, layer.size - 2 * READ_CHUNK]
    assert b"".join(chunks) == layer.blob


def test_copy_to_a_full_pipe_waits_for_room(
    front: str,
    config: ProxyConfig,
    skopeo_release: SkopeoRelease,
    layout_builder: LayoutBuilder,
    monkeypatch: pytest.MonkeyPatch,
    no_leaks: None,
) -> None:
    """``copy_to`` splicing into a pipe that its reader drains slowly: every byte arrives,
    and while the pipe is full the copy waits for room (the splice fails with EAGAIN when
    the destination is full, as when the source is empty: retrying at once would spin)."""
    if not hasattr(os, "splice"):
        pytest.skip("no os.splice before Python 3.10: copy_to reads and writes instead")
    image = layout_builder.add_image("t", [random_layer(9, 3 * 1024 * 1024)], compression=None)
    layer = image.layers[0]
    calls = [0]
    real_splice = os.splice

    def counting_splice(*args: Any, **kwargs: Any) -> int:
        calls[0] += 1
        return real_splice(*args, **kwargs)

    monkeypatch.setattr(os, "splice", counting_splice)
    r, w = os.pipe()
    received: List[bytes] = []

    def drain() -> None:
        with open(r, "rb", buffering=0) as f:
            while chunk := f.read(65536):
                received.append(chunk)
                threading.Event().wait(0.002)  # a slow consumer, not a synchronisation

    consumer = threading.Thread(target=drain)
    consumer.start()
    try:
        with open_proxy(front, config) as proxy, proxy.open_image(layout_builder.ref("t")) as img:
            if skopeo_release.has_protocol("0.2.8"):
                blob = proxy.get_raw_blob(img, layer.digest, layer.size)  # nothing hashes
            else:
                blob = proxy.get_blob(img, layer.digest, layer.size)  # skopeo verifies
            with blob:
                assert blob.copy_to(w) == layer.size
    finally:
        os.close(w)
        consumer.join()
    assert b"".join(received) == layer.blob
    # a splice per time the pipe has room, tens of them; a spin makes thousands
    assert 0 < calls[0] < 2000
