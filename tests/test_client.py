"""The client against real skopeo releases and real image layouts.

Tests taking ``front`` run on both front ends (``testbed.fronts``: the asyncio proxy driven
from the same blocking test body); the others are about the sync front end itself (a file
object, threads).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import threading
from pathlib import Path
from typing import Any, Dict, List

import pytest

from conftest import make_config
from containers_image_proxy import (
    BlobReader,
    BlobVerificationError,
    ConfigurationError,
    Feature,
    ImageNotFoundError,
    ImageProxy,
    ProxyClosedError,
    ProxyConfig,
    ProxyTooOldError,
    RequestError,
    SkopeoNotFoundError,
)
from testbed.fronts import open_proxy
from testbed.images import (
    MULTIARCH_PLATFORMS,
    LayoutBuilder,
    Layouts,
    convert,
    corrupt_blob,
    make_tar,
    truncate_blob,
)
from testbed.releases import SkopeoRelease

pytestmark = pytest.mark.integration


def blob_bytes(layouts: Layouts, digest: str) -> bytes:
    return (layouts.path / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def test_version_and_features(
    front: str, config: ProxyConfig, skopeo_release: SkopeoRelease
) -> None:
    with open_proxy(front, config) as proxy:
        assert proxy.protocol_version == skopeo_release.protocol
        assert proxy.supports(Feature.RAW_BLOB) is skopeo_release.has_protocol("0.2.8")
        assert proxy.supports("OpenImageOptional") is skopeo_release.has_protocol("0.2.4")
        assert f"protocol {skopeo_release.protocol}" in repr(proxy)


def test_manifest_config_and_blobs(
    front: str, config: ProxyConfig, layouts: Layouts, no_leaks: None
) -> None:
    expected = layouts.small
    with open_proxy(front, config) as proxy, proxy.open_image(layouts.ref("small")) as img:
        digest, raw = proxy.fetch_manifest_raw_oci(img)
        assert digest == expected.manifest_digest
        assert raw == expected.manifest
        digest2, manifest = proxy.fetch_manifest(img)
        assert digest2 == digest and manifest.config.digest == expected.config_digest
        # GetFullConfig re-serialises the config: equal as JSON, not byte for byte
        assert json.loads(proxy.fetch_config_raw(img)) == json.loads(expected.config)
        cfg = proxy.fetch_config(img)
        assert list(cfg.rootfs.diff_ids) == expected.diff_ids
        assert cfg.config is not None and cfg.config.cmd == ("/bin/hello",)
        infos = proxy.get_layer_info(img)
        assert [(i.digest, i.size, i.media_type) for i in infos] == [
            (layer.digest, layer.size, layer.media_type) for layer in expected.layers
        ]
        for layer, desc in zip(expected.layers, manifest.layers):
            with proxy.get_descriptor(img, desc) as blob:
                if front == "sync":
                    assert isinstance(blob, io.BufferedIOBase) and blob.readable()
                assert blob.read() == layer.blob
            with proxy.get_blob(img, str(layer.digest), layer.size) as blob:
                out = io.BytesIO()
                shutil.copyfileobj(blob, out, 1000)  # many small reads
                assert out.getvalue() == layer.blob
                assert blob.bytes_read == layer.size


def test_tarfile_streams_an_uncompressed_layer(config: ProxyConfig, layouts: Layouts) -> None:
    layer = layouts.small_uncompressed.layers[1]
    with ImageProxy(config) as proxy, proxy.open_image(layouts.ref("small-uncompressed")) as img:
        with proxy.get_blob(img, layer.digest, layer.size) as blob:
            names = []
            with tarfile.open(fileobj=blob, mode="r|*") as tar:
                for member in tar:
                    names.append(member.name)
        expected = tarfile.open(fileobj=io.BytesIO(layer.blob)).getnames()
        assert names == expected and names


def test_big_config_and_many_layers(front: str, config: ProxyConfig, layouts: Layouts) -> None:
    """Payloads far over the 64 KiB pipe buffer: FinishPipe must be sent while draining."""
    with open_proxy(front, config) as proxy:
        with proxy.open_image(layouts.ref("bigconfig")) as img:
            raw = proxy.fetch_config_raw(img)
            assert len(raw) > 1024 * 1024
            assert json.loads(raw) == json.loads(layouts.big_config.config)
        with proxy.open_image(layouts.ref("manylayers")) as img:
            infos = proxy.get_layer_info(img)
            assert len(infos) == 300
            assert [i.digest for i in infos] == [
                layer.digest for layer in layouts.many_layers.layers
            ]
            assert len(proxy.fetch_config(img).rootfs.diff_ids) == 300


@pytest.mark.parametrize("platform", MULTIARCH_PLATFORMS, ids=lambda p: "/".join(filter(None, p)))
def test_manifest_list_with_override_arch(
    front: str, skopeo_release: SkopeoRelease, layouts: Layouts, platform: Any
) -> None:
    arch, variant = platform
    config = make_config(skopeo_release, override_arch=arch, override_variant=variant)
    want = layouts.multiarch.for_platform(arch, variant=variant)
    with open_proxy(front, config) as proxy, proxy.open_image(layouts.ref("multiarch")) as img:
        digest, _ = proxy.fetch_manifest(img)
        assert digest == want.manifest_digest
        assert proxy.fetch_config(img).architecture == arch


def test_other_transports(
    front: str, config: ProxyConfig, layouts: Layouts, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("transports")
    src = layouts.ref("small")
    refs = [
        convert(config.skopeo, src, f"oci-archive:{tmp}/img.tar:small"),
        convert(config.skopeo, src, f"docker-archive:{tmp}/d.tar:example/img:small"),
        convert(config.skopeo, src, f"dir:{tmp}/dir"),
    ]
    with open_proxy(front, config) as proxy:
        for ref in refs:
            with proxy.open_image(ref) as img:
                cfg = proxy.fetch_config(img)
                assert list(cfg.rootfs.diff_ids) == layouts.small.diff_ids, ref
                for info in proxy.get_layer_info(img):
                    with proxy.get_descriptor(img, info) as blob:
                        data = blob.read()
                    assert hashlib.sha256(data).hexdigest() == info.digest.hex, ref


def test_open_image_optional(
    front: str, config: ProxyConfig, layouts: Layouts, tmp_path: Path
) -> None:
    with open_proxy(front, config) as proxy:
        assert proxy.open_image_optional(layouts.ref("no-such-tag")) is None
        img = proxy.open_image_optional(layouts.ref("small"))
        assert img is not None
        proxy.close_image(img)
        # a layout directory that is not there is a missing image, on every release
        assert proxy.open_image_optional(f"oci:{tmp_path}/missing-layout:x") is None
        with pytest.raises(ImageNotFoundError):
            proxy.open_image(f"oci:{tmp_path}/missing-layout:x")


def test_many_open_close_cycles(
    front: str, config: ProxyConfig, layouts: Layouts, no_leaks: None
) -> None:
    with open_proxy(front, config) as proxy:
        for _ in range(200):
            with proxy.open_image(layouts.ref("small")) as img:
                proxy.fetch_manifest_raw_oci(img)


def test_abandoning_streams_midway(
    front: str, config: ProxyConfig, layouts: Layouts, no_leaks: None
) -> None:
    layer = layouts.small.layers[1]
    with open_proxy(front, config) as proxy, proxy.open_image(layouts.ref("small")) as img:
        for _ in range(100):
            blob = proxy.get_blob(img, layer.digest, layer.size)
            assert len(blob.read(10)) == 10
            blob.close()
        # the proxy still serves, and whole reads still verify
        with proxy.get_blob(img, layer.digest, layer.size) as blob:
            assert blob.read() == layer.blob


def test_several_streams_open_at_once(front: str, config: ProxyConfig, layouts: Layouts) -> None:
    with open_proxy(front, config) as proxy, proxy.open_image(layouts.ref("small")) as img:
        readers = [proxy.get_blob(img, layer.digest, layer.size) for layer in layouts.small.layers]
        # interleave reads across all of them
        parts: List[List[bytes]] = [[] for _ in readers]
        while readers and any(not r.closed for r in readers):
            for i, r in enumerate(readers):
                if not r.closed:
                    chunk = r.read(4096)
                    if chunk:
                        parts[i].append(chunk)
                    else:
                        r.close()
        for layer, got in zip(layouts.small.layers, parts):
            assert b"".join(got) == layer.blob


def test_threads_share_one_proxy(config: ProxyConfig, layouts: Layouts, no_leaks: None) -> None:
    errors: List[BaseException] = []
    layers = layouts.small.layers + layouts.small_uncompressed.layers
    with ImageProxy(config) as proxy:
        small = proxy.open_image(layouts.ref("small"))
        raw = proxy.open_image(layouts.ref("small-uncompressed"))

        def work(n: int) -> None:
            try:
                for i in range(20):
                    layer = layers[(n + i) % len(layers)]
                    img = small if layer in layouts.small.layers else raw
                    if i % 5 == 4:
                        proxy.fetch_config(img)
                    with proxy.get_blob(img, layer.digest, layer.size) as blob:
                        assert blob.read() == layer.blob
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        proxy.close_image(small)
        proxy.close_image(raw)
    assert errors == []


def test_proxy_outlives_the_thread_that_started_it(config: ProxyConfig, layouts: Layouts) -> None:
    box: Dict[str, ImageProxy] = {}
    t = threading.Thread(target=lambda: box.setdefault("p", ImageProxy(config)))
    t.start()
    t.join()
    with box["p"] as proxy, proxy.open_image(layouts.ref("small")) as img:
        assert proxy.fetch_manifest(img)[0] == layouts.small.manifest_digest


# --- bad input -------------------------------------------------------------------------


def test_missing_skopeo(front: str, tmp_path: Path, no_leaks: None) -> None:
    with pytest.raises(SkopeoNotFoundError, match="install skopeo"):
        open_proxy(front, ProxyConfig(skopeo=(str(tmp_path / "nope"),)))


def test_too_old_skopeo(front: str, tmp_path: Path, no_leaks: None) -> None:
    # a wrapper that answers Initialize with an old version: the one way to get a 0.2.2 peer
    fake = tmp_path / "old-skopeo"
    fake.write_text(
        "#!/usr/bin/env python3\n"
        "import socket, json\n"
        "s = socket.socket(fileno=0)\n"
        "s.recv(4096)\n"
        "s.send(json.dumps({'success': True, 'value': '0.2.2', 'pipeid': 0}).encode())\n"
        "s.recv(4096)\n"
    )
    fake.chmod(0o755)
    with pytest.raises(ProxyTooOldError, match="0.2.2"):
        open_proxy(front, ProxyConfig(skopeo=(str(fake),)))


def test_bad_references(front: str, config: ProxyConfig, no_leaks: None) -> None:
    with open_proxy(front, config) as proxy:
        for ref in ("nosuch://x", "busybox", "docker:busybox", ""):
            with pytest.raises(ConfigurationError):
                proxy.open_image(ref)
        with pytest.raises(RequestError):
            proxy.open_image("docker://UPPER/Case:tag")


def test_bad_digests_sizes_and_unknown_blobs(
    front: str, config: ProxyConfig, layouts: Layouts, no_leaks: None
) -> None:
    layer = layouts.small.layers[0]
    with open_proxy(front, config) as proxy, proxy.open_image(layouts.ref("small")) as img:
        for bad in ("sha256:xyz", "md5:" + "0" * 32, "sha256:" + "A" * 64):
            with pytest.raises(ConfigurationError):
                proxy.get_blob(img, bad, 1)
        with pytest.raises(BlobVerificationError, match="expected"):
            proxy.get_blob(img, layer.digest, layer.size + 1)
        with pytest.raises(RequestError):
            proxy.get_blob(img, "sha256:" + "0" * 64, 10)
        # still usable
        with proxy.get_blob(img, layer.digest, layer.size) as blob:
            assert blob.read() == layer.blob


def test_use_after_close(front: str, config: ProxyConfig, layouts: Layouts) -> None:
    proxy = open_proxy(front, config)
    img = proxy.open_image(layouts.ref("small"))
    proxy.close_image(img)
    with pytest.raises(ConfigurationError, match="closed"):
        proxy.fetch_manifest(img)
    other = proxy.open_image(layouts.ref("small"))
    proxy.close()
    proxy.close()  # idempotent
    with pytest.raises(ProxyClosedError):
        proxy.open_image(layouts.ref("small"))
    with pytest.raises(ProxyClosedError):
        proxy.fetch_manifest(other)
    with (
        open_proxy(front, config) as second,
        pytest.raises(ConfigurationError, match="another proxy"),
    ):
        second.fetch_manifest(other)


@pytest.mark.parametrize("damage", ["corrupt", "truncate"])
def test_damaged_blobs_fail_verification(
    front: str, config: ProxyConfig, layout_builder: LayoutBuilder, damage: str, no_leaks: None
) -> None:
    image = layout_builder.add_image(
        "t", [make_tar({"a": b"x" * 5000}), make_tar({"b": b"y" * 100000})]
    )
    layer = image.layers[1]
    if damage == "corrupt":
        corrupt_blob(layout_builder.path, layer.digest)
    else:
        truncate_blob(layout_builder.path, layer.digest)
    with open_proxy(front, config) as proxy, proxy.open_image(layout_builder.ref("t")) as img:
        with pytest.raises(BlobVerificationError):
            with proxy.get_blob(img, layer.digest, layer.size) as blob:
                blob.read()
        # the good layer still comes through
        good = image.layers[0]
        with proxy.get_blob(img, good.digest, good.size) as blob:
            assert blob.read() == good.blob


def test_raw_blob(
    front: str, config: ProxyConfig, skopeo_release: SkopeoRelease, layouts: Layouts
) -> None:
    layer = layouts.small.layers[1]
    with open_proxy(front, config) as proxy, proxy.open_image(layouts.ref("small")) as img:
        if not skopeo_release.has_protocol("0.2.8"):
            with pytest.raises(ProxyTooOldError, match="0.2.8"):
                proxy.get_raw_blob(img, layer.digest)
            return
        with proxy.get_raw_blob(img, layer.digest) as blob:
            assert blob.size == layer.size
            assert isinstance(blob, BlobReader) is (front == "sync")
            assert blob.read() == layer.blob
        with proxy.get_raw_blob(img, layer.digest, layer.size, verify=True) as blob:
            assert blob.read() == layer.blob


def test_fetch_manifest_json_roundtrip(front: str, config: ProxyConfig, layouts: Layouts) -> None:
    with open_proxy(front, config) as proxy, proxy.open_image(layouts.ref("small")) as img:
        _, raw = proxy.fetch_manifest_raw_oci(img)
        _, manifest = proxy.fetch_manifest(img)
        assert manifest.to_json() == json.loads(raw)


def test_copy_to_a_file(
    front: str, config: ProxyConfig, skopeo_release: SkopeoRelease, layouts: Layouts, tmp_path: Path
) -> None:
    """copy_to splices where nothing needs to see the bytes, and verifies either way."""
    layer = layouts.small.layers[1]
    with open_proxy(front, config) as proxy, proxy.open_image(layouts.ref("small")) as img:
        with proxy.get_blob(img, layer.digest, layer.size) as blob:
            assert blob.read(10) == layer.blob[:10]
            with open(tmp_path / "rest", "wb") as out:
                assert blob.copy_to(out) == layer.size - 10
        assert (tmp_path / "rest").read_bytes() == layer.blob[10:]
        if skopeo_release.has_protocol("0.2.8"):
            with proxy.get_raw_blob(img, layer.digest, layer.size) as blob:
                fd = os.open(tmp_path / "raw", os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    assert blob.copy_to(fd) == layer.size
                finally:
                    os.close(fd)
            assert (tmp_path / "raw").read_bytes() == layer.blob


def test_copy_to_verifies(
    front: str, config: ProxyConfig, layout_builder: LayoutBuilder, tmp_path: Path, no_leaks: None
) -> None:
    image = layout_builder.add_image("t", [make_tar({"b": b"y" * 200000})])
    layer = image.layers[0]
    corrupt_blob(layout_builder.path, layer.digest)
    with open_proxy(front, config) as proxy, proxy.open_image(layout_builder.ref("t")) as img:
        with pytest.raises(BlobVerificationError):
            with proxy.get_blob(img, layer.digest, layer.size) as blob:
                with open(tmp_path / "out", "wb") as out:
                    blob.copy_to(out)
