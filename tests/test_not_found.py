"""ImageNotFoundError: "the image is not there" on every transport and every skopeo release,
and "could not look" staying a plain RequestError. The texts asserted here are the ones
each release really sends (docs/transports.md lists them)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import make_config
from containers_image_proxy import (
    AsyncImageProxy,
    ImageNotFoundError,
    ImageProxy,
    ProxyConfig,
    RequestError,
)
from containers_image_proxy._core.notfound import image_not_found
from testbed._run import run
from testbed.cli import cli, skopeo_opt
from testbed.images import LayoutBuilder, convert, small_image
from testbed.registry import Registry
from testbed.releases import SYSTEM_SKOPEO, SkopeoRelease

pytestmark = pytest.mark.integration

STORAGE_ENV = "CONTAINERS_STORAGE_CONF"
NOWHERE = "sha256:" + "0" * 64


@dataclass(frozen=True)
class Bed:
    """One small image in every transport, and the registry holding it."""

    root: Path
    layout: Path
    registry: Registry
    storage_conf: Path


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory, registry_plain: Registry) -> Bed:
    root = tmp_path_factory.mktemp("notfound")
    builder = LayoutBuilder(root / "oci")
    small_image(builder, "small")
    system = [str(SYSTEM_SKOPEO)]
    convert(system, builder.ref("small"), f"oci-archive:{root}/image.tar:small")
    convert(system, builder.ref("small"), f"docker-archive:{root}/docker.tar:example/img:tag")
    convert(system, builder.ref("small"), f"dir:{root}/dir")
    conf = root / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n'
    )
    run(
        [*system, "--insecure-policy", "copy", builder.ref("small"), "containers-storage:x/s:1"],
        env={STORAGE_ENV: str(conf)},
    )
    registry_plain.push(builder.ref("small"), "notfound/small:1")
    return Bed(root, builder.path, registry_plain, conf)


@pytest.fixture
def store_env(bed: Bed, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(STORAGE_ENV, str(bed.storage_conf))
    yield


def missing_ref(bed: Bed, case: str) -> str:
    r = bed.root
    return {
        "registry-repository": bed.registry.ref("notfound/nope:1"),
        "registry-tag": bed.registry.ref("notfound/small:nope"),
        "registry-digest": bed.registry.ref(f"notfound/small@{NOWHERE}"),
        "oci-tag": f"oci:{bed.layout}:nope",
        "oci-directory": f"oci:{r}/no-layout:small",
        "oci-directory-untagged": f"oci:{r}/no-layout",
        "oci-archive-file": f"oci-archive:{r}/no.tar:small",
        "oci-archive-tag": f"oci-archive:{r}/image.tar:nope",
        "docker-archive-file": f"docker-archive:{r}/no.tar",
        "docker-archive-tag": f"docker-archive:{r}/docker.tar:example/img:nope",
        "docker-archive-index": f"docker-archive:{r}/docker.tar:@5",
        "dir-directory": f"dir:{r}/no-dir",
        "storage-tag": "containers-storage:x/s:nope",
        "storage-name": "containers-storage:x/none:1",
        "storage-id": "containers-storage:@" + "0" * 64,
    }[case]


# What each release says: (1.9.3, 1.18, 1.22); one text when they agree.
MISSING_TEXT: dict[str, tuple[str, ...]] = {
    "registry-repository": ("manifest unknown",),
    "registry-tag": ("manifest unknown",),
    "registry-digest": ("manifest unknown",),
    "oci-tag": ('no descriptor found for reference "nope"',),
    "oci-directory": ("no-layout/index.json: no such file or directory",),
    "oci-directory-untagged": ("no-layout/index.json: no such file or directory",),
    "oci-archive-file": (
        "creating temp directory: open ",
        "archive file not found",
        "archive file not found",
    ),
    "oci-archive-tag": ('no descriptor found for reference "nope"',),
    "docker-archive-file": ("no.tar: no such file or directory",),
    "docker-archive-tag": ('Tag "docker.io/example/img:nope" not found',),
    "docker-archive-index": ("Invalid source index @5, only 1 manifest items available",),
    "dir-directory": ("no-dir/manifest.json: no such file or directory",),
    "storage-tag": ("does not resolve to an image ID",),
    "storage-name": ("does not resolve to an image ID",),
    "storage-id": ("image not known",),
}


def expected_text(release: SkopeoRelease, case: str) -> str:
    texts = MISSING_TEXT[case]
    if len(texts) == 1:
        return texts[0]
    return texts[0] if release.version < (1, 18) else texts[1 if release.version < (1, 22) else 2]


def config_for(release: SkopeoRelease, bed: Bed) -> ProxyConfig:
    # a temporary directory of the test's own: 1.9.3 leaves an empty one behind for a
    # missing oci-archive: file (it creates it before it opens the file)
    tmp = bed.root / "tmp"
    tmp.mkdir(exist_ok=True)
    return ProxyConfig(skopeo=(*release.argv, "--tmpdir", str(tmp)), tls_verify=False)


@pytest.mark.parametrize("case", sorted(MISSING_TEXT))
def test_missing_image(
    no_leaks: None, skopeo_release: SkopeoRelease, bed: Bed, store_env: None, case: str
) -> None:
    ref = missing_ref(bed, case)
    with ImageProxy(config_for(skopeo_release, bed)) as proxy:
        with pytest.raises(ImageNotFoundError) as caught:
            proxy.open_image(ref)
        assert proxy.open_image_optional(ref) is None
        # the proxy is still good for an image that is there
        with proxy.open_image(f"oci:{bed.layout}:small") as img:
            proxy.fetch_manifest(img)
    err = caught.value
    assert isinstance(err, RequestError) and not err.retryable
    assert err.reference == ref
    assert expected_text(skopeo_release, case) in err.message, err.message
    assert err.method in ("OpenImage", "GetManifest")


@pytest.mark.parametrize("case", ["oci-directory", "dir-directory", "docker-archive-tag"])
def test_missing_image_async(
    no_leaks: None, skopeo_release: SkopeoRelease, bed: Bed, case: str
) -> None:
    ref = missing_ref(bed, case)

    async def main() -> None:
        async with AsyncImageProxy(config_for(skopeo_release, bed)) as proxy:
            with pytest.raises(ImageNotFoundError):
                await proxy.open_image(ref)
            assert await proxy.open_image_optional(ref) is None

    asyncio.run(main())


def present_ref(bed: Bed, transport: str) -> str:
    r = bed.root
    return {
        "docker": bed.registry.ref("notfound/small:1"),
        "oci": f"oci:{bed.layout}:small",
        "oci-archive": f"oci-archive:{r}/image.tar:small",
        "docker-archive": f"docker-archive:{r}/docker.tar:example/img:tag",
        "dir": f"dir:{r}/dir",
        "containers-storage": "containers-storage:x/s:1",
    }[transport]


@pytest.mark.parametrize(
    "transport", ["docker", "oci", "oci-archive", "docker-archive", "dir", "containers-storage"]
)
def test_present_image_opens(
    no_leaks: None, skopeo_release: SkopeoRelease, bed: Bed, store_env: None, transport: str
) -> None:
    ref = present_ref(bed, transport)
    with ImageProxy(config_for(skopeo_release, bed)) as proxy:
        img = proxy.open_image_optional(ref)
        assert img is not None
        with img:
            _, manifest = proxy.fetch_manifest(img)
            assert manifest.layers


def test_cannot_look_is_not_missing(
    no_leaks: None, skopeo_release: SkopeoRelease, bed: Bed, tmp_path: Path
) -> None:
    # A damaged layout, an unreachable registry: open_image_optional raises, and what it
    # raises is not ImageNotFoundError.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (bad / "index.json").write_text("{not json")
    refs = [f"oci:{bad}:small", "docker://127.0.0.1:1/notfound/small:1"]
    with ImageProxy(config_for(skopeo_release, bed)) as proxy:
        for ref in refs:
            with pytest.raises(RequestError) as caught:
                proxy.open_image_optional(ref)
            assert not isinstance(caught.value, ImageNotFoundError), ref
            with pytest.raises(RequestError) as caught:
                proxy.open_image(ref)
            assert not isinstance(caught.value, ImageNotFoundError), ref


def test_lazy_transport_with_other_error_still_opens(
    no_leaks: None, skopeo_release: SkopeoRelease, tmp_path: Path
) -> None:
    # dir: with a manifest.json that is not JSON: the image is there but broken; the error
    # is the first read's, as before, not a "not found".
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    (broken / "version").write_text("Directory Transport Version: 1.1\n")
    with ImageProxy(make_config(skopeo_release)) as proxy:
        with proxy.open_image(f"dir:{broken}") as img:
            with pytest.raises(RequestError) as caught:
                proxy.fetch_manifest(img)
            assert not isinstance(caught.value, ImageNotFoundError)


def test_classifier_needs_the_transport() -> None:
    # "no such file" is "missing" only where it names what a transport opens first.
    msg = "open /srv/layout/index.json: no such file or directory"
    assert image_not_found(msg, "oci")
    assert not image_not_found(msg, "docker")
    blob = "open /srv/layout/blobs/sha256/ab: no such file or directory"
    assert not image_not_found(blob, "oci")
    assert image_not_found("reading manifest 1 in r/x: manifest unknown", "docker")
    assert not image_not_found("pinging container registry: connection refused", "docker")


@pytest.mark.parametrize("case", ["oci-directory", "dir-directory", "registry-tag"])
def test_cli_exit_codes(skopeo_release: SkopeoRelease, bed: Bed, case: str) -> None:
    ref = missing_ref(bed, case)
    opt = [*skopeo_opt(skopeo_release), "--tls-verify=false"]
    assert cli(*opt, "exists", ref).returncode == 1
    assert cli(*opt, "manifest", ref).returncode == 3
    assert cli(*opt, "exists", f"oci:{bed.layout}:small").returncode == 0
    # a broken layout is "cannot tell": 4 for exists
    assert cli(*opt, "exists", "docker://127.0.0.1:1/x/y:1").returncode == 4
