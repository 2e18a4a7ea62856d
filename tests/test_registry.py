"""Registries over the network, with every skopeo release: plain HTTP, TLS, TLS with basic
auth (authfile and auth_data), registries.conf rewrites and mirrors, and the errors a
registry gives, each a RequestError carrying the registry's own reason.

The small test image is pushed once per session into each registry flavour; every test
then reads it back and compares with what the layout holds.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import pytest

from conftest import make_config
from containers_image_proxy import (
    AsyncImageProxy,
    ImageProxy,
    ProxyConfig,
    ProxyError,
    RequestError,
)
from testbed.images import ImageInfo, Layouts
from testbed.registry import Registry
from testbed.releases import SkopeoRelease, available_releases

pytestmark = pytest.mark.integration

REPO = "test/small"
TAG = "1"
REPO_TAG = f"{REPO}:{TAG}"
# Any digest no registry holds.
UNKNOWN_BLOB = "sha256:" + "0" * 64


@dataclass(frozen=True)
class Pushed:
    """The three registries, each holding the small image under REPO_TAG."""

    plain: Registry
    tls: Registry
    auth: Registry
    digest: str


@pytest.fixture(scope="session")
def pushed(
    layouts: Layouts, registry_plain: Registry, registry_tls: Registry, registry_auth: Registry
) -> Pushed:
    digest = ""
    for registry in (registry_plain, registry_tls, registry_auth):
        digest = registry.push(layouts.ref("small"), REPO_TAG)
        # An OCI manifest is pushed unchanged: the registry serves the layout's digest.
        assert digest == layouts.small.manifest_digest
    return Pushed(registry_plain, registry_tls, registry_auth, digest)


def read_and_verify(proxy: ImageProxy, ref: str, expected: ImageInfo) -> None:
    """Open ``ref``; manifest digest, config and every layer must equal ``expected``'s."""
    with proxy.open_image(ref) as img:
        digest, manifest = proxy.fetch_manifest(img)
        assert digest == expected.manifest_digest
        assert manifest.config.digest == expected.config_digest
        # GetFullConfig re-serialises: equal as JSON, not byte for byte.
        assert json.loads(proxy.fetch_config_raw(img)) == expected.config_json
        assert list(proxy.fetch_config(img).rootfs.diff_ids) == expected.diff_ids
        assert [d.digest for d in manifest.layers] == [layer.digest for layer in expected.layers]
        for layer in expected.layers:
            with proxy.get_blob(img, layer.digest, layer.size) as blob:
                assert blob.read() == layer.blob


def bad_password_auth_json(registry: Registry, password: str) -> str:
    """An auth.json for ``registry`` with the right user and the wrong password."""
    token = base64.b64encode(f"{registry.user}:{password}".encode()).decode()
    return json.dumps({"auths": {registry.host: {"auth": token}}})


# --- Reading the image -------------------------------------------------------------------


ACCESS_CASES = [
    "plain",
    "tls-cert_dir",
    "auth-authfile",
    "auth-auth_data-bytes",
    "auth-auth_data-str",
]


def access_config(
    release: SkopeoRelease, pushed: Pushed, case: str
) -> tuple[ProxyConfig, Registry]:
    if case == "plain":
        return make_config(release, tls_verify=False), pushed.plain
    if case == "tls-cert_dir":
        return make_config(release, cert_dir=pushed.tls.cert_dir), pushed.tls
    registry = pushed.auth
    assert registry.authfile is not None and registry.auth_json is not None
    if case == "auth-authfile":
        return make_config(
            release, cert_dir=registry.cert_dir, authfile=registry.authfile
        ), registry
    data: Union[bytes, str] = registry.auth_json
    if case == "auth-auth_data-str":
        data = registry.auth_json.decode()
    return make_config(release, cert_dir=registry.cert_dir, auth_data=data), registry


@pytest.mark.parametrize("case", ACCESS_CASES)
def test_read_image(
    no_leaks: None,
    skopeo_release: SkopeoRelease,
    pushed: Pushed,
    layouts: Layouts,
    case: str,
) -> None:
    config, registry = access_config(skopeo_release, pushed, case)
    with ImageProxy(config) as proxy:
        read_and_verify(proxy, registry.ref(REPO_TAG), layouts.small)


