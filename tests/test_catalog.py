"""Tags and indexes: list_tags and fetch_index against the local registries and layouts,
on every skopeo release; each instance of a multi-platform image opened by digest."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from conftest import child_pids, make_config
from containers_image_proxy import (
    AsyncImageProxy,
    AsyncProxyPool,
    ConfigurationError,
    ImageIndex,
    ImageNotFoundError,
    ImageProxy,
    ProtocolError,
    ProxyConfig,
    ProxyPool,
    RequestError,
)
from containers_image_proxy._config import build_skopeo_command
from testbed.cli import cli, ok, one_line_error, skopeo_opt
from testbed.images import MEDIA_TYPE_INDEX, LayoutBuilder, Layouts, convert, small_image
from testbed.registry import Registry
from testbed.releases import SYSTEM_SKOPEO, SkopeoRelease

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Catalog:
    plain: Registry
    tls: Registry
    auth: Registry
    layouts: Layouts
    docker_archive: Path
    docker_list: str  # the digest of the Docker manifest list pushed as catalog/list:1


@pytest.fixture(scope="module")
def catalog(
    tmp_path_factory: pytest.TempPathFactory,
    layouts: Layouts,
    registry_plain: Registry,
    registry_tls: Registry,
    registry_auth: Registry,
) -> Catalog:
    for registry in (registry_plain, registry_tls, registry_auth):
        for tag in ("1", "2", "latest"):
            registry.push(layouts.ref("small"), f"catalog/small:{tag}")
    # the multi-platform index and every instance, unchanged
    digest = registry_plain.push(layouts.ref("multiarch"), "catalog/multi:1", extra_args=["--all"])
    assert digest == layouts.multiarch.digest
    # the same instances as a Docker manifest list (converted on the way in)
    docker_list = registry_plain.push(
        layouts.ref("multiarch"), "catalog/list:1", extra_args=["--all", "--format", "v2s2"]
    )
    archive = tmp_path_factory.mktemp("catalog") / "docker.tar"
    convert([str(SYSTEM_SKOPEO)], layouts.ref("small"), f"docker-archive:{archive}:example/img:tag")
    return Catalog(registry_plain, registry_tls, registry_auth, layouts, archive, docker_list)


def plain_config(release: SkopeoRelease) -> ProxyConfig:
    return make_config(release, tls_verify=False)


# --- tags ---------------------------------------------------------------------------------


def test_tags_of_a_registry_repository(
    no_leaks: None, skopeo_release: SkopeoRelease, catalog: Catalog
) -> None:
    repo = f"docker://{catalog.plain.host}/catalog/small"
    with ImageProxy(plain_config(skopeo_release)) as proxy:
        assert sorted(proxy.list_tags(repo)) == ["1", "2", "latest"]
        with pytest.raises(ImageNotFoundError) as caught:
            proxy.list_tags(f"docker://{catalog.plain.host}/catalog/none")
        assert caught.value.reference == f"docker://{catalog.plain.host}/catalog/none"
        with pytest.raises(ConfigurationError):
            proxy.list_tags(repo + ":1")
        with pytest.raises(ConfigurationError):
            proxy.list_tags(f"dir:{catalog.docker_archive}")


@pytest.mark.parametrize("how", ["cert_dir", "authfile", "auth_data", "no-ca", "wrong-password"])
def test_tags_with_the_proxy_configuration(
    no_leaks: None, skopeo_release: SkopeoRelease, catalog: Catalog, tmp_path: Path, how: str
) -> None:
    """The one-shot command reaches the registry exactly as the proxy does."""
    if how == "cert_dir":
        registry = catalog.tls
        config = make_config(skopeo_release, cert_dir=registry.cert_dir)
    elif how == "no-ca":
        registry = catalog.tls
        config = make_config(skopeo_release, cert_dir=tmp_path)
    else:
        registry = catalog.auth
        assert registry.authfile is not None and registry.auth_json is not None
        auth = {"authfile": registry.authfile} if how == "authfile" else {}
        if how == "auth_data":
            auth = {"auth_data": registry.auth_json}
        if how == "wrong-password":
            wrong = registry.auth_json.replace(
                base64.b64encode(f"{registry.user}:{registry.password}".encode()),
                base64.b64encode(f"{registry.user}:not-{registry.password}".encode()),
            )
            assert wrong != registry.auth_json
            auth = {"auth_data": wrong}
        config = make_config(skopeo_release, cert_dir=registry.cert_dir, **auth)
    repo = f"docker://{registry.host}/catalog/small"
    with ImageProxy(config) as proxy:
        if how == "no-ca":
            with pytest.raises(RequestError) as caught:
                proxy.list_tags(repo)
            assert "x509" in caught.value.message
            assert not isinstance(caught.value, ImageNotFoundError)
        elif how == "wrong-password":
            with pytest.raises(RequestError) as caught:
                proxy.list_tags(repo)
            assert not isinstance(caught.value, ImageNotFoundError)
            assert "authentication required" in caught.value.message
            assert registry.password not in str(caught.value)
        else:
            assert sorted(proxy.list_tags(repo)) == ["1", "2", "latest"]


def test_auth_data_is_not_on_the_command_line(catalog: Catalog) -> None:
    registry = catalog.auth
    assert registry.auth_json is not None
    config = ProxyConfig(auth_data=registry.auth_json, cert_dir=registry.cert_dir)
    argv = build_skopeo_command(config, ("list-tags",), auth_fd=7)
    assert "--authfile" in argv and "/proc/self/fd/7" in argv
    assert registry.password not in " ".join(argv)


def test_tags_of_an_archive_and_a_layout(
    no_leaks: None, skopeo_release: SkopeoRelease, catalog: Catalog, tmp_path: Path
) -> None:
    with ImageProxy(make_config(skopeo_release)) as proxy:
        assert proxy.list_tags(f"docker-archive:{catalog.docker_archive}") == [
            "docker.io/example/img:tag"
        ]
        with pytest.raises(ImageNotFoundError):
            proxy.list_tags(f"docker-archive:{tmp_path}/none.tar")
        assert proxy.list_tags(f"oci:{catalog.layouts.path}") == list(catalog.layouts.tags)
        with pytest.raises(ImageNotFoundError):
            proxy.list_tags(f"oci:{tmp_path}/none")
        with pytest.raises(ConfigurationError):
            proxy.list_tags(f"oci:{catalog.layouts.path}:small")


def test_layout_tags_follow_index_json(
    no_leaks: None, skopeo_release: SkopeoRelease, layout_builder: LayoutBuilder
) -> None:
    image = small_image(layout_builder, "b")
    layout_builder.tag("a", image.descriptor)
    layout_builder.tag("b", image.descriptor)  # retagging moves it to the end
    small_image(layout_builder, None, seed=3)  # untagged: not listed
    with ImageProxy(make_config(skopeo_release)) as proxy:
        assert proxy.list_tags(f"oci:{layout_builder.path}") == ["a", "b"]
    (layout_builder.path / "index.json").write_text('{"schemaVersion": 2, "manifests": 3}')
    with ImageProxy(make_config(skopeo_release)) as proxy:
        with pytest.raises(RequestError) as caught:
            proxy.list_tags(f"oci:{layout_builder.path}")
    assert "not a valid image index" in str(caught.value)


def test_tags_async_and_pools(skopeo_release: SkopeoRelease, catalog: Catalog) -> None:
    repo = f"docker://{catalog.plain.host}/catalog/small"
    config = plain_config(skopeo_release)

    async def main() -> None:
        async with AsyncImageProxy(config) as proxy:
            assert sorted(await proxy.list_tags(repo)) == ["1", "2", "latest"]
            assert await proxy.list_tags(f"oci:{catalog.layouts.path}") == list(
                catalog.layouts.tags
            )
            with pytest.raises(ImageNotFoundError):
                await proxy.list_tags(f"docker://{catalog.plain.host}/catalog/none")
        async with AsyncProxyPool(config, size=1) as pool:
            assert sorted(await pool.list_tags(repo)) == ["1", "2", "latest"]

    asyncio.run(main())
    with ProxyPool(config, size=1) as pool:
        assert sorted(pool.list_tags(repo)) == ["1", "2", "latest"]


# --- indexes --------------------------------------------------------------------------------


def check_index(found: object, catalog: Catalog) -> ImageIndex:
    expected = catalog.layouts.multiarch
    assert isinstance(found, tuple)
    digest, index = found
    assert digest == expected.digest
    assert isinstance(index, ImageIndex)
    assert index.to_json() == expected.index_json
    platforms = [
        (d.platform.architecture, d.platform.variant) for d in index.manifests if d.platform
    ]
    assert platforms == [(i.architecture, i.variant) for i in expected.images]
    return index


def test_index_from_a_registry_and_each_instance_by_digest(
    no_leaks: None, skopeo_release: SkopeoRelease, catalog: Catalog
) -> None:
    repo = f"docker://{catalog.plain.host}/catalog/multi"
    with ImageProxy(plain_config(skopeo_release)) as proxy:
        index = check_index(proxy.fetch_index(f"{repo}:1"), catalog)
        for entry in index.manifests:
            with proxy.open_image(f"{repo}@{entry.digest}") as img:
                digest, _ = proxy.fetch_manifest(img)
                assert digest == entry.digest
                config = proxy.fetch_config(img)
                assert entry.platform is not None
                assert config.architecture == entry.platform.architecture
        # the index by its own digest is the same index
        assert proxy.fetch_index(f"{repo}@{index_digest(catalog)}") is not None
        # a single image has no index
        assert proxy.fetch_index(f"docker://{catalog.plain.host}/catalog/small:1") is None
        with pytest.raises(ImageNotFoundError):
            proxy.fetch_index(f"{repo}:nope")


def index_digest(catalog: Catalog) -> str:
    return catalog.layouts.multiarch.digest


def test_index_from_a_layout_and_each_instance(
    no_leaks: None, skopeo_release: SkopeoRelease, catalog: Catalog
) -> None:
    """No release opens a layout's nested instance by digest (oci:DIR:@N, 1.18 and later,
    counts index.json's own entries): the platform is chosen with override_arch instead."""
    layouts = catalog.layouts
    config = make_config(skopeo_release)
    with ImageProxy(config) as proxy:
        index = check_index(proxy.fetch_index(layouts.ref("multiarch")), catalog)
        assert proxy.fetch_index(layouts.ref("small")) is None
        with pytest.raises(ImageNotFoundError):
            proxy.fetch_index(layouts.ref("nope"))
    for entry in index.manifests:
        assert entry.platform is not None
        chosen = replace(
            config,
            override_os=entry.platform.os,
            override_arch=entry.platform.architecture,
            override_variant=entry.platform.variant,
        )
        with ImageProxy(chosen) as proxy, proxy.open_image(layouts.ref("multiarch")) as img:
            assert proxy.fetch_manifest(img)[0] == entry.digest


