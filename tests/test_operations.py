"""Unit tests of the shared operations and the configuration, with the proxy side replaced by
a list of scripted results (no process)."""

from __future__ import annotations

import json
from typing import Any, Tuple

import pytest

from containers_image_proxy import (
    ConfigurationError,
    ImageNotFoundError,
    ProtocolError,
    ProxyConfig,
    ProxyTooOldError,
    RequestError,
)
from containers_image_proxy._config import build_command
from containers_image_proxy._core import actions
from containers_image_proxy._core import operations as ops
from containers_image_proxy._core.session import Session
from containers_image_proxy._models import Digest
from containers_image_proxy._reference import ImageReference
from containers_image_proxy._stream.state import StreamKind
from testbed.script import Script

DIGEST = "sha256:" + "ab" * 32


def session(version: Tuple[int, int, int], **config: Any) -> Session:
    s = Session(ProxyConfig(**config))
    s.version = version
    return s


def test_initialize_sets_the_version() -> None:
    s = Session(ProxyConfig())
    assert Script("0.2.8").run(ops.initialize(s)) == "0.2.8"
    assert s.protocol_version == "0.2.8" and s.supports("GetRawBlob")


def test_initialize_refuses_too_old() -> None:
    with pytest.raises(ProxyTooOldError):
        Script("0.2.2").run(ops.initialize(Session(ProxyConfig())))


@pytest.mark.parametrize(
    "config", [{"policy": "/etc/containers/policy.json"}, {"require_policy_enforcement": True}]
)
def test_policy_on_old_proxy_fails_closed(config: Any) -> None:
    with pytest.raises(ProxyTooOldError, match="signature policy") as e:
        Script("0.2.5").run(ops.initialize(Session(ProxyConfig(**config))))
    assert e.value.required == "0.2.6"
    Script("0.2.6").run(ops.initialize(Session(ProxyConfig(**config))))


def test_open_image_optional_native() -> None:
    s = session((0, 2, 8))
    script = Script(0)
    assert script.run(ops.open_image_optional(s, "docker://x/y:z")) is None
    assert script.actions == [actions.Call("OpenImageOptional", ("docker://x/y:z",))]
    assert Script(4).run(ops.open_image_optional(s, "docker://x/y:z")) == 4


def test_open_image_optional_emulated_on_0_2_3() -> None:
    s = session((0, 2, 3))
    script = Script(RequestError("OpenImage", "reading manifest: manifest unknown"))
    assert script.run(ops.open_image_optional(s, "docker://x/y:z")) is None
    assert script.actions[0].method == "OpenImage"  # type: ignore[union-attr]
    with pytest.raises(RequestError, match="x509"):
        Script(RequestError("OpenImage", "x509: unknown authority")).run(
            ops.open_image_optional(s, "docker://x/y:z")
        )


def test_open_image_records_the_image_and_classifies_missing() -> None:
    s = session((0, 2, 8))
    assert Script(3).run(ops.open_image(s, "oci:/x:y")) == 3
    assert s.open_images == {3}
    missing = RequestError("OpenImage", "open /l/index.json: no such file or directory")
    with pytest.raises(ImageNotFoundError) as e:
        Script(missing).run(ops.open_image(s, "oci:/l:y"))
    assert e.value.reference == "oci:/l:y" and s.open_images == {3}
    # the same text for another transport says nothing about the image
    with pytest.raises(RequestError) as other:
        Script(missing).run(ops.open_image(s, "docker://x/y:z"))
    assert not isinstance(other.value, ImageNotFoundError)


def test_lazy_transport_is_checked_at_open() -> None:
    s = session((0, 2, 8))
    gone = RequestError("GetManifest", "open /d/manifest.json: no such file or directory")
    script = Script(5, gone, None)
    with pytest.raises(ImageNotFoundError):
        script.run(ops.open_image(s, "dir:/d"))
    assert script.actions == [
        actions.Call("OpenImage", ("dir:/d",)),
        actions.CallPiped("GetManifest", (5,)),
        actions.Call("CloseImage", (5,)),
    ]
    assert s.open_images == set()
    assert Script(5, gone, None).run(ops.open_image_optional(s, "dir:/d")) is None
    # any other failure is left for the first read, and the image stays open
    damaged = RequestError("GetManifest", "manifest.json: permission denied")
    assert Script(6, damaged).run(ops.open_image(s, "dir:/d")) == 6
    assert s.open_images == {6}