def test_read_image_async_with_auth_data(
    no_leaks: None, skopeo_release: SkopeoRelease, pushed: Pushed, layouts: Layouts
) -> None:
    # The asyncio front end spawns skopeo from an executor thread: the inherited auth
    # descriptor must make it there too.
    config, registry = access_config(skopeo_release, pushed, "auth-auth_data-str")
    expected = layouts.small

    async def main() -> None:
        async with AsyncImageProxy(config) as proxy:
            img = await proxy.open_image(registry.ref(REPO_TAG))
            async with img:
                digest, _ = await proxy.fetch_manifest(img)
                assert digest == expected.manifest_digest
                for layer in expected.layers:
                    async with await proxy.get_blob(img, layer.digest, layer.size) as blob:
                        assert await blob.read() == layer.blob

    asyncio.run(main())


# --- Errors --------------------------------------------------------------------------------

# What the registry (or Go's TLS stack) says, as skopeo passes it on; per case, the text
# for 1.9.3 and the text for later releases (see RECIPES "Errors the proxy returns").
ERROR_TEXT: dict[str, tuple[str, str]] = {
    "wrong-password": ("unauthorized: authentication required", "authentication required"),
    "no-credentials": ("unauthorized: authentication required", "authentication required"),
    "tls-without-ca": (
        "x509: certificate signed by unknown authority",
        "x509: certificate signed by unknown authority",
    ),
    "http-registry-tls-required": (
        "server gave HTTP response to HTTPS client",
        "server gave HTTP response to HTTPS client",
    ),
    "missing-repository": ("manifest unknown", "manifest unknown"),
    "missing-tag": ("manifest unknown", "manifest unknown"),
    "unknown-blob": ("invalid status code from registry 404", "blob unknown to registry"),
}


def error_case(
    release: SkopeoRelease, pushed: Pushed, case: str, empty_dir: Path
) -> tuple[ProxyConfig, str]:
    """The configuration and reference that make the registry refuse, for ``case``."""
    plain = make_config(release, tls_verify=False)
    auth = pushed.auth
    if case == "wrong-password":
        data = bad_password_auth_json(auth, "not-" + auth.password)
        return make_config(release, cert_dir=auth.cert_dir, auth_data=data), auth.ref(REPO_TAG)
    if case == "no-credentials":
        config = make_config(release, cert_dir=auth.cert_dir, auth_anonymous=True)
        return config, auth.ref(REPO_TAG)
    if case == "tls-without-ca":
        # An empty cert_dir: no CA, and the system store does not know the test CA either.
        return make_config(release, cert_dir=empty_dir), pushed.tls.ref(REPO_TAG)
    if case == "http-registry-tls-required":
        return make_config(release, tls_verify=True), pushed.plain.ref(REPO_TAG)
    if case == "missing-repository":
        return plain, pushed.plain.ref(f"test/no-such-repo:{TAG}")
    if case == "missing-tag":
        return plain, pushed.plain.ref(f"{REPO}:no-such-tag")
    assert case == "unknown-blob"
    return plain, pushed.plain.ref(REPO_TAG)


@pytest.mark.parametrize("case", sorted(ERROR_TEXT))
def test_registry_errors(
    no_leaks: None,
    skopeo_release: SkopeoRelease,
    pushed: Pushed,
    tmp_path: Path,
    case: str,
) -> None:
    config, ref = error_case(skopeo_release, pushed, case, tmp_path)
    old_text, new_text = ERROR_TEXT[case]
    text = old_text if skopeo_release.version < (1, 18) else new_text
    with ImageProxy(config) as proxy:
        if case == "unknown-blob":
            with proxy.open_image(ref) as img:
                with pytest.raises(RequestError) as caught:
                    proxy.get_blob(img, UNKNOWN_BLOB, 10)
                # The proxy stays usable after a refused request.
                assert proxy.fetch_manifest(img)[0] == pushed.digest
            methods = {"GetBlob", "GetRawBlob"}
        else:
            with pytest.raises(RequestError) as caught:
                proxy.open_image(ref)
            methods = {"OpenImage"}
    err = caught.value
    assert err.method in methods
    assert text in err.message, err.message
    assert str(err) == f"{err.method}: {err.message}"
    if skopeo_release.has_protocol("0.2.8"):
        # skopeo 1.22's own classification: a blob the registry does not know comes back
        # "retryable", everything else here "other"; the client knows better than to ask
        # again for a blob that is not there (tests/test_retries.py counts the requests).
        assert err.error_code == ("retryable" if case == "unknown-blob" else "other")
        assert err.retryable is False
    else:
        assert err.error_code is None and not err.retryable


