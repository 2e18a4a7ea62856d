"""The test bed itself, with real processes: every skopeo release reads the layouts built in
Python, every registry flavour takes a push and lets in only correctly configured clients."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import tarfile
from collections.abc import Iterator, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from testbed import images
from testbed.images import ImageInfo, LayoutBuilder, Layouts
from testbed.registry import Registry
from testbed.releases import SkopeoRelease, all_releases, available_releases, protocol_for

SYSTEM_SKOPEO = ("skopeo",)


def skopeo(
    release: SkopeoRelease, *args: str, global_args: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*release.argv, *global_args, *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def inspect(
    release: SkopeoRelease, ref: str, *args: str, global_args: Sequence[str] = ()
) -> dict[str, Any]:
    proc = skopeo(release, "inspect", *args, ref, global_args=global_args)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def inspect_raw(release: SkopeoRelease, ref: str, *args: str) -> bytes:
    proc = subprocess.run(
        [*release.argv, "inspect", "--raw", *args, ref],
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def inspect_fails(release: SkopeoRelease, ref: str, *args: str) -> str:
    proc = skopeo(release, "inspect", *args, ref)
    assert proc.returncode != 0, f"inspect {ref} {args} unexpectedly succeeded"
    return proc.stderr


# --- Releases ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "protocol"),
    [
        ((1, 5, 0), None),
        ((1, 9, 3), "0.2.3"),
        ((1, 11, 0), "0.2.5"),
        ((1, 12, 2), "0.2.5"),
        ((1, 13, 0), "0.2.6"),
        ((1, 18, 0), "0.2.6"),
        ((1, 19, 0), "0.2.8"),
        ((1, 22, 0), "0.2.8"),
        ((2, 0, 0), "0.2.8"),
    ],
)
def test_protocol_table(version: tuple[int, ...], protocol: str | None) -> None:
    assert protocol_for(version) == protocol


def test_release_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    everything = all_releases()
    if not everything:
        pytest.skip("no skopeo on this machine")
    first = everything[0]
    monkeypatch.setenv("CIP_SKOPEO_RELEASES", first.name)
    assert available_releases() == [first]
    monkeypatch.setenv("CIP_SKOPEO_RELEASES", first.origin)
    assert available_releases() == [first]
    monkeypatch.setenv("CIP_SKOPEO_RELEASES", "all")
    assert available_releases() == everything
    monkeypatch.setenv("CIP_SKOPEO_RELEASES", "0.0.1")
    with pytest.raises(LookupError, match=r"0\.0\.1"):
        available_releases()


def test_release_identity(skopeo_release: SkopeoRelease) -> None:
    proc = skopeo(skopeo_release, "--version")
    assert proc.returncode == 0, proc.stderr
    assert f"version {skopeo_release.name}" in proc.stdout
    assert protocol_for(skopeo_release.version) == skopeo_release.protocol
    proc = skopeo(skopeo_release, "experimental-image-proxy", "--help")
    assert proc.returncode == 0, proc.stderr


# --- Layouts built in Python ---------------------------------------------------------------


def test_make_tar_is_deterministic() -> None:
    files = {"b/c/file": b"x" * 1000, "a": b"", "d/": b""}
    assert images.make_tar(files) == images.make_tar(dict(reversed(files.items())))
    with tarfile.open(fileobj=BytesIO(images.make_tar(files))) as tar:
        names = [(m.name, m.type, m.mtime, m.uid) for m in tar.getmembers()]
    assert names == [
        ("a", tarfile.REGTYPE, 0, 0),
        ("b", tarfile.DIRTYPE, 0, 0),
        ("b/c", tarfile.DIRTYPE, 0, 0),
        ("b/c/file", tarfile.REGTYPE, 0, 0),
        ("d", tarfile.DIRTYPE, 0, 0),
    ]


def test_layouts_are_deterministic_and_valid(layouts: Layouts, tmp_path: Path) -> None:
    again = images.build_standard_layout(tmp_path / "again")
    assert (layouts.path / "index.json").read_bytes() == (again.path / "index.json").read_bytes()
    assert again.small.manifest_digest == layouts.small.manifest_digest
    assert again.multiarch.digest == layouts.multiarch.digest
    for blob in (layouts.path / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    assert len(layouts.big_config.config) > 1024 * 1024
    assert len(layouts.many_layers.layers) == 300
    assert [i.platform["architecture"] for i in layouts.multiarch.images] == [
        "amd64",
        "arm64",
        "s390x",
        "ppc64le",
    ]
    index = json.loads((layouts.path / "index.json").read_bytes())
    tags = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert tags == list(layouts.tags)


@pytest.mark.parametrize("tag", ["small", "small-uncompressed", "manylayers", "bigconfig"])
def test_inspect_layout(skopeo_release: SkopeoRelease, layouts: Layouts, tag: str) -> None:
    image: ImageInfo = {
        "small": layouts.small,
        "small-uncompressed": layouts.small_uncompressed,
        "manylayers": layouts.many_layers,
        "bigconfig": layouts.big_config,
    }[tag]
    result = inspect(skopeo_release, layouts.ref(tag))
    assert result["Digest"] == image.manifest_digest
    assert result["Layers"] == [layer.digest for layer in image.layers]
    assert inspect_raw(skopeo_release, layouts.ref(tag)) == image.manifest
    assert inspect_raw(skopeo_release, layouts.ref(tag), "--config") == image.config


def test_inspect_multiarch(skopeo_release: SkopeoRelease, layouts: Layouts) -> None:
    ref = layouts.ref("multiarch")
    assert inspect_raw(skopeo_release, ref) == layouts.multiarch.index
    for image in layouts.multiarch.images:
        override = ["--override-os", image.os, "--override-arch", image.architecture]
        if image.variant:
            override += ["--override-variant", image.variant]
        result = inspect(skopeo_release, ref, global_args=override)
        # `skopeo inspect` names the index's digest, but describes the chosen instance.
        assert result["Digest"] == layouts.multiarch.digest
        assert result["Architecture"] == image.architecture
        assert result["Layers"] == [layer.digest for layer in image.layers], image.platform


# --- Conversions and damaged blobs ------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(layouts: Layouts, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("converted")
    src = layouts.ref("small")
    return {
        "oci-archive": images.convert(SYSTEM_SKOPEO, src, f"oci-archive:{out / 'small.tar'}:small"),
        "docker-archive": images.convert(
            SYSTEM_SKOPEO, src, f"docker-archive:{out / 'docker.tar'}:example/small:latest"
        ),
        "dir": images.convert(SYSTEM_SKOPEO, src, f"dir:{out / 'dir'}"),
    }


@pytest.mark.parametrize("transport", ["oci-archive", "docker-archive", "dir"])
def test_converted_transports(
    skopeo_release: SkopeoRelease, layouts: Layouts, converted: dict[str, str], transport: str
) -> None:
    result = inspect(skopeo_release, converted[transport])
    assert len(result["Layers"]) == 3
    if transport == "docker-archive":
        # A docker archive stores uncompressed layers and a Docker manifest of its own.
        assert result["Layers"] == layouts.small.diff_ids
    else:
        assert result["Digest"] == layouts.small.manifest_digest


@pytest.mark.parametrize("damage", ["corrupt", "truncate"])
def test_damaged_blob_is_detected(
    skopeo_release: SkopeoRelease, layout_builder: LayoutBuilder, tmp_path: Path, damage: str
) -> None:
    image = images.small_image(layout_builder)
    victim = image.layers[1]
    if damage == "corrupt":
        images.corrupt_blob(layout_builder.path, victim.digest)
        assert layout_builder.blob_path(victim.digest).stat().st_size == victim.size
    else:
        images.truncate_blob(layout_builder.path, victim.digest)
        assert layout_builder.blob_path(victim.digest).stat().st_size == victim.size // 2
    proc = skopeo(
        skopeo_release,
        "--insecure-policy",
        "copy",
        layout_builder.ref("small"),
        f"dir:{tmp_path / 'out'}",
    )
    assert proc.returncode != 0
    # The same words for both kinds of damage, in 1.9.3, 1.18 and 1.22.
    assert f"Digest did not match, expected {victim.digest}" in proc.stderr


# --- Registries ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pushed(
    layouts: Layouts, registry_plain: Registry, registry_tls: Registry, registry_auth: Registry
) -> dict[str, Registry]:
    registries = {"plain": registry_plain, "tls": registry_tls, "auth": registry_auth}
    for registry in registries.values():
        digest = registry.push(layouts.ref("small"), "testbed/small:v1")
        # An OCI manifest is pushed as it is: the registry serves the layout's bytes.
        assert digest == layouts.small.manifest_digest
    return registries


@pytest.mark.parametrize("flavour", ["plain", "tls", "auth"])
def test_registry_inspect(
    skopeo_release: SkopeoRelease, layouts: Layouts, pushed: dict[str, Registry], flavour: str
) -> None:
    registry = pushed[flavour]
    result = inspect(skopeo_release, registry.ref("testbed/small:v1"), *registry.client_args())
    assert result["Digest"] == layouts.small.manifest_digest


def test_registry_plain_needs_tls_verify_false(
    skopeo_release: SkopeoRelease, pushed: dict[str, Registry]
) -> None:
    err = inspect_fails(skopeo_release, pushed["plain"].ref("testbed/small:v1"))
    assert "server gave HTTP response to HTTPS client" in err


@pytest.mark.parametrize("flavour", ["tls", "auth"])
def test_registry_tls_needs_ca(
    skopeo_release: SkopeoRelease,
    pushed: dict[str, Registry],
    tmp_path: Path,
    flavour: str,
) -> None:
    registry = pushed[flavour]
    # An empty --cert-dir: no CA, and no chance that the system trusts it.
    args = ["--cert-dir", str(tmp_path)]
    if registry.authfile:
        args += ["--authfile", str(registry.authfile)]
    err = inspect_fails(skopeo_release, registry.ref("testbed/small:v1"), *args)
    assert "certificate signed by unknown authority" in err


def test_registry_auth_needs_credentials(
    skopeo_release: SkopeoRelease, pushed: dict[str, Registry], tmp_path: Path
) -> None:
    registry = pushed["auth"]
    ref = registry.ref("testbed/small:v1")
    err = inspect_fails(skopeo_release, ref, "--cert-dir", str(registry.cert_dir), "--no-creds")
    assert "authentication required" in err
    wrong = json.loads(registry.auth_json or b"{}")
    wrong["auths"][registry.host]["auth"] = "dGVzdGJlZDp3cm9uZw=="  # testbed:wrong
    authfile = tmp_path / "wrong.json"
    authfile.write_text(json.dumps(wrong))
    err = inspect_fails(
        skopeo_release, ref, "--cert-dir", str(registry.cert_dir), "--authfile", str(authfile)
    )
    assert "authentication required" in err


def test_registry_auth_refuses_anonymous_push(
    layouts: Layouts, pushed: dict[str, Registry]
) -> None:
    registry = pushed["auth"]
    proc = subprocess.run(
        [
            *SYSTEM_SKOPEO, "--insecure-policy", "copy",
            "--dest-cert-dir", str(registry.cert_dir), "--dest-no-creds",
            layouts.ref("small"), registry.ref("testbed/anonymous:v1"),
        ],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "authentication required" in proc.stderr


def test_each_release_pushes(
    skopeo_release: SkopeoRelease, layouts: Layouts, pushed: dict[str, Registry]
) -> None:
    registry = pushed["auth"]
    repo = f"testbed/pushed-by-{skopeo_release.name}:v1"
    digest = registry.push(layouts.ref("small"), repo, skopeo_argv=skopeo_release.argv)
    assert digest == layouts.small.manifest_digest
    result = inspect(skopeo_release, registry.ref(repo), *registry.client_args())
    assert result["Digest"] == digest


def test_registry_stop_cleans_up() -> None:
    registry = Registry("tls")
    registry.start()
    workdir, port = registry.workdir, registry.port
    assert workdir is not None and workdir.is_dir()
    proc = registry._proc
    assert proc is not None
    registry.stop()
    assert proc.returncode is not None
    assert not workdir.exists()
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))
    registry.stop()  # idempotent


# --- Signing while pushing ------------------------------------------------------------------


@pytest.fixture
def gpg_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        ["gpg", "--batch", "--passphrase", "", "--quick-gen-key",
         "Testbed <testbed@example.invalid>", "rsa2048", "sign", "never"],
        env=env, check=True, capture_output=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield home
    finally:
        # gpg and gpgme start a gpg-agent that would outlive the test.
        subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True, check=False)


def test_push_signed(
    skopeo_release: SkopeoRelease,
    layouts: Layouts,
    registry_plain: Registry,
    gpg_home: Path,
    tmp_path: Path,
) -> None:
    lookaside = tmp_path / "lookaside"
    registries_d = tmp_path / "registries.d"
    registries_d.mkdir()
    (registries_d / "default.yaml").write_text(
        f"default-docker:\n  lookaside: file://{lookaside}\n"
        f"  lookaside-staging: file://{lookaside}\n"
    )
    repo = f"testbed/signed-{skopeo_release.name}"
    digest = registry_plain.push(
        layouts.ref("small"),
        f"{repo}:v1",
        skopeo_argv=skopeo_release.argv,
        sign_by="testbed@example.invalid",
        global_args=["--registries.d", str(registries_d)],
        env={"GNUPGHOME": str(gpg_home)},
    )
    signature = lookaside / f"{repo}@{digest.replace(':', '=')}" / "signature-1"
    assert signature.is_file()
    assert signature.stat().st_size > 0