def test_close_open_images_closes_each_once_and_ignores_refusals() -> None:
    s = session((0, 2, 8))
    s.open_images.update({1, 2, 3})
    Script(None).run(ops.close_image(s, 2))
    script = Script(RequestError("CloseImage", "no such image"), None)
    script.run(ops.close_open_images(s))
    assert sorted(a.args[0] for a in script.actions) == [1, 3]  # type: ignore[union-attr]
    assert s.open_images == set()


def test_open_image_rejects_zero_and_garbage_ids() -> None:
    s = session((0, 2, 8))
    for bad in (0, -1, "3", None, True):
        with pytest.raises(ProtocolError):
            Script(bad).run(ops.open_image(s, "oci:/x:y"))


def test_unknown_transport_is_refused_before_anything_is_sent() -> None:
    script = Script()
    with pytest.raises(ConfigurationError):
        script.run(ops.open_image(session((0, 2, 8)), "nosuch:/x"))
    assert script.actions == []


def test_fetch_manifest_validates_digest() -> None:
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "a", "digest": DIGEST, "size": 2},
        "layers": [],
    }
    digest, parsed = Script((DIGEST, json.dumps(manifest).encode())).run(ops.fetch_manifest(1))
    assert digest == DIGEST and parsed.config.size == 2
    with pytest.raises(ProtocolError):
        Script(("sha256:short", b"{}")).run(ops.fetch_manifest(1))
    with pytest.raises(ProtocolError):
        Script((DIGEST, b"not json")).run(ops.fetch_manifest(1))


LAYERS = [{"digest": DIGEST, "size": 5, "media_type": "application/vnd.oci.image.layer.v1.tar"}]


def test_layer_info_piped_inline_and_derived() -> None:
    ref = ImageReference.parse("oci:/l:t")
    script = Script((None, json.dumps(LAYERS).encode()))
    (info,) = script.run(ops.get_layer_info(session((0, 2, 8)), 1, ref))
    assert info.size == 5 and script.actions[0].method == "GetLayerInfoPiped"  # type: ignore[union-attr]
    script = Script(LAYERS)
    assert script.run(ops.get_layer_info(session((0, 2, 6)), 1, ref))[0].digest == DIGEST
    assert script.actions[0].method == "GetLayerInfo"  # type: ignore[union-attr]
    manifest = {
        "schemaVersion": 2,
        "config": {"mediaType": "a", "digest": DIGEST, "size": 2},
        "layers": [{"mediaType": "m", "digest": DIGEST, "size": 9}],
    }
    script = Script((DIGEST, json.dumps(manifest).encode()))
    (info,) = script.run(ops.get_layer_info(session((0, 2, 3)), 1, ref))
    assert (info.size, info.media_type) == (9, "m")


def test_layer_info_for_containers_storage_on_0_2_3_names_the_release() -> None:
    ref = ImageReference.parse("containers-storage:localhost/x:latest")
    with pytest.raises(ProxyTooOldError, match="1.11"):
        Script().run(ops.get_layer_info(session((0, 2, 3)), 1, ref))


def test_layer_info_garbage() -> None:
    ref = ImageReference.parse("oci:/l:t")
    for bad in ({"a": 1}, [{"digest": "nope", "size": 1, "media_type": "x"}], "x"):
        with pytest.raises(ProtocolError):
            Script(bad).run(ops.get_layer_info(session((0, 2, 6)), 1, ref))


