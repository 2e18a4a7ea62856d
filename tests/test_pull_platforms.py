"""``pull`` of a multi-platform image from a registry: every instance (the index kept as
stored, so the tag names the source's own digest), a subset (an index of its own), read back
by skopeo with each platform; a Docker manifest list; a platform the image does not have."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Optional

import pytest

from conftest import make_config
from containers_image_proxy import ImageNotFoundError, ImageProxy, ProxyPool, pull
from testbed.images import MULTIARCH_PLATFORMS, Layouts
from testbed.registry import Registry
from testbed.releases import SkopeoRelease

pytestmark = pytest.mark.integration
REF_NAME = "org.opencontainers.image.ref.name"


@pytest.fixture(scope="module")
def multi(layouts: Layouts, registry_plain: Registry) -> tuple[str, str]:
    """The test bed's four-platform index in the registry, as OCI and as a Docker list."""
    oci = registry_plain.push(layouts.ref("multiarch"), "pull/multi:1", extra_args=["--all"])
    assert oci == layouts.multiarch.digest
    registry_plain.push(
        layouts.ref("multiarch"), "pull/list:1", extra_args=["--all", "--format", "v2s2"]
    )
    return registry_plain.ref("pull/multi:1"), registry_plain.ref("pull/list:1")


def skopeo_top_digest(release: SkopeoRelease, ref: str) -> str:
    """``skopeo inspect``'s Digest: that of the top-level manifest (the index)."""
    out = subprocess.run([*release.argv, "inspect", ref], capture_output=True, check=True).stdout
    digest: str = json.loads(out)["Digest"]
    return digest


def instance_digest(release: SkopeoRelease, ref: str, arch: str, variant: Optional[str]) -> str:
    """The instance skopeo selects in ``ref`` for linux/``arch``/``variant``."""
    config = make_config(release, override_arch=arch, override_variant=variant)
    with ImageProxy(config) as proxy, proxy.open_image(ref) as img:
        return str(proxy.fetch_manifest(img)[0])


def test_pull_all_keeps_the_index_as_stored(
    skopeo_release: SkopeoRelease, layouts: Layouts, multi: tuple[str, str], tmp_path: Path
) -> None:
    dest = tmp_path / "mirror"
    with ProxyPool(make_config(skopeo_release, tls_verify=False), size=2) as pool:
        digest = pull(pool, multi[0], str(dest), tag="multi", platforms="all")
    assert digest == layouts.multiarch.digest  # the source's own index digest
    stored = (dest / "blobs/sha256" / digest.split(":")[1]).read_bytes()
    index = json.loads(stored)
    assert len(index["manifests"]) == len(MULTIARCH_PLATFORMS)
    assert skopeo_top_digest(skopeo_release, f"oci:{dest}:multi") == digest
    for (arch, variant), image in zip(MULTIARCH_PLATFORMS, layouts.multiarch.images):
        # skopeo resolves the index in the layout to each platform's instance, unchanged
        got = instance_digest(skopeo_release, f"oci:{dest}:multi", arch, variant)
        assert got == image.manifest_digest


def test_pull_a_subset_writes_an_index_of_its_own(
    skopeo_release: SkopeoRelease, layouts: Layouts, multi: tuple[str, str], tmp_path: Path
) -> None:
    dest = tmp_path / "mirror"
    with ImageProxy(make_config(skopeo_release, tls_verify=False)) as proxy:
        digest = pull(proxy, multi[0], str(dest), platforms=["linux/arm64/v8", "linux/s390x"])
    manifests = json.loads((dest / "blobs/sha256" / digest.split(":")[1]).read_bytes())["manifests"]
    platforms = [
        (m["platform"]["architecture"], m["platform"].get("variant")) for m in manifests
    ]
    assert platforms == [("arm64", "v8"), ("s390x", None)]
    by_arch = {img.architecture: img for img in layouts.multiarch.images}
    assert [m["digest"] for m in manifests] == [
        by_arch["arm64"].manifest_digest,
        by_arch["s390x"].manifest_digest,
    ]
    tags = {
        m["annotations"][REF_NAME]: m["digest"]
        for m in json.loads((dest / "index.json").read_bytes())["manifests"]
    }
    assert tags == {"1": digest}
    # the amd64 instance's layers were never fetched
    amd64 = by_arch["amd64"]
    assert not (dest / "blobs/sha256" / amd64.layers[1].digest.split(":")[1]).exists()


def test_pull_all_of_a_docker_list_writes_an_oci_index_of_the_conversions(
    skopeo_release: SkopeoRelease, multi: tuple[str, str], tmp_path: Path
) -> None:
    dest = tmp_path / "mirror"
    with ImageProxy(make_config(skopeo_release, tls_verify=False)) as proxy:
        found = proxy.fetch_index(multi[1])
        assert found is not None
        digest = pull(proxy, multi[1], str(dest), platforms="all")
    # converted instances cannot keep the list's digests: an OCI index over what was written
    assert digest != found[0]
    index = json.loads((dest / "blobs/sha256" / digest.split(":")[1]).read_bytes())
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    for m in index["manifests"]:
        blob = json.loads((dest / "blobs/sha256" / m["digest"].split(":")[1]).read_bytes())
        assert blob["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    got = instance_digest(skopeo_release, f"oci:{dest}:1", "s390x", None)
    assert got in {m["digest"] for m in index["manifests"]}


def test_a_platform_the_image_lacks_is_not_found(
    skopeo_release: SkopeoRelease, multi: tuple[str, str], tmp_path: Path
) -> None:
    with ImageProxy(make_config(skopeo_release, tls_verify=False)) as proxy:
        with pytest.raises(ImageNotFoundError, match="riscv64"):
            pull(proxy, multi[0], str(tmp_path / "m"), platforms=["linux/riscv64"])
    assert not (tmp_path / "m" / "index.json").exists()
