"""The library's ``pull``: an image into an OCI layout, read back by skopeo and umoci;
resumable (only the missing layer crosses the network, counted at a relay), atomic, with
progress reports; the asyncio twin; artifacts; a layout that tells the truth about
``docker-archive:`` layers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Callable

import pytest

from conftest import make_config
from containers_image_proxy import (
    AsyncImageProxy,
    ImageNotFoundError,
    ImageProxy,
    TransferProgress,
    pull,
    pull_async,
)
from testbed.images import (
    LayoutBuilder,
    add_wasm_artifact,
    convert,
    make_tar,
    random_layer,
    sha256_digest,
)
from testbed.registry import Registry
from testbed.relay import Relay
from testbed.releases import SkopeoRelease

pytestmark = pytest.mark.integration

UMOCI = shutil.which("umoci")
REF_NAME = "org.opencontainers.image.ref.name"


def tags(layout: Path) -> dict[str, str]:
    doc = json.loads((layout / "index.json").read_bytes())
    return {m["annotations"][REF_NAME]: m["digest"] for m in doc["manifests"]}


def leftovers(layout: Path) -> list[str]:
    return [p.name for p in layout.rglob(".*") if p.is_file()]


def umoci_unpack(layout: Path, tag: str, bundle: Path) -> Path:
    assert UMOCI is not None
    proc = subprocess.run(
        [UMOCI, "unpack", "--rootless", "--image", f"{layout}:{tag}", str(bundle)],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return bundle / "rootfs"


def test_pull_keeps_the_digest_and_is_read_back(
    skopeo_release: SkopeoRelease, layout_builder: LayoutBuilder, tmp_path: Path
) -> None:
    image = layout_builder.add_image("v1", [make_tar({"etc/os-release": b"ID=one\n"})])
    dest = tmp_path / "mirror"
    reports: list[TransferProgress] = []
    with ImageProxy(make_config(skopeo_release)) as proxy:
        digest = pull(
            proxy, layout_builder.ref("v1"), str(dest), tag="one", progress=reports.append
        )
    assert digest == image.manifest_digest  # an OCI manifest is kept byte for byte
    assert tags(dest) == {"one": digest}
    out = subprocess.run(
        [*skopeo_release.argv, "inspect", f"oci:{dest}:one"], capture_output=True, check=True
    ).stdout
    assert json.loads(out)["Digest"] == digest
    # every blob ends with a report of its whole size, none of them local
    finals = {r.digest: r for r in reports if r.finished}
    assert set(finals) == {image.config_digest, *(layer.digest for layer in image.layers)}
    assert all(not r.local and r.done == r.total for r in finals.values())
    assert leftovers(dest) == []


@pytest.mark.skipif(UMOCI is None, reason="umoci is not installed")
def test_pulled_layout_is_unpacked_by_umoci(
    skopeo_release: SkopeoRelease, layout_builder: LayoutBuilder, tmp_path: Path
) -> None:
    layout_builder.add_image("app", [make_tar({"srv/app": b"hello\n"})])
    with ImageProxy(make_config(skopeo_release)) as proxy:
        pull(proxy, layout_builder.ref("app"), str(tmp_path / "mirror"))
    rootfs = umoci_unpack(tmp_path / "mirror", "app", tmp_path / "bundle")
    assert (rootfs / "srv/app").read_bytes() == b"hello\n"


def test_resumed_pull_downloads_only_the_changed_layer(
    skopeo_release: SkopeoRelease,
    layout_builder: LayoutBuilder,
    registry_plain: Registry,
    tmp_path: Path,
) -> None:
    base = random_layer(7, 256 * 1024)
    v1 = layout_builder.add_image("v1", [base, make_tar({"app/version": b"1\n"})])
    v2 = layout_builder.add_image("v2", [base, make_tar({"app/version": b"2\n"})])
    registry_plain.push(layout_builder.ref("v1"), "updater/os:v1")
    registry_plain.push(layout_builder.ref("v2"), "updater/os:v2")
    dest = tmp_path / "state"
    config = make_config(skopeo_release, tls_verify=False)
    with Relay(registry_plain.host) as relay, ImageProxy(config) as proxy:
        pull(proxy, f"docker://{relay.host}/updater/os:v1", str(dest))
        first = {p.rsplit("/", 1)[1] for p in relay.stats.blob_requests}
        relay.stats.blob_requests.clear()
        reports: list[TransferProgress] = []
        digest = pull(
            proxy, f"docker://{relay.host}/updater/os:v2", str(dest), progress=reports.append
        )
        second = {p.rsplit("/", 1)[1] for p in relay.stats.blob_requests}
    assert first == {v1.config_digest, *(layer.digest for layer in v1.layers)}
    # the shared base layer is verified locally, not downloaded again
    assert second == {v2.config_digest, v2.layers[1].digest}
    local = {r.digest for r in reports if r.local and r.finished}
    assert local == {v2.layers[0].digest}
    assert tags(dest) == {"v1": v1.manifest_digest, "v2": digest}  # the other tag is kept


def test_a_failed_pull_leaves_the_layout_as_it_was(
    skopeo_release: SkopeoRelease, layout_builder: LayoutBuilder, tmp_path: Path
) -> None:
    layout_builder.add_image("old", [make_tar({"a": b"1"})])
    layout_builder.add_image("big", [random_layer(3, 4 << 20), random_layer(4, 4 << 20)])
    dest = tmp_path / "mirror"
    with ImageProxy(make_config(skopeo_release)) as proxy:
        pull(proxy, layout_builder.ref("old"), str(dest))
        before = (dest / "index.json").read_bytes()

        class Stop(Exception):
            pass

        def stop_midway(report: TransferProgress) -> None:
            # a big layer's first report comes once its temporary file exists
            if (report.total or 0) > 1 << 20 and not report.finished:
                raise Stop()

        with pytest.raises(Stop):
            pull(proxy, layout_builder.ref("big"), str(dest), progress=stop_midway)
        assert (dest / "index.json").read_bytes() == before
        assert leftovers(dest) == []
        # the proxy is still usable, and the next pull completes
        pull(proxy, layout_builder.ref("big"), str(dest))
    assert set(tags(dest)) == {"old", "big"}


def test_missing_image_raises_image_not_found(
    skopeo_release: SkopeoRelease, layout_builder: LayoutBuilder, tmp_path: Path
) -> None:
    layout_builder.add_image("here", [make_tar({"a": b"1"})])
    with ImageProxy(make_config(skopeo_release)) as proxy, pytest.raises(ImageNotFoundError):
        pull(proxy, layout_builder.ref("not-here"), str(tmp_path / "mirror"))
    assert not (tmp_path / "mirror" / "index.json").exists()


def test_pull_mirrors_an_artifact(
    skopeo_release: SkopeoRelease, layout_builder: LayoutBuilder, tmp_path: Path
) -> None:
    wasm, manifest = add_wasm_artifact(layout_builder, "wasm")
    dest = tmp_path / "mirror"
    with ImageProxy(make_config(skopeo_release)) as proxy:
        digest = pull(proxy, layout_builder.ref("wasm"), str(dest))
    written = json.loads((dest / "blobs/sha256" / digest.split(":")[1]).read_bytes())
    assert written == manifest
    layer = manifest["layers"][0]["digest"].split(":")[1]
    assert (dest / "blobs/sha256" / layer).read_bytes() == wasm


def test_docker_archive_layers_get_the_media_type_of_their_bytes(
    skopeo_release: SkopeoRelease, layout_builder: LayoutBuilder, tmp_path: Path
) -> None:
    layout_builder.add_image("app", [make_tar({"srv/app": b"hello\n"})])
    archive = convert(
        skopeo_release.argv,
        layout_builder.ref("app"),
        f"docker-archive:{tmp_path / 'app.tar'}:example/app:1",
    )
    dest = tmp_path / "mirror"
    reports: list[TransferProgress] = []
    with ImageProxy(make_config(skopeo_release)) as proxy:
        digest = pull(proxy, archive, str(dest), tag="app", progress=reports.append)
    manifest = json.loads((dest / "blobs/sha256" / digest.split(":")[1]).read_bytes())
    # the converted config comes from GetFullConfig: reported once, as fetched, not as kept
    config_reports = [r for r in reports if r.digest == manifest["config"]["digest"]]
    assert [(r.finished, r.local) for r in config_reports if r.finished] == [(True, False)]
    for layer in manifest["layers"]:
        head = (dest / "blobs/sha256" / layer["digest"].split(":")[1]).read_bytes()[:2]
        gzipped = head == b"\x1f\x8b"
        assert layer["mediaType"].endswith("+gzip") == gzipped, layer
    if UMOCI is not None:
        rootfs = umoci_unpack(dest, "app", tmp_path / "bundle")
        assert (rootfs / "srv/app").read_bytes() == b"hello\n"


def test_pull_async_reports_progress_on_the_loop(
    skopeo_release: SkopeoRelease, layout_builder: LayoutBuilder, tmp_path: Path
) -> None:
    image = layout_builder.add_image("v1", [random_layer(5, 1 << 20)])
    threads: set[int] = set()

    async def main() -> str:
        async with AsyncImageProxy(make_config(skopeo_release)) as proxy:
            return await pull_async(
                proxy,
                layout_builder.ref("v1"),
                str(tmp_path / "mirror"),
                progress=lambda r: threads.add(threading.get_ident()),
            )

    assert asyncio.run(main()) == image.manifest_digest
    assert threads == {threading.get_ident()}  # asyncio.run's loop runs on this thread
    assert (
        sha256_digest((tmp_path / "mirror/blobs/sha256" / image.layers[0].digest[7:]).read_bytes())
        == image.layers[0].digest
    )


def test_a_cancelled_async_pull_leaves_no_temporary_file(
    skopeo_release: SkopeoRelease, layout_builder: LayoutBuilder, tmp_path: Path
) -> None:
    layout_builder.add_image("big", [random_layer(8, 8 << 20)])
    dest = tmp_path / "mirror"

    async def main() -> None:
        started = asyncio.Event()
        async with AsyncImageProxy(make_config(skopeo_release)) as proxy:
            task = asyncio.create_task(
                pull_async(
                    proxy,
                    layout_builder.ref("big"),
                    str(dest),
                    progress=lambda r: r.done and started.set(),
                )
            )
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the image the pull opened is released in the proxy, cancelled or not
            for _ in range(100):
                if not proxy._session.open_images:
                    break
                await asyncio.sleep(0.01)  # the close was started on the loop, not awaited
            assert not proxy._session.open_images

    asyncio.run(main())
    assert leftovers(dest) == []
    assert not (dest / "index.json").exists()
    assert os.path.isdir(dest / "blobs")


def test_a_failed_instance_reports_its_own_error_not_the_cancel_it_caused() -> None:
    """The engine's runner alone (no proxy): one call fails, the others are cancelled by it;
    the caller sees the failure, whichever finished first."""
    from containers_image_proxy._layout import Layout
    from containers_image_proxy._pull import Cancelled, _Puller

    class Broken(Exception):
        pass

    def calls(puller: _Puller, gate: threading.Event) -> list[Callable[[], None]]:
        def fails() -> None:
            # as an instance's own pull does: stop the others, wait for its workers, raise
            puller.cancel.set()
            gate.wait(5)
            raise Broken()

        def stopped() -> None:
            puller.cancel.wait(5)  # stopped by the failure, as a blob transfer would be
            gate.set()
            raise Cancelled("the pull was stopped")

        return [stopped, fails]

    for _ in range(20):
        puller = _Puller(None, Layout.__new__(Layout), None, 4)
        with pytest.raises(Broken):
            puller.run_all(calls(puller, threading.Event()), 2)