def test_docker_manifest_list(
    no_leaks: None, skopeo_release: SkopeoRelease, catalog: Catalog
) -> None:
    repo = f"docker://{catalog.plain.host}/catalog/list"
    with ImageProxy(plain_config(skopeo_release)) as proxy:
        found = proxy.fetch_index(f"{repo}:1")
        assert found is not None
        digest, index = found
        assert digest == catalog.docker_list
        assert index.media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
        archs = [d.platform.architecture for d in index.manifests if d.platform]
        assert archs == [i.architecture for i in catalog.layouts.multiarch.images]
        for entry in index.manifests:
            assert entry.media_type == "application/vnd.docker.distribution.manifest.v2+json"
            with proxy.open_image(f"{repo}@{entry.digest}") as img:
                assert proxy.fetch_manifest(img)[0] == entry.digest


def test_no_release_opens_a_layout_instance_by_digest(
    no_leaks: None, skopeo_release: SkopeoRelease, catalog: Catalog
) -> None:
    """What docs/transports.md says of oci:DIR@DIGEST and oci:DIR:@DIGEST, checked."""
    layouts = catalog.layouts
    instance = layouts.multiarch.images[1].manifest_digest
    with ImageProxy(make_config(skopeo_release)) as proxy:
        # a directory named DIR@sha256 that is not there
        with pytest.raises(ImageNotFoundError) as caught:
            proxy.open_image(f"oci:{layouts.path}@{instance}")
        assert "@sha256/index.json: no such file or directory" in caught.value.message
        with pytest.raises(RequestError) as refused:
            proxy.open_image(f"oci:{layouts.path}:@{instance}")
        assert not isinstance(refused.value, ImageNotFoundError)
        text = "Invalid image @" if skopeo_release.version < (1, 18) else "Invalid source index @"
        assert text in refused.value.message