def test_get_blob_picks_the_method_by_version() -> None:
    script = Script("reader")
    assert script.run(ops.get_blob(session((0, 2, 8)), 1, DIGEST, 10)) == "reader"
    (action,) = script.actions
    assert isinstance(action, actions.OpenStream)
    assert action.method == "GetRawBlob" and action.args == (1, DIGEST)
    assert action.spec.kind is StreamKind.RAW and action.spec.verify
    script = Script("reader")
    script.run(ops.get_blob(session((0, 2, 6)), 1, DIGEST, 10))
    (action,) = script.actions
    assert isinstance(action, actions.OpenStream)
    assert action.method == "GetBlob" and action.args == (1, DIGEST, 10)
    assert not action.spec.verify  # skopeo verifies GetBlob itself


@pytest.mark.parametrize("digest", ["sha256:abc", "md5:" + "a" * 32, "", 5, "SHA256:" + "A" * 64])
def test_get_blob_rejects_malformed_digests_before_sending(digest: Any) -> None:
    script = Script()
    with pytest.raises(ConfigurationError):
        script.run(ops.get_blob(session((0, 2, 8)), 1, digest, 10))
    assert script.actions == []


@pytest.mark.parametrize("size", [-1, "10", 1.0, True])
def test_get_blob_rejects_bad_sizes(size: Any) -> None:
    with pytest.raises(ConfigurationError):
        Script().run(ops.get_blob(session((0, 2, 8)), 1, DIGEST, size))


LAYER = "sha256:" + "cd" * 32


def _manifest(config_size: int, layer_size: int) -> Tuple[str, bytes]:
    body = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": DIGEST,
            "size": config_size,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": LAYER,
                "size": layer_size,
            }
        ],
    }
    return "sha256:" + "ef" * 32, json.dumps(body).encode()


def test_get_blob_without_size_reads_it_from_the_manifest_once() -> None:
    """Before 0.2.8 GetBlob needs the size: it comes from the manifest, read once per image
    (config and layers), and is forgotten when the image is closed."""
    s = session((0, 2, 6))
    s.open_images.add(1)
    script = Script(_manifest(123, 4567), "reader")
    assert script.run(ops.get_blob(s, 1, LAYER, None)) == "reader"
    manifest, first = script.actions
    assert isinstance(manifest, actions.CallPiped) and manifest.method == "GetManifest"
    assert isinstance(first, actions.OpenStream) and first.args == (1, LAYER, 4567)
    script = Script("reader")  # the manifest is not read again
    assert script.run(ops.get_blob(s, 1, DIGEST, None)) == "reader"
    (second,) = script.actions
    assert isinstance(second, actions.OpenStream) and second.args == (1, DIGEST, 123)
    assert second.spec.expected_size == 123
    # a digest the manifest does not reference: no request, a clear error
    script = Script()
    ref = ImageReference.parse("oci:/l:t")
    with pytest.raises(ConfigurationError, match=r"neither the config nor a layer of oci:/l:t"):
        script.run(ops.get_blob(s, 1, "sha256:" + "00" * 32, None, ref))
    assert script.actions == []
    Script(None).run(ops.close_image(s, 1))
    assert s.blob_sizes == {}


def test_get_blob_without_size_on_0_2_8_takes_skopeos() -> None:
    """GetRawBlob reports the size: no manifest is read; a size already recorded from the
    manifest is still checked."""
    s = session((0, 2, 8))
    s.open_images.add(1)
    script = Script("reader")
    script.run(ops.get_blob(s, 1, LAYER, None))
    (action,) = script.actions
    assert isinstance(action, actions.OpenStream) and action.method == "GetRawBlob"
    assert action.spec.expected_size is None and action.spec.verify
    s.blob_sizes[1] = {Digest(LAYER): 9}
    script = Script("reader")
    script.run(ops.get_blob(s, 1, LAYER, None))
    (action,) = script.actions
    assert isinstance(action, actions.OpenStream) and action.spec.expected_size == 9


def test_get_raw_blob_needs_0_2_8() -> None:
    with pytest.raises(ProxyTooOldError, match="get_raw_blob"):
        Script().run(ops.get_raw_blob(session((0, 2, 6)), 1, DIGEST, None, False))


