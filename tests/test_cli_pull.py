"""``pull``: the OCI layout it writes is read back by skopeo (oci:) and umoci; a pull resumes
by fetching only what is missing or damaged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from testbed.cli import cli, ok, skopeo_opt
from testbed.images import (
    LayoutBuilder,
    Layouts,
    add_wasm_artifact,
    blob_path,
    convert,
    corrupt_blob,
    random_layer,
    sha256_digest,
)
from testbed.registry import Registry
from testbed.releases import SkopeoRelease

pytestmark = pytest.mark.integration

UMOCI = shutil.which("umoci")
REF_NAME = "org.opencontainers.image.ref.name"


def skopeo_inspect(release: SkopeoRelease, ref: str) -> dict[str, object]:
    out = subprocess.run(
        [*release.argv, "inspect", ref], capture_output=True, check=True, timeout=60
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def umoci_unpack(layout: Path, tag: str, bundle: Path) -> Path:
    assert UMOCI is not None
    proc = subprocess.run(
        [UMOCI, "unpack", "--rootless", "--image", f"{layout}:{tag}", str(bundle)],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return bundle / "rootfs"


def index(layout: Path) -> list[dict[str, object]]:
    manifests: list[dict[str, object]] = json.loads((layout / "index.json").read_bytes())[
        "manifests"
    ]
    return manifests


def test_pull_is_read_back_by_skopeo(
    skopeo_release: SkopeoRelease, layouts: Layouts, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    digest = ok(cli(*skopeo_opt(skopeo_release), "pull", layouts.ref("small"), f"{layout}:v1"))
    assert digest.decode().strip() == layouts.small.manifest_digest  # OCI in, same bytes out
    entries = index(layout)
    assert [(e["digest"], e["annotations"]) for e in entries] == [  # type: ignore[index]
        (layouts.small.manifest_digest, {REF_NAME: "v1"})
    ]
    assert json.loads((layout / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    seen = skopeo_inspect(skopeo_release, f"oci:{layout}:v1")
    assert seen["Digest"] == layouts.small.manifest_digest
    assert seen["Layers"] == [layer.digest for layer in layouts.small.layers]
    # nothing but blobs in blobs/: no temporary file left behind
    names = sorted(os.listdir(layout / "blobs" / "sha256"))
    expected = [layouts.small.manifest_digest, layouts.small.config_digest]
    expected += [layer.digest for layer in layouts.small.layers]
    assert names == sorted(d.split(":")[1] for d in expected)


@pytest.mark.skipif(UMOCI is None, reason="umoci is not installed")
def test_pull_is_unpacked_by_umoci(layouts: Layouts, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    ok(cli("pull", layouts.ref("small"), f"{layout}:small"))
    rootfs = umoci_unpack(layout, "small", tmp_path / "bundle")
    assert (rootfs / "etc" / "os-release").read_bytes() == b'NAME="testbed"\nVERSION_ID="1"\n'
    assert (rootfs / "etc" / "hostname").read_bytes() == b"testbed-1\n"
    assert not (rootfs / "etc" / "motd").exists()


def test_pull_resumes_fetching_only_missing_or_damaged_blobs(
    layout_builder: LayoutBuilder, tmp_path: Path
) -> None:
    image = layout_builder.add_image(
        "big", [random_layer(seed, 256 * 1024) for seed in (1, 2, 3, 4)], compression=None
    )
    layout = tmp_path / "layout"
    ok(cli("pull", layout_builder.ref("big"), f"{layout}:big"))
    paths = [blob_path(layout, layer.digest) for layer in image.layers]
    # as an interrupted pull would leave it: one blob missing, one damaged, no index entry
    paths[0].unlink()
    corrupt_blob(layout, image.layers[1].digest)
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    before = {p: p.stat().st_ino for p in paths[1:]}

    ok(cli("pull", layout_builder.ref("big"), f"{layout}:big"))
    for layer, path in zip(image.layers, paths):
        assert sha256_digest(path.read_bytes()) == layer.digest
    after = {p: p.stat().st_ino for p in paths[1:]}
    assert after[paths[1]] != before[paths[1]]  # the damaged blob was fetched again
    assert after[paths[2]] == before[paths[2]]  # intact blobs were kept, not rewritten
    assert after[paths[3]] == before[paths[3]]
    assert [e["digest"] for e in index(layout)] == [image.manifest_digest]


def test_tags_accumulate_and_a_tag_moves(layouts: Layouts, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    ok(cli("pull", layouts.ref("small"), f"{layout}:a"))
    ok(cli("pull", layouts.ref("small-uncompressed"), f"{layout}:b"))
    ok(cli("pull", layouts.ref("multiarch"), f"{layout}:a", "--override-arch", "s390x"))
    by_tag = {e["annotations"][REF_NAME]: e["digest"] for e in index(layout)}  # type: ignore[index]
    assert by_tag == {
        "a": layouts.multiarch.for_platform("s390x").manifest_digest,
        "b": layouts.small_uncompressed.manifest_digest,
    }


def test_pull_refuses_a_directory_that_is_not_a_layout(layouts: Layouts, tmp_path: Path) -> None:
    (tmp_path / "precious").write_text("not a layout")
    proc = cli("pull", layouts.ref("small"), str(tmp_path))
    assert proc.returncode == 2
    assert b"not an OCI image layout" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["precious"]


def test_pull_an_artifact(layout_builder: LayoutBuilder, tmp_path: Path) -> None:
    wasm, manifest = add_wasm_artifact(layout_builder, "module")
    layout = tmp_path / "layout"
    ok(cli("pull", layout_builder.ref("module"), f"{layout}:wasm"))
    (entry,) = index(layout)
    assert entry["artifactType"] == manifest["artifactType"]
    assert blob_path(layout, sha256_digest(wasm)).read_bytes() == wasm


@pytest.mark.skipif(UMOCI is None, reason="umoci is not installed")
def test_pull_a_docker_image_from_a_registry(
    skopeo_release: SkopeoRelease, layouts: Layouts, registry_plain: Registry, tmp_path: Path
) -> None:
    """A Docker schema 2 image: skopeo converts manifest and config to OCI; the layout
    holds the converted manifest, under the digest of its bytes, and the converted config."""
    repo = f"cli/docker-{skopeo_release.name}:1"
    convert(
        skopeo_release.argv,
        layouts.ref("small"),
        registry_plain.ref(repo),
        ["--format", "v2s2", *registry_plain.dest_args()],
    )
    layout = tmp_path / "layout"
    opt = [*skopeo_opt(skopeo_release), "--tls-verify=false"]
    digest = ok(cli(*opt, "pull", registry_plain.ref(repo), str(layout))).decode().strip()
    stored = json.loads(ok(cli(*opt, "inspect", "--json", registry_plain.ref(repo))))["digest"]
    assert digest != stored  # converted: the bytes written are not the registry's
    (entry,) = index(layout)
    assert entry["digest"] == digest
    assert entry["annotations"] == {REF_NAME: "1"}  # the source's tag by default
    assert skopeo_inspect(skopeo_release, f"oci:{layout}:1")["Digest"] == digest
    rootfs = umoci_unpack(layout, "1", tmp_path / "bundle")
    assert (rootfs / "etc" / "hostname").read_bytes() == b"testbed-1\n"