def test_index_async_and_pool(
    no_leaks: None, skopeo_release: SkopeoRelease, catalog: Catalog
) -> None:
    config = plain_config(skopeo_release)
    ref = f"docker://{catalog.plain.host}/catalog/multi:1"

    async def main() -> None:
        async with AsyncImageProxy(config) as proxy:
            check_index(await proxy.fetch_index(ref), catalog)
        async with AsyncProxyPool(config, size=1) as pool:
            check_index(await pool.fetch_index(ref), catalog)

    asyncio.run(main())
    with ProxyPool(config, size=1) as pool:
        check_index(pool.fetch_index(ref), catalog)


def test_cancelled_fetch_kills_skopeo(no_leaks: None, skopeo_release: SkopeoRelease) -> None:
    """A registry that never answers: only killing skopeo ends the cancelled call (without
    the kill, the task would wait for skopeo forever and the test time out)."""
    config = plain_config(skopeo_release)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # connections complete in the backlog; nothing is ever read
        host = f"127.0.0.1:{silent.getsockname()[1]}"

        async def main() -> None:
            async with AsyncImageProxy(config) as proxy:
                before = child_pids()
                task = asyncio.ensure_future(proxy.fetch_index(f"docker://{host}/x/y:1"))
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 30
                while not child_pids() - before:  # the one-shot skopeo is running
                    assert loop.time() < deadline, "skopeo never started"
                    await asyncio.sleep(0.01)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert child_pids() - before == set()

        asyncio.run(main())