def test_retries_only_retryable_errors_with_backoff() -> None:
    s = session((0, 2, 8), retries=2)
    flaky = RequestError("GetRawBlob", "connection reset", "retryable", True)
    script = Script(flaky, None, flaky, None, "reader")
    assert script.run(ops.get_blob(s, 1, DIGEST, 10)) == "reader"
    sleeps = [a.seconds for a in script.actions if isinstance(a, actions.Sleep)]
    assert sleeps == [0.2, 0.4]
    with pytest.raises(RequestError):
        Script(flaky, None, flaky, None, flaky).run(ops.get_blob(s, 1, DIGEST, 10))
    final = RequestError("GetRawBlob", "denied", "other", False)
    with pytest.raises(RequestError, match="denied"):
        Script(final).run(ops.get_blob(s, 1, DIGEST, 10))


# --- configuration ------------------------------------------------------------------------


def test_default_command() -> None:
    assert build_command(ProxyConfig()) == ("skopeo", "experimental-image-proxy")


def test_full_command() -> None:
    config = ProxyConfig(
        skopeo=("podman", "unshare", "skopeo"),
        authfile="/a.json",
        cert_dir="/certs",
        tls_verify=False,
        policy="/p.json",
        registries_conf="/r.conf",
        registries_d="/r.d",
        override_os="linux",
        override_arch="arm64",
        override_variant="v8",
        user_agent_prefix="me/1",
        debug=True,
    )
    argv = build_command(config, supports_user_agent_prefix=True)
    assert argv == (
        "podman", "unshare", "skopeo", "--debug", "--policy", "/p.json",
        "--registries-conf", "/r.conf", "--registries.d", "/r.d", "--override-os", "linux",
        "--override-arch", "arm64", "--override-variant", "v8", "--user-agent-prefix", "me/1",
        "experimental-image-proxy", "--authfile", "/a.json", "--cert-dir", "/certs",
        "--tls-verify=false",
    )  # fmt: skip
    assert "--user-agent-prefix" not in build_command(config)


def test_auth_data_goes_through_an_fd_only() -> None:
    secret = '{"auths": {"r": {"auth": "c2VjcmV0OnB3"}}}'
    config = ProxyConfig(auth_data=secret)
    argv = build_command(config, auth_fd=7)
    assert argv[-2:] == ("--authfile", "/proc/self/fd/7")
    assert not any("c2VjcmV0" in a for a in argv)
    assert "c2VjcmV0" not in repr(config) and "redacted" in repr(config)
    with pytest.raises(ConfigurationError):
        build_command(config)


def test_max_metadata_size_is_the_clients_own() -> None:
    assert ProxyConfig().max_metadata_size == 4 * 1024 * 1024
    raised = ProxyConfig(max_metadata_size=64 * 1024 * 1024, tls_verify=False)
    assert build_command(raised) == build_command(ProxyConfig(tls_verify=False))
    assert "max_metadata_size=67108864" in repr(raised)


def test_anonymous() -> None:
    assert build_command(ProxyConfig(auth_anonymous=True))[-1] == "--no-creds"


@pytest.mark.parametrize(
    "fields",
    [
        {"authfile": "/a", "auth_data": b"{}"},
        {"authfile": "/a", "auth_anonymous": True},
        {"auth_data": "{}", "auth_anonymous": True},
        {"skopeo": ()},
        {"skopeo": ("",)},
        {"stall_timeout": 0},
        {"retries": -1},
        {"policy": "/p", "insecure_policy": True},
        {"override_arch": ""},
        {"max_metadata_size": 4095},
        {"max_metadata_size": True},
        {"max_metadata_size": 4096.0},
    ],
)
def test_invalid_configurations(fields: Any) -> None:
    with pytest.raises(ConfigurationError):
        ProxyConfig(**fields)


def test_skopeo_as_a_plain_string() -> None:
    assert ProxyConfig(skopeo="/usr/bin/skopeo").skopeo == ("/usr/bin/skopeo",)


def test_debug_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTAINERS_IMAGE_PROXY_DEBUG", "1")
    assert "--debug" in build_command(ProxyConfig())


def test_digest_helpers() -> None:
    assert ops._digest_arg(DIGEST) == Digest(DIGEST)