@pytest.mark.parametrize("missing", ["repository", "tag"])
def test_open_image_optional_missing(
    no_leaks: None, skopeo_release: SkopeoRelease, pushed: Pushed, missing: str
) -> None:
    registry = pushed.plain
    ref = registry.ref(f"test/no-such-repo:{TAG}" if missing == "repository" else f"{REPO}:nope")
    with ImageProxy(make_config(skopeo_release, tls_verify=False)) as proxy:
        assert proxy.open_image_optional(ref) is None
        img = proxy.open_image_optional(registry.ref(REPO_TAG))
        assert img is not None
        with img:
            assert proxy.fetch_manifest(img)[0] == pushed.digest


@pytest.mark.parametrize("case", ["wrong-password", "no-credentials", "tls-without-ca"])
def test_open_image_optional_still_raises(
    no_leaks: None, skopeo_release: SkopeoRelease, pushed: Pushed, tmp_path: Path, case: str
) -> None:
    # "Cannot look" is not "not there": these must not come back as None (on 1.9.3 the
    # client classifies the error text itself).
    config, ref = error_case(skopeo_release, pushed, case, tmp_path)
    with ImageProxy(config) as proxy, pytest.raises(RequestError) as caught:
        proxy.open_image_optional(ref)
    assert ERROR_TEXT[case][1] in caught.value.message


# --- Secrets -------------------------------------------------------------------------------


def secret_forms(registry: Registry, password: str) -> list[str]:
    """The password and the forms it takes in an auth.json (base64 of user:password)."""
    token = base64.b64encode(f"{registry.user}:{password}".encode()).decode()
    return [password, token]


def assert_absent(secrets: list[str], where: str, text: Union[str, bytes]) -> None:
    haystack = text if isinstance(text, str) else text.decode(errors="replace")
    for secret in secrets:
        assert secret not in haystack, f"a secret appears in {where}"


def process_text(pid: int) -> tuple[bytes, bytes]:
    """skopeo's argv and environment, as every user (argv) or root (environ) can read them."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read()
    with open(f"/proc/{pid}/environ", "rb") as f:
        environ = f.read()
    return cmdline, environ


@pytest.mark.parametrize("form", ["bytes", "str"])
def test_auth_data_stays_secret(
    no_leaks: None,
    skopeo_release: SkopeoRelease,
    pushed: Pushed,
    layouts: Layouts,
    caplog: pytest.LogCaptureFixture,
    form: str,
) -> None:
    registry = pushed.auth
    assert registry.auth_json is not None
    good = registry.auth_json if form == "bytes" else registry.auth_json.decode()
    wrong_password = "wrong-" + registry.password
    bad = bad_password_auth_json(registry, wrong_password)
    secrets = secret_forms(registry, registry.password) + secret_forms(registry, wrong_password)
    caplog.set_level(logging.DEBUG, logger="containers_image_proxy")

    messages: list[str] = []
    for data in (good, bad if form == "str" else bad.encode()):
        config = make_config(skopeo_release, cert_dir=registry.cert_dir, auth_data=data, debug=True)
        assert_absent(secrets, "repr(config)", repr(config))
        assert_absent(secrets, "str(config)", str(config))
        with ImageProxy(config) as proxy:
            cmdline, environ = process_text(proxy._process.pid)
            assert b"experimental-image-proxy" in cmdline
            assert_absent(secrets, "skopeo's argv", cmdline)
            assert_absent(secrets, "skopeo's environment", environ)
            assert_absent(secrets, "repr(proxy)", repr(proxy))
            try:
                read_and_verify(proxy, registry.ref(REPO_TAG), layouts.small)
                assert data is good
            except ProxyError as e:
                assert data is not good
                assert isinstance(e, RequestError)
                assert "authentication required" in e.message
                messages += [str(e), repr(e), e.message]

    assert messages, "the wrong password was accepted"
    for message in messages:
        assert_absent(secrets, "an exception message", message)
    # debug=True forwards skopeo's --debug output, which reports reading the credentials:
    # without those lines the checks below would prove nothing.
    skopeo_lines = [
        r.getMessage() for r in caplog.records if r.name.startswith("containers_image_proxy")
    ]
    assert any("Found credentials" in line for line in skopeo_lines)
    for record in caplog.records:
        assert_absent(secrets, f"log record {record.name}", record.getMessage())
        assert_absent(secrets, "log arguments", repr(record.args))
    assert_absent(secrets, "the captured log", caplog.text)


def test_authfile_path_not_contents_on_command_line(
    no_leaks: None, skopeo_release: SkopeoRelease, pushed: Pushed
) -> None:
    registry = pushed.auth
    assert registry.authfile is not None
    config = make_config(skopeo_release, cert_dir=registry.cert_dir, authfile=registry.authfile)
    with ImageProxy(config) as proxy:
        cmdline, _ = process_text(proxy._process.pid)
        assert str(registry.authfile).encode() in cmdline
        assert_absent(secret_forms(registry, registry.password), "skopeo's argv", cmdline)


# --- registries.conf -----------------------------------------------------------------------


def write_registries_conf(path: Path, registry: Registry) -> Path:
    """A rewrite of example.invalid/foo and a mirror for mirror.invalid, both to ``registry``.

    Both entries are marked insecure, so the plain HTTP registry is reached without
    tls_verify=False on the command line: the setting must come from this file.
    """
    path.write_text(
        f"""\
