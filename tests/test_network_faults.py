"""A registry connection cut in the middle of a blob, through the test bed's relay.

skopeo reaches the plain registry through :class:`testbed.relay.Relay`, which cuts blob
responses after 256 KiB (with a FIN or a reset). What each release makes of it, as seen
here (the outcome of each test is kept in its user properties, hence in junit XML):

- 1.9.3 (0.2.3): does not resume. Its GetBlob writer fails, and the pipe stays open
  until FinishPipe: the client's reader probes a pipe silent for a second with an early
  FinishPipe, which reports ``unexpected EOF``: RequestError, retryable by its text.
- 1.18 (0.2.6): resumes once with a Range request (containers/image's body reader); cut
  again soon after, it gives up: the same RequestError through FinishPipe. One cut alone
  is invisible: the blob arrives whole and verified.
- 1.22 (0.2.8): resumes once too, then reports through GetRawBlob's error pipe:
  RequestError with error_code "retryable" after a reset, but "other" after an early EOF.

Every outcome is a typed error or a verified blob, within seconds, with no stall_timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

import pytest

from conftest import make_config
from containers_image_proxy import (
    AsyncImageProxy,
    BlobVerificationError,
    ImageProxy,
    ProxyConfig,
    ProxyError,
    RequestError,
)
from testbed.images import LayerInfo, LayoutBuilder, random_layer
from testbed.registry import Registry
from testbed.relay import Relay
from testbed.releases import SkopeoRelease

pytestmark = pytest.mark.integration

REPO_TAG = "net/big:1"
LAYER_SIZE = 4 * 1024 * 1024
# Small enough that no release's resume heuristic (it wants about 1 MiB of progress
# between two reconnections) keeps going when every response is cut.
CUT_AFTER = 256 * 1024
EVERY_TIME = 1_000_000
# A fetch that has not ended by then hangs: a cut is reported within about a second.
HANG_DEADLINE = 6.0
TYPED = (RequestError, BlobVerificationError)


@dataclass(frozen=True)
class BigImage:
    registry: Registry
    layer: LayerInfo


@pytest.fixture(scope="module")
def big_image(tmp_path_factory: pytest.TempPathFactory, registry_plain: Registry) -> BigImage:
    builder = LayoutBuilder(tmp_path_factory.mktemp("net") / "oci")
    # Random bytes: gzip cannot shrink them, so the blob on the wire is about 4 MiB.
    image = builder.add_image("big", [random_layer(4242, LAYER_SIZE)])
    assert image.layers[0].size > LAYER_SIZE
    registry_plain.push(builder.ref("big"), REPO_TAG)
    return BigImage(registry_plain, image.layers[0])


def relay_config(release: SkopeoRelease, **fields: object) -> ProxyConfig:
    return make_config(release, tls_verify=False, **fields)


def fetch(proxy: ImageProxy, relay: Relay, layer: LayerInfo) -> bytes:
    """Open the image through the relay and read the big layer to its verified end."""
    with proxy.open_image(f"docker://{relay.host}/{REPO_TAG}") as img:
        with proxy.get_blob(img, layer.digest, layer.size) as blob:
            return blob.read()


def outcome(result: Union[bytes, BaseException]) -> str:
    """One line for the record: what a fetch ended in."""
    if isinstance(result, bytes):
        return f"ok, {len(result)} bytes"
    code = getattr(result, "error_code", None)
    retryable = getattr(result, "retryable", None)
    return f"{type(result).__name__} (error_code={code}, retryable={retryable}): {result}"


def record(request: pytest.FixtureRequest, result: Union[bytes, BaseException]) -> None:
    """Keep the outcome with the test's report (junit XML shows user properties)."""
    request.node.user_properties.append(("outcome", outcome(result)))


def run_with_deadline(
    proxy: ImageProxy, work: Callable[[], bytes], deadline: float
) -> tuple[Union[bytes, BaseException], bool]:
    """Run ``work`` in a thread; past ``deadline`` seconds, kill skopeo to unblock it.

    Returns what ``work`` returned or raised, and whether it had to be unblocked (a hang).
    """
    result: list[Union[bytes, BaseException]] = []

    def target() -> None:
        try:
            result.append(work())
        except BaseException as e:
            result.append(e)

    worker = threading.Thread(target=target, name="fetch-with-deadline")
    worker.start()
    worker.join(deadline)
    hung = worker.is_alive()
    if hung:
        # skopeo's death closes the pipe the reader is blocked on.
        os.kill(proxy._process.pid, signal.SIGKILL)
        worker.join(30)
        assert not worker.is_alive(), "the reader stayed blocked after skopeo was killed"
    return result[0], hung


