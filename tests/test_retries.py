"""Interrupted blob transfers: no hang without retries, transparent resumption with them.

A relay of the tests' own (tests/testbed/relay.py) cuts the registry connection in the
middle of a blob response.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import make_config
from containers_image_proxy import (
    AsyncImageProxy,
    BlobVerificationError,
    ImageProxy,
    RequestError,
)
from testbed.images import random_layer
from testbed.registry import Registry
from testbed.relay import Relay
from testbed.releases import SkopeoRelease

pytestmark = pytest.mark.integration

LAYER_SIZE = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def big_image(registry_plain: Registry, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from testbed.images import LayoutBuilder

    builder = LayoutBuilder(tmp_path_factory.mktemp("retry") / "oci")
    # skopeo compresses the layer on the way into the registry: tests read the digest there
    image = builder.add_image("big", [random_layer(11, LAYER_SIZE)], compression=None)
    registry_plain.push(builder.ref("big"), "retry/big:1")
    return image


@pytest.fixture
def relay(registry_plain: Registry, request: pytest.FixtureRequest) -> Iterator[Relay]:
    options = getattr(request, "param", {})
    with Relay(registry_plain.host, cut_after_bytes=1024 * 1024, **options) as r:
        yield r


def test_cut_without_retries_is_a_typed_error_not_a_hang(
    skopeo_release: SkopeoRelease, big_image: Any, relay: Relay
) -> None:
    """1.9.3 reports the cut; newer containers/image resumes by itself with a range request.

    Either way: verified data or a typed error, within seconds.
    """
    config = make_config(skopeo_release, tls_verify=False)
    with ImageProxy(config) as proxy:
        with proxy.open_image(f"docker://{relay.host}/retry/big:1") as img:
            (layer,) = proxy.get_layer_info(img)
            start = time.monotonic()
            try:
                with proxy.get_blob(img, layer.digest, layer.size) as blob:
                    data = blob.read()
            except (RequestError, BlobVerificationError) as e:
                if skopeo_release.has_protocol("0.2.8"):
                    assert isinstance(e, RequestError) and e.retryable
                assert skopeo_release.version < (1, 13), f"{skopeo_release.name} reported {e}"
            else:
                assert hashlib.sha256(data).hexdigest() == layer.digest.hex
                assert skopeo_release.version >= (1, 13)  # 1.9.3 has no internal resume
            # GetBlob's pipe ends only at FinishPipe: the reader probes a silent pipe
            assert time.monotonic() - start < 20
            # the proxy still serves
            assert proxy.fetch_manifest(img)[0]
    assert relay.stats.cuts == 1


@pytest.mark.parametrize("how", ["read", "copy_to"])
def test_retries_resume_transparently(
    skopeo_release: SkopeoRelease, big_image: Any, relay: Relay, tmp_path: Path, how: str
) -> None:
    """Through read() and through copy_to (whose helper threads hash and write: every byte
    must be hashed before the restarted stream's prefix is checked against it)."""
    config = make_config(skopeo_release, tls_verify=False, retries=2)
    with ImageProxy(config) as proxy:
        with proxy.open_image(f"docker://{relay.host}/retry/big:1") as img:
            (layer,) = proxy.get_layer_info(img)
            digest = hashlib.sha256()
            with proxy.get_blob(img, layer.digest, layer.size) as blob:
                if how == "read":
                    while chunk := blob.read(256 * 1024):
                        digest.update(chunk)
                else:
                    with open(tmp_path / "layer", "wb") as out:
                        assert blob.copy_to(out) == layer.size
                    digest.update((tmp_path / "layer").read_bytes())
            assert f"sha256:{digest.hexdigest()}" == layer.digest
            assert blob.bytes_read == layer.size
    assert relay.stats.cuts == 1
    assert len(relay.stats.blob_requests) >= 2


@pytest.mark.parametrize("how", ["read", "copy_to"])
def test_async_retries_resume_transparently(
    skopeo_release: SkopeoRelease, big_image: Any, relay: Relay, tmp_path: Path, how: str
) -> None:
    config = make_config(skopeo_release, tls_verify=False, retries=1)

    async def main() -> None:
        async with AsyncImageProxy(config) as proxy:
            async with await proxy.open_image(f"docker://{relay.host}/retry/big:1") as img:
                (layer,) = await proxy.get_layer_info(img)
                async with await proxy.get_blob(img, layer.digest, layer.size) as blob:
                    if how == "read":
                        data = await blob.read()
                    else:
                        with open(tmp_path / "layer", "wb") as out:
                            assert await blob.copy_to(out) == layer.size
                        data = (tmp_path / "layer").read_bytes()
                assert hashlib.sha256(data).hexdigest() == layer.digest.hex

    asyncio.run(main())
    assert relay.stats.cuts == 1