def test_oversized_answer_is_refused(
    no_leaks: None, skopeo_release: SkopeoRelease, layout_builder: LayoutBuilder
) -> None:
    image = small_image(layout_builder, None)
    for tag, filler in (("big", 3 * 1024 * 1024), ("huge", 5 * 1024 * 1024)):
        doc = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": [{**image.descriptor, "platform": image.platform}],
            "annotations": {"filler": "x" * filler},
        }
        layout_builder.tag(tag, layout_builder.add_blob(json.dumps(doc).encode(), MEDIA_TYPE_INDEX))
    with ImageProxy(make_config(skopeo_release)) as proxy:
        # every release prints a 5 MiB index from a layout: the client's bound refuses it
        with pytest.raises(ProtocolError) as caught:
            proxy.fetch_index(layout_builder.ref("huge"))
        assert "exceeds 4194304 bytes" in str(caught.value)
        found = proxy.fetch_index(layout_builder.ref("big"))
        assert found is not None and len(found[1].annotations["filler"]) == 3 * 1024 * 1024


# --- the command line -------------------------------------------------------------------------


def test_cli_tags(skopeo_release: SkopeoRelease, catalog: Catalog, tmp_path: Path) -> None:
    opt = [*skopeo_opt(skopeo_release), "--tls-verify=false"]
    repo = f"docker://{catalog.plain.host}/catalog/small"
    assert sorted(ok(cli(*opt, "tags", repo)).decode().split("\n")[:-1]) == ["1", "2", "latest"]
    assert sorted(json.loads(ok(cli(*opt, "tags", "--json", repo)))) == ["1", "2", "latest"]
    layout = ok(cli(*opt, "tags", f"oci:{catalog.layouts.path}")).decode().splitlines()
    assert layout == list(catalog.layouts.tags)
    missing = cli(*opt, "tags", f"docker://{catalog.plain.host}/catalog/none")
    assert missing.returncode == 3
    one_line_error(missing)
    assert cli(*opt, "tags", f"oci:{tmp_path}/none").returncode == 3
    assert cli(*opt, "tags", repo + ":1").returncode == 2


def test_cli_index(skopeo_release: SkopeoRelease, catalog: Catalog) -> None:
    opt = [*skopeo_opt(skopeo_release), "--tls-verify=false"]
    ref = f"docker://{catalog.plain.host}/catalog/multi:1"
    expected = catalog.layouts.multiarch
    assert json.loads(ok(cli(*opt, "index", "--json", ref))) == expected.index_json
    lines = ok(cli(*opt, "index", ref)).decode().splitlines()
    assert lines[0] == f"Digest: {expected.digest}"
    assert lines[2].split() == ["PLATFORM", "DIGEST", "SIZE", "MEDIA", "TYPE"]
    rows = [line.split() for line in lines[3:]]
    assert [(r[0], r[1]) for r in rows] == [
        ("linux/" + i.architecture + (f"/{i.variant}" if i.variant else ""), i.manifest_digest)
        for i in expected.images
    ]
    single = cli(*opt, "index", f"docker://{catalog.plain.host}/catalog/small:1")
    assert single.returncode == 1
    assert "single manifest" in one_line_error(single)
    assert cli(*opt, "index", f"docker://{catalog.plain.host}/catalog/multi:nope").returncode == 3
