"""Closing a proxy leaves nothing behind: images still open are closed before Shutdown.

skopeo 1.9.3 extracts an ``oci-archive:`` image into a temporary directory when it is
opened and removes it only when the image is closed; an image still open at Shutdown left
it there for good. skopeo's global ``--tmpdir`` (the proxy's argv prefix takes it) points
the extraction at a directory of the test's own, so that nothing else writes there.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from containers_image_proxy import (
    AsyncImageProxy,
    AsyncProxyPool,
    ImageProxy,
    ProxyConfig,
    ProxyExitedError,
    ProxyPool,
)
from testbed.fronts import open_proxy
from testbed.images import Layouts, convert
from testbed.releases import SYSTEM_SKOPEO, SkopeoRelease

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, layouts: Layouts) -> str:
    path = tmp_path_factory.mktemp("archive") / "image.tar"
    return convert([str(SYSTEM_SKOPEO)], layouts.ref("small"), f"oci-archive:{path}:small")


def private_tmp(release: SkopeoRelease, tmp: Path) -> ProxyConfig:
    tmp.mkdir()
    return ProxyConfig(skopeo=(*release.argv, "--tmpdir", str(tmp)))


def test_sync_proxy(
    no_leaks: None, skopeo_release: SkopeoRelease, archive: str, tmp_path: Path
) -> None:
    config = private_tmp(skopeo_release, tmp_path / "tmp")
    proxy = ImageProxy(config)
    left_open = proxy.open_image(archive)
    optional = proxy.open_image_optional(archive)
    assert optional is not None
    closed = proxy.open_image(archive)
    proxy.close_image(closed)
    proxy.fetch_manifest(left_open)
    # the extracted copies are there while the images are open (this is what is checked)
    assert len(os.listdir(tmp_path / "tmp")) == 2
    proxy.close()
    assert os.listdir(tmp_path / "tmp") == []
    proxy.close_image(left_open)  # harmless after the proxy is closed


def test_async_proxy(
    no_leaks: None, skopeo_release: SkopeoRelease, archive: str, tmp_path: Path
) -> None:
    config = private_tmp(skopeo_release, tmp_path / "tmp")

    async def main() -> None:
        async with AsyncImageProxy(config) as proxy:
            await proxy.open_image(archive)
            await proxy.open_image_optional(archive)
            assert len(os.listdir(tmp_path / "tmp")) == 2

    asyncio.run(main())
    assert os.listdir(tmp_path / "tmp") == []


def test_pool(no_leaks: None, skopeo_release: SkopeoRelease, archive: str, tmp_path: Path) -> None:
    config = private_tmp(skopeo_release, tmp_path / "tmp")
    with ProxyPool(config, size=2) as pool:
        for _ in range(4):
            pool.open_image(archive)
        assert len(os.listdir(tmp_path / "tmp")) == 4
    assert os.listdir(tmp_path / "tmp") == []


def test_async_pool(
    no_leaks: None, skopeo_release: SkopeoRelease, archive: str, tmp_path: Path
) -> None:
    config = private_tmp(skopeo_release, tmp_path / "tmp")

    async def main() -> None:
        async with AsyncProxyPool(config, size=2) as pool:
            await asyncio.gather(*(pool.open_image(archive) for _ in range(4)))
            assert len(os.listdir(tmp_path / "tmp")) == 4

    asyncio.run(main())
    assert os.listdir(tmp_path / "tmp") == []


def test_skopeo_gone_with_images_open_is_reported(
    no_leaks: None, skopeo_release: SkopeoRelease, archive: str, tmp_path: Path, front: str
) -> None:
    # closing the images meets the dead skopeo: close() still says what became of it
    config = private_tmp(skopeo_release, tmp_path / "tmp")
    with open_proxy(front, config) as proxy:
        proxy.open_image(archive)
        os.kill(proxy._process.pid, signal.SIGKILL)
        with pytest.raises(ProxyExitedError) as caught:
            proxy.close()
        assert caught.value.returncode == -signal.SIGKILL
        proxy.close()  # twice is harmless
