"""The bound on metadata (ProxyConfig.max_metadata_size) with real skopeo releases.

An OCI layout holds images whose manifest is larger than the 4 MiB default (through a long
annotation, which skopeo passes through unchanged): the default refuses them without reading
them whole, and with less memory than the payload, while a raised limit opens them. Configs
and layer lists are bounded the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import tracemalloc
from dataclasses import dataclass
from typing import Any

import pytest

from conftest import make_config
from containers_image_proxy import (
    AsyncImageProxy,
    ImageProxy,
    MetadataTooLargeError,
    ProtocolError,
    ProxyConfig,
    RequestError,
)
from test_faults import OK, fake_config, fake_env  # noqa: F401 (a fixture, used by name)
from testbed.images import ImageInfo, LayoutBuilder, Layouts, make_tar
from testbed.releases import SkopeoRelease

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
DEFAULT_LIMIT = 4 * MiB


@dataclass(frozen=True)
class BigManifests:
    builder: LayoutBuilder
    over: ImageInfo  # a little over the default limit
    huge: ImageInfo  # eight times the default limit


def padded_image(builder: LayoutBuilder, tag: str, size: int, seed: int) -> ImageInfo:
    """A one-layer image whose manifest is ``size`` bytes or a little more."""
    rng = random.Random(seed)
    pad = rng.randbytes(size // 2).hex()  # random: nothing on the way can shrink it
    info = builder.add_image(
        tag, [make_tar({"etc/hostname": f"{tag}\n".encode()})], annotations={"pad": pad}
    )
    assert len(info.manifest) >= size
    return info


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> BigManifests:
    builder = LayoutBuilder(tmp_path_factory.mktemp("bigmanifest") / "oci")
    over = padded_image(builder, "over", DEFAULT_LIMIT + 1, seed=1)
    huge = padded_image(builder, "huge", 8 * DEFAULT_LIMIT, seed=2)
    return BigManifests(builder, over, huge)


def test_manifest_over_the_default_limit_is_refused_and_the_proxy_stays_usable(
    skopeo_release: SkopeoRelease, big: BigManifests, no_leaks: None
) -> None:
    with ImageProxy(make_config(skopeo_release)) as proxy:
        assert proxy.config.max_metadata_size == DEFAULT_LIMIT
        with proxy.open_image(big.builder.ref("over")) as img:
            for fetch in (proxy.fetch_manifest, proxy.fetch_manifest_raw_oci):
                with pytest.raises(MetadataTooLargeError) as caught:
                    fetch(img)
                err = caught.value
                assert isinstance(err, ProtocolError) and err.limit == DEFAULT_LIMIT
                assert str(err) == (
                    "GetManifest payload: larger than the 4194304-byte metadata limit"
                    " (ProxyConfig.max_metadata_size)"
                )
            # only that request failed: the pipe was given up, the connection is fine
            assert proxy.fetch_config(img).rootfs.diff_ids == tuple(big.over.diff_ids)


def test_raised_limit_opens_the_big_manifest(
    skopeo_release: SkopeoRelease, big: BigManifests, no_leaks: None
) -> None:
    config = make_config(skopeo_release, max_metadata_size=2 * DEFAULT_LIMIT)
    with ImageProxy(config) as proxy:
        with proxy.open_image(big.builder.ref("over")) as img:
            digest, raw = proxy.fetch_manifest_raw_oci(img)
            assert digest == big.over.manifest_digest and raw == big.over.manifest
            _, manifest = proxy.fetch_manifest(img)
            assert manifest.annotations["pad"] == big.over.manifest_json["annotations"]["pad"]
            assert len(proxy.get_layer_info(img)) == 1


def test_async_front_end_applies_the_limit(
    skopeo_release: SkopeoRelease, big: BigManifests
) -> None:
    async def main() -> None:
        async with AsyncImageProxy(make_config(skopeo_release)) as proxy:
            img = await proxy.open_image(big.builder.ref("over"))
            async with img:
                with pytest.raises(MetadataTooLargeError):
                    await proxy.fetch_manifest(img)
                config = await proxy.fetch_config(img)
                assert config.rootfs.diff_ids == tuple(big.over.diff_ids)
        config = make_config(skopeo_release, max_metadata_size=2 * DEFAULT_LIMIT)
        async with AsyncImageProxy(config) as proxy:
            img = await proxy.open_image(big.builder.ref("over"))
            async with img:
                assert (await proxy.fetch_manifest_raw_oci(img))[1] == big.over.manifest

    asyncio.run(main())


def peak_while(action: object) -> int:
    """Bytes allocated by Python at the peak of ``action()`` (which must raise)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        try:
            action()  # type: ignore[operator]
        except MetadataTooLargeError:
            pass
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_refusing_a_huge_manifest_takes_memory_bounded_by_the_limit(
    skopeo_release: SkopeoRelease, big: BigManifests
) -> None:
    payload = len(big.huge.manifest)
    with ImageProxy(make_config(skopeo_release)) as proxy:
        with proxy.open_image(big.builder.ref("huge")) as img:
            with pytest.raises(MetadataTooLargeError):
                proxy.fetch_manifest_raw_oci(img)
            refused = peak_while(lambda: proxy.fetch_manifest_raw_oci(img))
    # the measurement itself: reading the whole payload shows up in it
    config = make_config(skopeo_release, max_metadata_size=2 * payload)
    with ImageProxy(config) as proxy:
        with proxy.open_image(big.builder.ref("huge")) as img:
            whole = peak_while(lambda: proxy.fetch_manifest_raw_oci(img))
    print(f"peak: {refused / MiB:.1f} MiB refusing, {whole / MiB:.1f} MiB reading, "
          f"payload {payload / MiB:.1f} MiB")  # fmt: skip
    assert whole >= payload
    # limit + 1 bytes held, plus one read's buffer: far below the payload
    assert refused < DEFAULT_LIMIT + 2 * MiB


