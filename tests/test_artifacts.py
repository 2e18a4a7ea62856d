"""OCI artifacts (a config that is not an image config, layers that are not tar) through the
library: fetch_config_raw gives the config blob as stored, fetch_config says it is not an
image, on every release and on both front ends."""

from __future__ import annotations

import asyncio
import json

import pytest

from conftest import make_config
from containers_image_proxy import AsyncImageProxy, ImageProxy, RequestError
from testbed.images import LayoutBuilder, add_wasm_artifact
from testbed.releases import SkopeoRelease

pytestmark = pytest.mark.integration


def test_config_of_an_artifact(
    skopeo_release: SkopeoRelease, layout_builder: LayoutBuilder
) -> None:
    _, manifest = add_wasm_artifact(layout_builder, "wasm")
    stored = (layout_builder.blob_path(manifest["config"]["digest"])).read_bytes()
    ref = layout_builder.ref("wasm")
    with ImageProxy(make_config(skopeo_release)) as proxy, proxy.open_image(ref) as img:
        assert proxy.fetch_config_raw(img) == stored
        assert json.loads(stored) == {"wasm": True}
        with pytest.raises(RequestError, match="OCI artifact.*fetch_config_raw"):
            proxy.fetch_config(img)

    async def main() -> bytes:
        async with AsyncImageProxy(make_config(skopeo_release)) as proxy:
            img = await proxy.open_image(ref)
            async with img:
                with pytest.raises(RequestError, match="not a container image"):
                    await proxy.fetch_config(img)
                return await proxy.fetch_config_raw(img)

    assert asyncio.run(main()) == stored


def test_config_of_an_artifact_over_the_metadata_limit(
    skopeo_release: SkopeoRelease, layout_builder: LayoutBuilder
) -> None:
    from containers_image_proxy import MetadataTooLargeError
    from testbed.images import canonical_json

    config = layout_builder.add_blob(
        canonical_json({"blob": "x" * 8192}), "application/vnd.example.big.config+json"
    )
    layer = layout_builder.add_blob(b"\0asm", "application/wasm")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.big",
        "config": config,
        "layers": [layer],
    }
    desc = layout_builder.add_blob(canonical_json(manifest), manifest["mediaType"])
    layout_builder.tag("big", desc)
    cfg = make_config(skopeo_release, max_metadata_size=4096)
    with ImageProxy(cfg) as proxy, proxy.open_image(layout_builder.ref("big")) as img:
        with pytest.raises(MetadataTooLargeError, match="4096"):
            proxy.fetch_config_raw(img)