def test_cut_blob_response_ends_in_typed_error(
    no_leaks: None,
    skopeo_release: SkopeoRelease,
    big_image: BigImage,
    request: pytest.FixtureRequest,
) -> None:
    """No stall_timeout: the cut alone must end the read, with a typed error."""
    layer = big_image.layer
    with Relay(big_image.registry.host, cut_after_bytes=CUT_AFTER, cut_times=EVERY_TIME) as relay:
        proxy = ImageProxy(relay_config(skopeo_release))
        try:
            result, hung = run_with_deadline(
                proxy, lambda: fetch(proxy, relay, layer), HANG_DEADLINE
            )
        finally:
            try:
                proxy.close()
            except ProxyError:
                pass  # skopeo was killed to end a hang: that is reported below
        record(request, result)
    assert relay.stats.cuts >= 1
    assert not hung, f"no result after {HANG_DEADLINE} s: the read hung"
    assert isinstance(result, TYPED), outcome(result)


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
def test_cut_blob_error_is_retryable(
    no_leaks: None,
    skopeo_release: SkopeoRelease,
    big_image: BigImage,
    reset: bool,
    request: pytest.FixtureRequest,
) -> None:
    if not skopeo_release.has_protocol("0.2.8"):
        pytest.skip("needs protocol 0.2.8 (skopeo 1.19+): error codes and GetRawBlob")
    layer = big_image.layer
    config = relay_config(skopeo_release, stall_timeout=10)
    with Relay(
        big_image.registry.host, cut_after_bytes=CUT_AFTER, cut_times=EVERY_TIME, reset=reset
    ) as relay:
        with ImageProxy(config) as proxy:
            with pytest.raises(RequestError) as caught:
                fetch(proxy, relay, layer)
            record(request, caught.value)
            # The proxy survives the failed blob; with the relay now letting everything
            # through, asking again gets the verified blob.
            relay.cut_after_bytes = None
            data = fetch(proxy, relay, layer)
            assert hashlib.sha256(data).hexdigest() == layer.digest.split(":")[1]
    assert caught.value.method == "GetRawBlob"
    assert caught.value.error_code is not None
    assert caught.value.retryable, outcome(caught.value)


def test_cut_blob_with_stall_timeout(
    no_leaks: None,
    skopeo_release: SkopeoRelease,
    big_image: BigImage,
    request: pytest.FixtureRequest,
) -> None:
    """A stall_timeout longer than the probe delay changes nothing: the same typed error."""
    layer = big_image.layer
    config = relay_config(skopeo_release, stall_timeout=2)
    start = time.monotonic()
    with Relay(big_image.registry.host, cut_after_bytes=CUT_AFTER, cut_times=EVERY_TIME) as relay:
        with ImageProxy(config) as proxy:
            with pytest.raises(ProxyError) as caught:
                fetch(proxy, relay, layer)
    elapsed = time.monotonic() - start
    record(request, caught.value)
    assert elapsed < 10
    # The cut is reported before the stall detector would fire: the proxy is not torn down.
    assert isinstance(caught.value, TYPED), outcome(caught.value)


def test_single_cut(
    no_leaks: None,
    skopeo_release: SkopeoRelease,
    big_image: BigImage,
    request: pytest.FixtureRequest,
) -> None:
    """One cut only: releases with a resuming body reader (1.18+) deliver the verified blob."""
    layer = big_image.layer
    config = relay_config(skopeo_release)
    result: Union[bytes, BaseException]
    with Relay(big_image.registry.host, cut_after_bytes=CUT_AFTER, cut_times=1) as relay:
        with ImageProxy(config) as proxy:
            try:
                result = fetch(proxy, relay, layer)
            except ProxyError as e:
                result = e
    record(request, result)
    assert relay.stats.cuts == 1
    if skopeo_release.version >= (1, 18):
        assert isinstance(result, bytes), outcome(result)
        assert hashlib.sha256(result).hexdigest() == layer.digest.split(":")[1]
        # The second request for the blob is the resumption (a Range request).
        assert len(relay.stats.blob_requests) == 2
    else:
        # No resumption in 1.9.3: the one cut is the error.
        assert isinstance(result, TYPED), outcome(result)


def test_slow_registry_is_not_a_stall(
    no_leaks: None, skopeo_release: SkopeoRelease, big_image: BigImage
) -> None:
    # 40 ms per round trip, well under stall_timeout: a slow registry that keeps going must
    # not be taken for a stalled one.
    layer = big_image.layer
    config = relay_config(skopeo_release, stall_timeout=2)
    with Relay(big_image.registry.host, delay_ms=40) as relay:
        with ImageProxy(config) as proxy:
            data = fetch(proxy, relay, layer)
    assert hashlib.sha256(data).hexdigest() == layer.digest.split(":")[1]
    assert relay.stats.cuts == 0 and relay.stats.connections >= 1


def test_cut_blob_async(
    no_leaks: None,
    skopeo_release: SkopeoRelease,
    big_image: BigImage,
    request: pytest.FixtureRequest,
) -> None:
    """The asyncio reader ends the same way, and its proxy serves on."""
    layer = big_image.layer
    config = relay_config(skopeo_release)

    async def main(relay: Relay) -> ProxyError:
        async with AsyncImageProxy(config) as proxy:
            img = await proxy.open_image(f"docker://{relay.host}/{REPO_TAG}")
            async with img:
                blob = await proxy.get_blob(img, layer.digest, layer.size)
                try:
                    # wait_for only bounds a regression: the cut ends the read in about 1 s.
                    await asyncio.wait_for(blob.read(), 20)
                except ProxyError as e:
                    caught = e
                else:
                    raise AssertionError("the cut blob was read without an error")
                finally:
                    await blob.close_quietly()
                relay.cut_after_bytes = None
                again = await proxy.get_blob(img, layer.digest, layer.size)
                async with again:
                    assert (
                        hashlib.sha256(await again.read()).hexdigest() == layer.digest.split(":")[1]
                    )
        return caught

    with Relay(big_image.registry.host, cut_after_bytes=CUT_AFTER, cut_times=EVERY_TIME) as relay:
        caught = asyncio.run(main(relay))
    record(request, caught)
    assert isinstance(caught, TYPED), outcome(caught)