unqualified-search-registries = []
short-name-mode = "disabled"

[[registry]]
prefix = "example.invalid/foo"
location = "{registry.host}/test"
insecure = true

[[registry]]
prefix = "mirror.invalid"
location = "mirror.invalid"

[[registry.mirror]]
location = "{registry.host}"
insecure = true
"""
    )
    return path


@pytest.fixture
def registries_conf(pushed: Pushed, tmp_path: Path) -> Path:
    return write_registries_conf(tmp_path / "registries.conf", pushed.plain)


@pytest.mark.parametrize(
    "ref",
    ["docker://example.invalid/foo/small:1", "docker://mirror.invalid/test/small:1"],
    ids=["rewrite", "mirror"],
)
def test_registries_conf_rewrite_and_mirror(
    no_leaks: None,
    skopeo_release: SkopeoRelease,
    pushed: Pushed,
    layouts: Layouts,
    registries_conf: Path,
    ref: str,
) -> None:
    config = make_config(skopeo_release, registries_conf=registries_conf)
    with ImageProxy(config) as proxy:
        read_and_verify(proxy, ref, layouts.small)


def test_registries_conf_missing_image(
    no_leaks: None, skopeo_release: SkopeoRelease, pushed: Pushed, registries_conf: Path
) -> None:
    config = make_config(skopeo_release, registries_conf=registries_conf)
    with ImageProxy(config) as proxy:
        assert proxy.open_image_optional("docker://example.invalid/foo/small:nope") is None
        with pytest.raises(RequestError) as caught:
            proxy.open_image("docker://example.invalid/foo/small:nope")
    # The error names where skopeo looked: the rewritten location.
    assert "manifest unknown" in caught.value.message
    assert f"{pushed.plain.host}/test/small" in caught.value.message


def test_without_registries_conf_the_names_do_not_resolve(no_leaks: None, pushed: Pushed) -> None:
    # The control for the two tests above: without the file, example.invalid is looked up
    # in DNS and fails, so the successes there come from the rewrite. Nothing here depends
    # on the release: one run, with the oldest one selected.
    release = available_releases()[0]
    with ImageProxy(make_config(release, tls_verify=False)) as proxy:
        with pytest.raises(RequestError) as caught:
            proxy.open_image("docker://example.invalid/foo/small:1")
    assert "example.invalid" in caught.value.message


def test_auth_data_reaches_only_skopeo(
    no_leaks: None,
    skopeo_release: SkopeoRelease,
    pushed: Pushed,
    layouts: Layouts,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The anonymous auth.json is close-on-exec: a program the caller starts while a proxy
    is being spawned (os.system in another thread) does not inherit it; skopeo does."""
    from containers_image_proxy import _process

    registry = pushed.auth
    assert registry.auth_json is not None
    seen: list[tuple[str, int]] = []
    listing = tmp_path / "inherited"
    real_spawn = _process._spawner.spawn

    def spawn_with_a_bystander(start: object) -> object:
        # the moment the credentials exist in this process: their descriptor's flags, and
        # what a program started by os.system inherits
        for name in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{name}")
            except FileNotFoundError:
                continue
            if target.startswith("/memfd:auth.json"):
                seen.append((target, fcntl.fcntl(int(name), fcntl.F_GETFD)))
        assert os.system(f"ls -l /proc/self/fd/ > {listing}") == 0
        return real_spawn(start)  # type: ignore[arg-type]

    monkeypatch.setattr(_process._spawner, "spawn", spawn_with_a_bystander)
    config = make_config(skopeo_release, cert_dir=registry.cert_dir, auth_data=registry.auth_json)
    with ImageProxy(config) as proxy:
        read_and_verify(proxy, registry.ref(REPO_TAG), layouts.small)
    assert len(seen) == 1, seen
    assert seen[0][1] & fcntl.FD_CLOEXEC
    text = listing.read_text()
    assert " 1 -> " in text, text  # ls listed its own descriptors
    assert "memfd:auth.json" not in text, text
