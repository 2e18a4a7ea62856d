"""Tests for containers_image_proxy._reference: light parsing of image references."""

from __future__ import annotations

import dataclasses
from typing import Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from containers_image_proxy._errors import ConfigurationError
from containers_image_proxy._reference import TRANSPORTS, ImageReference, as_reference

DIGEST = "sha256:" + "ab" * 32


def test_transports() -> None:
    assert (
        frozenset(
            {
                "docker",
                "docker-archive",
                "docker-daemon",
                "oci",
                "oci-archive",
                "dir",
                "containers-storage",
                "tarball",
                "sif",
                "ostree",
            }
        )
        == TRANSPORTS
    )
    assert isinstance(TRANSPORTS, frozenset)


@pytest.mark.parametrize(
    ("text", "transport", "name"),
    [
        ("docker://quay.io/fedora/fedora:40", "docker", "//quay.io/fedora/fedora:40"),
        ("docker://busybox", "docker", "//busybox"),
        ("oci:/tmp/layout:latest", "oci", "/tmp/layout:latest"),
        ("oci:layout", "oci", "layout"),
        ("oci-archive:/tmp/img.tar:v1", "oci-archive", "/tmp/img.tar:v1"),
        ("docker-archive:/tmp/img.tar", "docker-archive", "/tmp/img.tar"),
        ("docker-daemon:busybox:latest", "docker-daemon", "busybox:latest"),
        ("dir:/var/tmp/x", "dir", "/var/tmp/x"),
        (
            "containers-storage:[vfs@/g+/r]localhost/x:latest",
            "containers-storage",
            "[vfs@/g+/r]localhost/x:latest",
        ),
        ("tarball:/tmp/a.tar", "tarball", "/tmp/a.tar"),
        ("sif:/tmp/a.sif", "sif", "/tmp/a.sif"),
        ("ostree:img@/ostree/repo", "ostree", "img@/ostree/repo"),
    ],
)
def test_parse(text: str, transport: str, name: str) -> None:
    ref = ImageReference.parse(text)
    assert (ref.transport, ref.name) == (transport, name)
    assert str(ref) == text
    assert ref == ImageReference(transport, name)
    assert as_reference(text) == ref


@pytest.mark.parametrize(
    ("text", "registry_name", "tag", "digest"),
    [
        ("docker://quay.io/fedora/fedora:40", "quay.io/fedora/fedora", "40", None),
        ("docker://busybox", "busybox", None, None),
        ("docker://localhost:5000/test/img", "localhost:5000/test/img", None, None),
        ("docker://localhost:5000/test/img:v1", "localhost:5000/test/img", "v1", None),
        (f"docker://127.0.0.1:5000/img@{DIGEST}", "127.0.0.1:5000/img", None, DIGEST),
        (f"docker://img:tag@{DIGEST}", "img", "tag", DIGEST),
        ("docker://localhost:5000", "localhost", "5000", None),
    ],
)
def test_docker_parts(
    text: str, registry_name: str, tag: Optional[str], digest: Optional[str]
) -> None:
    ref = ImageReference.parse(text)
    assert ref.registry_name == registry_name
    assert ref.tag == tag
    assert ref.digest == digest


def test_docker_parts_are_none_for_other_transports() -> None:
    ref = ImageReference.parse("oci:/tmp/layout:latest")
    assert ref.registry_name is None and ref.tag is None and ref.digest is None


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "has no transport"),
        ("busybox", "has no transport"),
        ("/tmp/layout", "has no transport"),
        ("quay.io/fedora/fedora:40", "unknown transport 'quay.io/fedora/fedora'"),
        ("Docker://busybox", "unknown transport 'Docker'"),
        (":busybox", "unknown transport ''"),
        ("docker:busybox", "needs 'docker://'"),
        ("docker:/busybox", "needs 'docker://'"),
        ("docker://", "needs 'docker://'"),
        ("docker:", "empty name"),
        ("oci:", "empty name"),
        ("dir:", "empty name"),
        ("oci:/tmp/a\0b", "NUL"),
        ("\0", "NUL"),
        ("oci:/" + "a" * 5000, "longer than 4096"),
        ("a" * 5000, "longer than 4096"),
    ],
)
def test_invalid(text: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        ImageReference.parse(text)
    with pytest.raises(ConfigurationError, match=match):
        as_reference(text)


def test_unknown_transport_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        ImageReference.parse("quay.io/fedora/fedora:40")
    message = str(info.value)
    for transport in TRANSPORTS:
        assert transport in message
    assert "'docker://quay.io/fedora/fedora:40'" in message
    assert isinstance(info.value, ValueError)


def test_no_docker_hint_for_paths() -> None:
    with pytest.raises(ConfigurationError) as info:
        ImageReference.parse("/tmp/layout:latest")
    assert "docker://" not in str(info.value)


def test_error_messages_are_truncated() -> None:
    with pytest.raises(ConfigurationError) as info:
        ImageReference.parse("x" * 5000)
    assert len(str(info.value)) < 300


def test_length_limit_is_inclusive() -> None:
    text = "oci:" + "a" * (4096 - 4)
    assert str(ImageReference.parse(text)) == text
    with pytest.raises(ConfigurationError):
        ImageReference.parse(text + "a")


def test_constructor_validates() -> None:
    with pytest.raises(ConfigurationError, match="unknown transport 'http'"):
        ImageReference("http", "//example.com")
    with pytest.raises(ConfigurationError, match="needs 'docker://'"):
        ImageReference("docker", "busybox")
    with pytest.raises(ConfigurationError, match="must be strings"):
        ImageReference("docker", None)  # type: ignore[arg-type]


def test_not_a_string() -> None:
    with pytest.raises(ConfigurationError, match="must be a string, got bytes"):
        ImageReference.parse(b"docker://busybox")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="got int"):
        as_reference(3)  # type: ignore[arg-type]


def test_as_reference_keeps_references() -> None:
    ref = ImageReference.parse("docker://busybox")
    assert as_reference(ref) is ref


def test_frozen_and_hashable() -> None:
    ref = ImageReference.parse("docker://busybox")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.name = "//x"  # type: ignore[misc]
    assert {ref: 1}[ImageReference("docker", "//busybox")] == 1


names = st.text(st.characters(blacklist_characters="\0"), min_size=1, max_size=40)


@given(st.sampled_from(sorted(TRANSPORTS)), names)
def test_str_round_trips(transport: str, name: str) -> None:
    if transport == "docker":
        name = "//" + name
    ref = ImageReference.parse(f"{transport}:{name}")
    assert (ref.transport, ref.name) == (transport, name)
    assert ImageReference.parse(str(ref)) == ref


@given(st.text(max_size=60))
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        ref = ImageReference.parse(text)
    except ConfigurationError:
        return
    assert str(ref) == text
    assert ref.transport in TRANSPORTS
