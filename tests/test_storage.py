"""containers-storage: images in a local store (vfs driver, in a temporary directory).

The store keeps layers uncompressed, so the layers a copy fetches differ from the ones
the manifest lists: GetLayerInfo (0.2.5+) names them, GetBlob serves them. The store is
private to the test module, through CONTAINERS_STORAGE_CONF (which the proxy inherits
from this process's environment, and which skopeo honours).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import make_config
from containers_image_proxy import (
    ImageProxy,
    ProxyTooOldError,
    RequestError,
)
from testbed._run import run
from testbed.images import MEDIA_TYPE_LAYER, Layouts
from testbed.releases import SYSTEM_SKOPEO, SkopeoRelease

pytestmark = pytest.mark.integration

STORAGE_ENV = "CONTAINERS_STORAGE_CONF"
NAME = "localhost/cip-test/small:1"


@dataclass(frozen=True)
class Store:
    conf: Path
    graphroot: Path
    runroot: Path

    def ref(self, name: str = NAME) -> str:
        return f"containers-storage:{name}"

    def explicit_ref(self, name: str = NAME) -> str:
        """The reference form that names driver and directories, needing no storage.conf."""
        return f"containers-storage:[vfs@{self.graphroot}+{self.runroot}]{name}"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, layouts: Layouts) -> Iterator[Store]:
    tmp = tmp_path_factory.mktemp("storage")
    graphroot, runroot = tmp / "graph", tmp / "run"
    conf = tmp / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{graphroot}"\nrunroot = "{runroot}"\n'
    )
    # The system skopeo fills the store: writing needs containers/storage to re-execute
    # its own binary, which a newer release started through the dynamic loader cannot do.
    run(
        [
            str(SYSTEM_SKOPEO),
            "--insecure-policy",
            "copy",
            layouts.ref("small"),
            f"containers-storage:{NAME}",
        ],
        env={STORAGE_ENV: str(conf)},
    )
    yield Store(conf, graphroot, runroot)
    # vfs leaves plain directories; the temporary directory goes with the session. Nothing
    # is mounted (the proxy only reads), so there is nothing to unmount.


@pytest.fixture
def store_env(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    """The store, made the default one for the skopeo processes this test starts."""
    monkeypatch.setenv(STORAGE_ENV, str(store.conf))
    return store


def test_layer_info_names_the_stored_layers(
    no_leaks: None, skopeo_release: SkopeoRelease, store_env: Store, layouts: Layouts
) -> None:
    expected = layouts.small
    with ImageProxy(make_config(skopeo_release)) as proxy:
        with proxy.open_image(store_env.ref()) as img:
            config = proxy.fetch_config(img)
            assert list(config.rootfs.diff_ids) == expected.diff_ids
            if not skopeo_release.has_protocol("0.2.5"):
                with pytest.raises(ProxyTooOldError) as caught:
                    proxy.get_layer_info(img)
                assert caught.value.release == "1.11"
                assert "1.11" in str(caught.value)
                assert "containers-storage" in str(caught.value)
                return
            infos = proxy.get_layer_info(img)
            # Uncompressed, as stored: the diff ids, with the tar sizes.
            assert [i.digest for i in infos] == list(config.rootfs.diff_ids)
            assert [i.size for i in infos] == [layer.uncompressed_size for layer in expected.layers]
            assert all(i.media_type == MEDIA_TYPE_LAYER for i in infos)
            for info in infos:
                with proxy.get_blob(img, info.digest, info.size) as blob:
                    data = blob.read()
                assert len(data) == info.size
                assert "sha256:" + hashlib.sha256(data).hexdigest() == info.digest
            # get_descriptor takes the layer info as it is.
            with proxy.get_descriptor(img, infos[1]) as blob:
                assert hashlib.sha256(blob.read()).hexdigest() == infos[1].digest.hex


def test_manifest_layers_are_not_in_the_store(
    no_leaks: None, skopeo_release: SkopeoRelease, store_env: Store, layouts: Layouts
) -> None:
    # Why get_layer_info exists: the manifest still lists the compressed layers, which the
    # store no longer has.
    layer = layouts.small.layers[0]
    with ImageProxy(make_config(skopeo_release)) as proxy:
        with proxy.open_image(store_env.ref()) as img:
            digest, manifest = proxy.fetch_manifest(img)
            assert [d.digest for d in manifest.layers] == [x.digest for x in layouts.small.layers]
            with pytest.raises(RequestError) as caught:
                proxy.get_blob(img, layer.digest, layer.size)
            assert layer.digest in caught.value.message
            # still usable
            assert proxy.fetch_manifest(img)[0] == digest


def test_explicit_store_reference(
    no_leaks: None, skopeo_release: SkopeoRelease, store: Store, layouts: Layouts
) -> None:
    # No CONTAINERS_STORAGE_CONF here: the reference names driver and directories itself.
    with ImageProxy(make_config(skopeo_release)) as proxy:
        with proxy.open_image(store.explicit_ref()) as img:
            config = proxy.fetch_config(img)
            assert list(config.rootfs.diff_ids) == layouts.small.diff_ids


@pytest.mark.parametrize("missing", ["tag", "name"])
def test_missing_image_in_the_store(
    no_leaks: None, skopeo_release: SkopeoRelease, store_env: Store, missing: str
) -> None:
    name = "localhost/cip-test/small:nope" if missing == "tag" else "localhost/cip-test/none:1"
    with ImageProxy(make_config(skopeo_release)) as proxy:
        assert proxy.open_image_optional(store_env.ref(name)) is None
        with pytest.raises(RequestError):
            proxy.open_image(store_env.ref(name))
        img = proxy.open_image_optional(store_env.ref())
        assert img is not None
        proxy.close_image(img)