def test_config_over_the_limit(skopeo_release: SkopeoRelease, layouts: Layouts) -> None:
    size = len(layouts.big_config.config)  # over 1 MiB
    with ImageProxy(make_config(skopeo_release, max_metadata_size=MiB)) as proxy:
        with proxy.open_image(layouts.ref("bigconfig")) as img:
            with pytest.raises(MetadataTooLargeError, match="GetFullConfig payload"):
                proxy.fetch_config_raw(img)
            assert proxy.fetch_manifest(img)[0] == layouts.big_config.manifest_digest
    with ImageProxy(make_config(skopeo_release, max_metadata_size=size + MiB)) as proxy:
        with proxy.open_image(layouts.ref("bigconfig")) as img:
            history = proxy.fetch_config(img).history
            assert len(history) == len(layouts.big_config.config_json["history"])


def test_layer_list_over_the_limit(skopeo_release: SkopeoRelease, layouts: Layouts) -> None:
    # 300 layers: a GetLayerInfoPiped payload (1.19 and later), a GetLayerInfo reply on
    # the socket (1.11 to 1.18), or the manifest it is read from (older): all bounded
    with ImageProxy(make_config(skopeo_release, max_metadata_size=16 * 1024)) as proxy:
        with proxy.open_image(layouts.ref("manylayers")) as img:
            with pytest.raises(MetadataTooLargeError, match="16384-byte metadata limit"):
                proxy.get_layer_info(img)


def test_command_line_limit(big: BigManifests) -> None:
    from testbed.cli import cli, ok, one_line_error

    ref = big.builder.ref("over")
    proc = cli("inspect", ref)
    assert proc.returncode == 1 and proc.stdout == b""
    assert one_line_error(proc) == (
        "containers-image-proxy: GetManifest payload: larger than the 4194304-byte metadata"
        " limit (ProxyConfig.max_metadata_size)"
    )
    raised = ["--max-metadata-size", str(2 * DEFAULT_LIMIT)]
    assert ok(cli(*raised, "manifest", ref)) == big.over.manifest
    assert ok(cli("manifest", ref, *raised)) == big.over.manifest  # after the command too
    assert cli("--max-metadata-size", "100", "manifest", ref).returncode == 2


# --- what real skopeo never sends: a scripted fake peer (testbed/fake_peer.py) ---------------


def fake(*steps: Any, **fields: Any) -> ProxyConfig:
    return dataclasses.replace(fake_config(*steps), **fields)


@pytest.mark.usefixtures("fake_env")
def test_raw_blob_error_report_over_the_limit(no_leaks: None) -> None:
    # GetRawBlob's error pipe holds a well-formed report of 8 KiB (the fake peer writes the
    # same bytes into the data pipe): refused under a 4 KiB limit, decoded under the default
    report = json.dumps({"code": "other", "message": "x" * 8192})
    reply = json.dumps({"success": True, "value": len(report), "pipeid": 0})
    step = {"raw": reply, "fds": 2, "payload": report}
    errors = []
    for limit in (4096, DEFAULT_LIMIT):
        with ImageProxy(fake({"raw": OK}, step, max_metadata_size=limit)) as proxy:
            img = proxy.open_image("oci:/x:y")
            blob = proxy.get_raw_blob(img, "sha256:" + "0" * 64)
            with pytest.raises((MetadataTooLargeError, RequestError)) as caught:
                blob.read()
            blob.close()
            errors.append(caught.value)
    refused, reported = errors
    assert isinstance(refused, MetadataTooLargeError) and refused.limit == 4096
    assert "xxx" not in str(refused)
    assert isinstance(reported, RequestError) and reported.message == "x" * 8192


@pytest.mark.usefixtures("fake_env")
def test_reply_nested_50000_deep(no_leaks: None) -> None:
    deep = '{"success": true, "pipeid": 0, "value": ' + "[" * 50_000 + "]" * 50_000 + "}"
    with ImageProxy(fake_config({"raw": deep})) as proxy:
        with pytest.raises(ProtocolError, match="nested more than 256 levels"):
            proxy.open_image("oci:/x:y")


@pytest.mark.usefixtures("fake_env")
def test_layer_list_nested_deep(no_leaks: None) -> None:
    # 20,000 levels: deeper than json can decode, and still within one pipe buffer
    payload = "[" * 20_000 + "]" * 20_000
    step = {"raw": '{"success": true, "value": null, "pipeid": 7}', "fds": 1, "payload": payload}
    with ImageProxy(fake_config({"raw": OK}, step)) as proxy:
        img = proxy.open_image("oci:/x:y")
        with pytest.raises(ProtocolError, match="GetLayerInfoPiped: JSON nested"):
            proxy.get_layer_info(img)
        img._closed = True  # the fake peer has no script left for CloseImage
