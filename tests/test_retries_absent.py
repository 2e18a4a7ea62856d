"""Retries only for what can succeed: a blob that is not there fails at once.

skopeo 1.22 codes a registry's "blob unknown" as retryable, so a client trusting the code
would ask ``retries`` more times, waiting between attempts, for a blob that cannot appear.
The registry here holds a manifest whose layer was deleted; a relay counts the requests.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from conftest import make_config
from containers_image_proxy import (
    AsyncImageProxy,
    ImageProxy,
    ProxyConfig,
    RequestError,
)
from testbed.images import ImageInfo, LayoutBuilder, Layouts, small_image
from testbed.registry import Registry
from testbed.relay import Relay
from testbed.releases import SkopeoRelease

pytestmark = pytest.mark.integration

REPO = "absent/broken"


@dataclass(frozen=True)
class Broken:
    image: ImageInfo
    missing: str  # the digest of the deleted layer
    present: str  # a layer still there


@pytest.fixture(scope="module")
def broken(registry_plain: Registry, layouts: Layouts) -> Broken:
    image = layouts.small
    registry_plain.push(layouts.ref("small"), f"{REPO}:1")
    missing = image.layers[1].digest
    request = urllib.request.Request(
        f"{registry_plain.url}/v2/{REPO}/blobs/{missing}", method="DELETE"
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        assert response.status == 202
    return Broken(image, missing, image.layers[0].digest)


@pytest.fixture
def relay(registry_plain: Registry) -> Iterator[Relay]:
    with Relay(registry_plain.host) as r:
        yield r


def requests_for(relay: Relay, digest: str) -> int:
    return sum(1 for path in relay.stats.blob_requests if path.endswith(digest))


def fetch_missing(config: ProxyConfig, relay: Relay, broken: Broken) -> RequestError:
    layer = next(layer for layer in broken.image.layers if layer.digest == broken.missing)
    with ImageProxy(config) as proxy:
        with proxy.open_image(f"docker://{relay.host}/{REPO}:1") as img:
            with pytest.raises(RequestError) as caught:
                with proxy.get_blob(img, layer.digest, layer.size) as blob:
                    blob.read()
            # the layer that is there still reads
            kept = broken.image.layers[0]
            with proxy.get_blob(img, kept.digest, kept.size) as blob:
                assert blob.read() == kept.blob
    return caught.value


def test_missing_blob_is_asked_for_once(
    no_leaks: None, skopeo_release: SkopeoRelease, broken: Broken, relay: Relay
) -> None:
    once = fetch_missing(make_config(skopeo_release, tls_verify=False), relay, broken)
    asked_without_retries = requests_for(relay, broken.missing)
    assert asked_without_retries >= 1

    err = fetch_missing(make_config(skopeo_release, tls_verify=False, retries=3), relay, broken)
    asked_with_retries = requests_for(relay, broken.missing) - asked_without_retries
    assert asked_with_retries == asked_without_retries
    for e in (once, err):
        assert not e.retryable
        assert ("blob unknown" in e.message) or ("404" in e.message), e.message
    if skopeo_release.has_protocol("0.2.8"):
        assert err.error_code == "retryable"  # what skopeo says; the client knows better


def test_missing_blob_async(
    no_leaks: None, skopeo_release: SkopeoRelease, broken: Broken, relay: Relay
) -> None:
    layer = next(layer for layer in broken.image.layers if layer.digest == broken.missing)
    config = make_config(skopeo_release, tls_verify=False, retries=3)

    async def main() -> None:
        async with AsyncImageProxy(config) as proxy:
            async with await proxy.open_image(f"docker://{relay.host}/{REPO}:1") as img:
                with pytest.raises(RequestError) as caught:
                    async with await proxy.get_blob(img, layer.digest, layer.size) as blob:
                        await blob.read()
                assert not caught.value.retryable

    asyncio.run(main())
    assert requests_for(relay, broken.missing) >= 1
    # one attempt's worth, as without retries (the sync test measures that count)
    assert requests_for(relay, broken.missing) <= 2


def test_blob_removed_from_layout_is_not_retryable(
    no_leaks: None, skopeo_release: SkopeoRelease, layout_builder: LayoutBuilder
) -> None:
    image = small_image(layout_builder, "small")
    layer = image.layers[2]
    layout_builder.blob_path(layer.digest).unlink()
    config = make_config(skopeo_release, retries=3)
    with ImageProxy(config) as proxy:
        with proxy.open_image(layout_builder.ref("small")) as img:
            with pytest.raises(RequestError) as caught:
                with proxy.get_blob(img, layer.digest, layer.size) as blob:
                    blob.read()
    assert "no such file or directory" in caught.value.message
    assert not caught.value.retryable
