"""Tests for containers_image_proxy._models: parsing, validation and exact JSON round trips."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import pickle
from typing import Any, Dict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from containers_image_proxy._core.protocol import MAX_JSON_DEPTH
from containers_image_proxy._errors import ConfigurationError
from containers_image_proxy._models import (
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_LAYER,
    MEDIA_TYPE_OCI_LAYER_GZIP,
    MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE,
    MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_GZIP,
    MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
    MEDIA_TYPE_OCI_LAYER_ZSTD,
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
    Digest,
    History,
    ImageConfig,
    ImageIndex,
    ImageManifest,
    LayerInfo,
    Platform,
    RootFS,
    RuntimeConfig,
)

D1 = "sha256:" + hashlib.sha256(b"one").hexdigest()
D2 = "sha256:" + hashlib.sha256(b"two").hexdigest()
D3 = "sha256:" + hashlib.sha256(b"three").hexdigest()
D4 = "sha256:" + hashlib.sha256(b"four").hexdigest()

# --- documents shaped like the ones registries and tools produce ------------------------------

OCI_MANIFEST: Dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": MEDIA_TYPE_OCI_MANIFEST,
    "config": {"mediaType": MEDIA_TYPE_OCI_CONFIG, "digest": D1, "size": 1469},
    "layers": [
        {"mediaType": MEDIA_TYPE_OCI_LAYER_GZIP, "digest": D2, "size": 2811478},
        {
            "mediaType": MEDIA_TYPE_OCI_LAYER_ZSTD,
            "digest": D3,
            "size": 120,
            "annotations": {"io.github.containers.zstd-chunked.manifest-position": "1:2:3:4"},
        },
    ],
    "annotations": {
        "org.opencontainers.image.base.digest": D4,
        "org.opencontainers.image.base.name": "quay.io/fedora/fedora:40",
    },
}

DOCKER_MANIFEST: Dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": MEDIA_TYPE_DOCKER_MANIFEST,
    "config": {"mediaType": MEDIA_TYPE_DOCKER_CONFIG, "size": 7023, "digest": D1},
    "layers": [
        {"mediaType": MEDIA_TYPE_DOCKER_LAYER_GZIP, "size": 32654, "digest": D2},
        {
            "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "size": 1024,
            "digest": D3,
            "urls": ["https://mcr.microsoft.com/v2/windows/blobs/" + D3],
        },
    ],
}

ARTIFACT_MANIFEST: Dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": MEDIA_TYPE_OCI_MANIFEST,
    "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
    "config": {
        "mediaType": "application/vnd.oci.empty.v1+json",
        "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "size": 2,
        "data": "e30=",
    },
    "layers": [
        {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "digest": D2, "size": 9}
    ],
    "subject": {"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": D3, "size": 1234},
    "annotations": {"dev.sigstore.bundle.predicateType": "https://slsa.dev/provenance/v1"},
}

OCI_INDEX: Dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": MEDIA_TYPE_OCI_INDEX,
    "manifests": [
        {
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "digest": D1,
            "size": 1050,
            "platform": {"architecture": "amd64", "os": "linux"},
        },
        {
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "digest": D2,
            "size": 1050,
            "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
        },
        {
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "digest": D3,
            "size": 566,
            "annotations": {
                "vnd.docker.reference.digest": D1,
                "vnd.docker.reference.type": "attestation-manifest",
            },
            "platform": {"architecture": "unknown", "os": "unknown"},
        },
        {
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "digest": D4,
            "size": 900,
            "platform": {
                "architecture": "amd64",
                "os": "windows",
                "os.version": "10.0.20348.2227",
                "os.features": ["win32k"],
            },
        },
    ],
}

DOCKER_MANIFEST_LIST: Dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    "manifests": [
        {
            "mediaType": MEDIA_TYPE_DOCKER_MANIFEST,
            "size": 528,
            "digest": D1,
            "platform": {"architecture": "arm", "os": "linux", "variant": "v6"},
        },
        {
            "mediaType": MEDIA_TYPE_DOCKER_MANIFEST,
            "size": 528,
            "digest": D2,
            "platform": {"architecture": "arm", "os": "linux", "variant": "v7"},
        },
        {
            "mediaType": MEDIA_TYPE_DOCKER_MANIFEST,
            "size": 528,
            "digest": D3,
            "platform": {"architecture": "arm64", "os": "linux"},
        },
    ],
}

# Docker writes Go zero values and nulls; all of them must survive a round trip.
DOCKER_CONFIG: Dict[str, Any] = {
    "architecture": "amd64",
    "config": {
        "Hostname": "",
        "Domainname": "",
        "User": "",
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "ExposedPorts": {"80/tcp": {}},
        "Tty": False,
        "OpenStdin": False,
        "StdinOnce": False,
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["nginx", "-g", "daemon off;"],
        "Image": D4,
        "Volumes": None,
        "WorkingDir": "",
        "Entrypoint": None,
        "OnBuild": None,
        "Labels": None,
        "StopSignal": "SIGQUIT",
    },
    "container": "6c8b3d1f0a2e",
    "container_config": {"Hostname": "6c8b3d1f0a2e", "Cmd": ["/bin/sh", "-c", "#(nop) "]},
    "created": "2024-01-11T21:42:15.394938512Z",
    "docker_version": "20.10.23",
    "history": [
        {
            "created": "2024-01-11T21:42:14.9Z",
            "created_by": "/bin/sh -c #(nop) ADD file:0123 in / ",
        },
        {
            "created": "2024-01-11T21:42:15.3Z",
            "created_by": '/bin/sh -c #(nop)  CMD ["bash"]',
            "empty_layer": True,
        },
    ],
    "os": "linux",
    "rootfs": {"type": "layers", "diff_ids": [D2, D3]},
}

OCI_CONFIG: Dict[str, Any] = {
    "created": "2024-05-01T10:00:00Z",
    "author": "builder@example.invalid",
    "architecture": "arm64",
    "variant": "v8",
    "os": "linux",
    "config": {
        "User": "1001:0",
        "Env": ["LANG=C.UTF-8"],
        "Entrypoint": ["/usr/bin/app"],
        "Cmd": [],
        "WorkingDir": "/srv",
        "Labels": {"io.buildah.version": "1.35.3", "org.opencontainers.image.title": "app"},
        "Volumes": {"/data": {}},
    },
    "rootfs": {"type": "layers", "diff_ids": [D2]},
    "history": [
        {"created": "2024-05-01T10:00:00Z", "created_by": "COPY app /usr/bin/app", "comment": "x"},
        {"created_by": "ENV LANG=C.UTF-8", "empty_layer": False, "author": "me"},
    ],
}

LAYER_INFO: Dict[str, Any] = {"digest": D2, "size": 2811478, "media_type": MEDIA_TYPE_OCI_LAYER}


DOCUMENTS = [
    (ImageManifest, OCI_MANIFEST),
    (ImageManifest, DOCKER_MANIFEST),
    (ImageManifest, ARTIFACT_MANIFEST),
    (ImageIndex, OCI_INDEX),
    (ImageIndex, DOCKER_MANIFEST_LIST),
    (ImageConfig, DOCKER_CONFIG),
    (ImageConfig, OCI_CONFIG),
    (RuntimeConfig, DOCKER_CONFIG["config"]),
    (LayerInfo, LAYER_INFO),
    (LayerInfo, {"digest": D2, "size": -1, "media_type": MEDIA_TYPE_OCI_LAYER}),
    (Platform, OCI_INDEX["manifests"][3]["platform"]),
    (Descriptor, ARTIFACT_MANIFEST["config"]),
]


class TestMediaTypes:
    def test_values(self) -> None:
        assert MEDIA_TYPE_OCI_LAYER == "application/vnd.oci.image.layer.v1.tar"
        assert MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE.endswith("nondistributable.v1.tar")
        assert MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_GZIP.endswith("v1.tar+gzip")
        assert MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_ZSTD.endswith("v1.tar+zstd")
        assert MEDIA_TYPE_DOCKER_LAYER_GZIP == "application/vnd.docker.image.rootfs.diff.tar.gzip"


class TestDigest:
    @pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
    def test_of_and_properties(self, algorithm: str) -> None:
        d = Digest.of(b"hello", algorithm)
        expected = hashlib.new(algorithm, b"hello").hexdigest()
        assert d == f"{algorithm}:{expected}"
        assert d.algorithm == algorithm
        assert d.hex == expected
        h = d.hasher()
        h.update(b"hello")
        assert h.hexdigest() == expected
        assert d.hasher().hexdigest() == hashlib.new(algorithm).hexdigest()

    def test_is_a_str(self) -> None:
        d = Digest(D1)
        assert isinstance(d, str)
        assert d == D1 and hash(d) == hash(D1)
        assert {D1: 1}[d] == 1
        assert json.dumps([d]) == json.dumps([D1])
        assert repr(d) == f"Digest({D1!r})"
        assert str(d) == D1 and type(str(d)) is str

    def test_parse_keeps_digests(self) -> None:
        d = Digest(D1)
        assert Digest.parse(d) is d
        assert Digest.parse(D1) == d and isinstance(Digest.parse(D1), Digest)

    def test_copies(self) -> None:
        d = Digest(D1)
        for other in (pickle.loads(pickle.dumps(d)), copy.copy(d), copy.deepcopy(d)):
            assert other == d and type(other) is Digest

    @pytest.mark.parametrize(
        "bad",
        [
            "",
            "sha256",
            "sha256:",
            D1.upper(),
            "SHA256:" + D1[7:],
            D1[:-1],
            D1 + "0",
            D1 + "\n",
            " " + D1,
            "md5:" + "0" * 32,
            "sha256+b64u:" + "0" * 64,
            "sha384:" + "0" * 64,
            "sha512:" + "g" * 128,
            D1.replace(":", "="),
        ],
    )
    def test_invalid(self, bad: str) -> None:
        with pytest.raises(ConfigurationError, match="invalid digest"):
            Digest(bad)

    def test_error_quotes_a_truncated_value(self) -> None:
        with pytest.raises(ConfigurationError) as info:
            Digest("sha256:" + "x" * 1000)
        message = str(info.value)
        assert "'sha256:xxxx" in message and "..." in message
        assert len(message) < 250
        assert isinstance(info.value, ValueError)

    def test_not_a_string(self) -> None:
        with pytest.raises(ConfigurationError, match="must be a string"):
            Digest(42)  # type: ignore[arg-type]

    def test_unknown_algorithm(self) -> None:
        with pytest.raises(ConfigurationError, match="unsupported digest algorithm 'md5'"):
            Digest.of(b"", "md5")

    @given(st.binary(max_size=64), st.sampled_from(["sha256", "sha384", "sha512"]))
    def test_of_round_trips(self, data: bytes, algorithm: str) -> None:
        d = Digest.of(data, algorithm)
        assert Digest(str(d)) == d
        assert Digest(f"{d.algorithm}:{d.hex}") == d


@pytest.mark.parametrize(("cls", "doc"), DOCUMENTS)
def test_round_trip(cls: Any, doc: Dict[str, Any]) -> None:
    obj = cls.from_json(doc)
    out = obj.to_json()
    assert out == doc
    assert list(out) == list(doc)  # document order is kept too
    assert json.dumps(out) == json.dumps(doc)
    # The parsed object and a hand-built copy of it (which forgets the shape) are equal.
    assert cls.from_json(dataclasses.replace(obj).to_json()) == obj
    assert pickle.loads(pickle.dumps(obj)).to_json() == doc


@pytest.mark.parametrize(("cls", "doc"), [d for d in DOCUMENTS if hasattr(d[0], "from_bytes")])
def test_from_bytes(cls: Any, doc: Dict[str, Any]) -> None:
    raw = json.dumps(doc, indent=3).encode()
    assert cls.from_bytes(raw).to_json() == doc
    assert cls.from_bytes(bytearray(raw)) == cls.from_json(doc)
    assert cls.from_bytes(memoryview(raw)) == cls.from_json(doc)


def test_to_json_returns_fresh_data() -> None:
    m = ImageManifest.from_json(OCI_MANIFEST)
    out = m.to_json()
    out["layers"].clear()
    out["annotations"]["x"] = "y"
    assert m.to_json() == OCI_MANIFEST
    doc = copy.deepcopy(DOCKER_CONFIG)
    c = ImageConfig.from_json(doc)
    doc["container_config"]["Cmd"].append("changed")
    assert c.to_json() == DOCKER_CONFIG


class TestParsedValues:
    def test_manifest(self) -> None:
        m = ImageManifest.from_json(OCI_MANIFEST)
        assert m.schema_version == 2 and m.media_type == MEDIA_TYPE_OCI_MANIFEST
        assert m.config == Descriptor(MEDIA_TYPE_OCI_CONFIG, Digest(D1), 1469)
        assert isinstance(m.layers, tuple) and len(m.layers) == 2
        assert isinstance(m.layers[0].digest, Digest) and m.layers[0].digest == D2
        assert m.layers[1].annotations["io.github.containers.zstd-chunked.manifest-position"]
        assert m.subject is None and m.artifact_type is None and m.extra == {}

    def test_artifact(self) -> None:
        m = ImageManifest.from_json(ARTIFACT_MANIFEST)
        assert m.config.data == "e30="
        assert m.subject is not None and m.subject.digest == D3
        assert m.artifact_type == "application/vnd.dev.sigstore.bundle.v0.3+json"

    def test_docker_manifest_urls(self) -> None:
        m = ImageManifest.from_json(DOCKER_MANIFEST)
        assert m.layers[1].urls == ("https://mcr.microsoft.com/v2/windows/blobs/" + D3,)

    def test_docker_config(self) -> None:
        c = ImageConfig.from_json(DOCKER_CONFIG)
        assert c.platform == Platform("amd64", "linux")
        assert c.created == "2024-01-11T21:42:15.394938512Z"
        assert c.rootfs == RootFS("layers", (Digest(D2), Digest(D3)))
        assert c.history[1] == History(
            created="2024-01-11T21:42:15.3Z",
            created_by='/bin/sh -c #(nop)  CMD ["bash"]',
            empty_layer=True,
        )
        assert not c.history[0].empty_layer
        rc = c.config
        assert rc is not None
        assert rc.entrypoint is None and rc.cmd == ("nginx", "-g", "daemon off;")
        assert rc.labels == {} and rc.volumes == {} and rc.user == ""
        assert rc.exposed_ports == {"80/tcp": {}} and rc.stop_signal == "SIGQUIT"
        assert rc.extra["Image"] == D4 and rc.extra["OnBuild"] is None
        assert c.extra["docker_version"] == "20.10.23"

    def test_oci_config(self) -> None:
        c = ImageConfig.from_json(OCI_CONFIG)
        assert c.platform == Platform("arm64", "linux", variant="v8")
        assert c.author == "builder@example.invalid"
        assert c.config is not None and c.config.cmd == () and c.config.entrypoint is not None
        assert c.config.labels["io.buildah.version"] == "1.35.3"

    def test_platform_keys(self) -> None:
        p = Platform.from_json(OCI_INDEX["manifests"][3]["platform"])
        assert p.os_version == "10.0.20348.2227" and p.os_features == ("win32k",)

    def test_layer_info(self) -> None:
        info = LayerInfo.from_json(LAYER_INFO)
        assert info == LayerInfo(Digest(D2), 2811478, MEDIA_TYPE_OCI_LAYER)
        d = Descriptor(MEDIA_TYPE_OCI_LAYER_GZIP, Digest(D1), 10, annotations={"a": "b"})
        assert LayerInfo.from_descriptor(d) == LayerInfo(Digest(D1), 10, MEDIA_TYPE_OCI_LAYER_GZIP)
        assert LayerInfo.from_json({**LAYER_INFO, "size": -1}).size == -1


class TestNullsAndEmpties:
    def test_nulls_are_accepted_and_kept(self) -> None:
        doc = {
            "mediaType": MEDIA_TYPE_OCI_LAYER,
            "digest": D1,
            "size": 0,
            "urls": None,
            "annotations": None,
            "platform": None,
            "artifactType": None,
            "data": None,
        }
        d = Descriptor.from_json(doc)
        assert d == Descriptor(MEDIA_TYPE_OCI_LAYER, Digest(D1), 0)
        assert d.to_json() == doc

    def test_empty_arrays_and_false_are_kept(self) -> None:
        doc = {"created_by": "x", "empty_layer": False}
        assert History.from_json(doc).to_json() == doc
        doc2 = {"type": "layers", "diff_ids": []}
        assert RootFS.from_json(doc2).to_json() == doc2
        assert RootFS.from_json({"type": "layers"}).to_json() == {"type": "layers"}

    def test_null_and_empty_entrypoint_differ(self) -> None:
        assert RuntimeConfig.from_json({"Entrypoint": None}).entrypoint is None
        assert RuntimeConfig.from_json({"Entrypoint": []}).entrypoint == ()
        assert RuntimeConfig.from_json({}).entrypoint is None
        assert RuntimeConfig(entrypoint=()).to_json() == {"Entrypoint": []}
        assert RuntimeConfig().to_json() == {}

    def test_lenient_config(self) -> None:
        c = ImageConfig.from_json({})
        assert c.architecture == "" and c.rootfs == RootFS() and c.to_json() == {}


class TestHandBuilt:
    def test_manifest_canonical_json(self) -> None:
        config = Descriptor(MEDIA_TYPE_OCI_CONFIG, Digest(D1), 3)
        m = ImageManifest(config, [Descriptor(MEDIA_TYPE_OCI_LAYER_GZIP, D2, 5)])  # type: ignore[arg-type]
        assert isinstance(m.layers, tuple) and isinstance(m.layers[0].digest, Digest)
        assert m.to_json() == {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": {"mediaType": MEDIA_TYPE_OCI_CONFIG, "digest": D1, "size": 3},
            "layers": [{"mediaType": MEDIA_TYPE_OCI_LAYER_GZIP, "digest": D2, "size": 5}],
        }
        assert ImageManifest.from_json(m.to_json()) == m
        assert type(m.to_json()["config"]["digest"]) is str

    def test_required_members_always_emitted(self) -> None:
        assert ImageIndex().to_json() == {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_INDEX,
            "manifests": [],
        }
        assert ImageConfig().to_json() == {
            "architecture": "",
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": []},
        }
        assert LayerInfo(Digest(D1), -1, "x").to_json() == {
            "digest": D1,
            "size": -1,
            "media_type": "x",
        }

    def test_replace_emits_canonical_form(self) -> None:
        d = Descriptor.from_json(
            {"mediaType": "x", "digest": D1, "size": 1, "urls": [], "annotations": None}
        )
        assert dataclasses.replace(d, size=2).to_json() == {
            "mediaType": "x",
            "digest": D1,
            "size": 2,
        }

    def test_extra_is_emitted_after_modelled_members(self) -> None:
        d = Descriptor("x", Digest(D1), 1, extra={"zz": [1, {"a": None}]})
        assert list(d.to_json()) == ["mediaType", "digest", "size", "zz"]
        assert Descriptor.from_json(d.to_json()) == d

    def test_validation(self) -> None:
        with pytest.raises(ConfigurationError, match=r"Descriptor\.digest: invalid digest"):
            Descriptor("x", "sha256:nope", 1)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match=r"Descriptor\.size: expected a size >= 0"):
            Descriptor("x", Digest(D1), -1)
        with pytest.raises(ConfigurationError, match=r"LayerInfo\.size"):
            LayerInfo(Digest(D1), -2, "x")
        with pytest.raises(ConfigurationError, match=r"RootFS\.diff_ids\[0\]"):
            RootFS(diff_ids=("nope",))  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="must not hold modelled members: size"):
            Descriptor("x", Digest(D1), 1, extra={"size": 2})

    def test_frozen(self) -> None:
        d = Descriptor("x", Digest(D1), 1)
        with pytest.raises(dataclasses.FrozenInstanceError):
            d.size = 2  # type: ignore[misc]


class TestIndexFind:
    def test_find(self) -> None:
        index = ImageIndex.from_json(OCI_INDEX)
        amd64 = index.find("linux", "amd64")
        assert amd64 is not None and amd64.digest == D1
        win = index.find("windows", "amd64")
        assert win is not None and win.digest == D4
        assert index.find("linux", "s390x") is None
        assert index.find("linux", "amd64", "v2") is None

    def test_arm64_v8_is_the_default_variant(self) -> None:
        oci = ImageIndex.from_json(OCI_INDEX)  # lists arm64 as v8
        docker = ImageIndex.from_json(DOCKER_MANIFEST_LIST)  # lists arm64 without variant
        for index, digest in ((oci, D2), (docker, D3)):
            for variant in (None, "v8"):
                found = index.find("linux", "arm64", variant)
                assert found is not None and found.digest == digest

    def test_variants(self) -> None:
        index = ImageIndex.from_json(DOCKER_MANIFEST_LIST)
        v7 = index.find("linux", "arm", "v7")
        assert v7 is not None and v7.digest == D2
        first = index.find("linux", "arm")
        assert first is not None and first.digest == D1
        assert index.find("linux", "arm", "v8") is None


class TestErrors:
    @pytest.mark.parametrize("cls", [ImageManifest, ImageIndex, ImageConfig, LayerInfo, Platform])
    @pytest.mark.parametrize("value", [[], "x", 1, None, True])
    def test_not_an_object(self, cls: Any, value: Any) -> None:
        with pytest.raises(ConfigurationError, match="expected a JSON object"):
            cls.from_json(value)

    @pytest.mark.parametrize(
        ("change", "match"),
        [
            ({"schemaVersion": "2"}, r"ImageManifest\.schemaVersion: expected an integer, got a"),
            ({"schemaVersion": True}, r"schemaVersion: expected an integer, got a boolean"),
            ({"schemaVersion": 1}, "Docker schema 1"),
            ({"schemaVersion": None}, r"schemaVersion: required member is null"),
            ({"config": None}, r"ImageManifest\.config: required member is null"),
            ({"config": []}, r"ImageManifest\.config: expected a JSON object, got an array"),
            ({"layers": {}}, r"ImageManifest\.layers: expected an array, got an object"),
            ({"mediaType": 5}, r"ImageManifest\.mediaType: expected a string, got an integer"),
            ({"mediaType": MEDIA_TYPE_OCI_INDEX}, "use ImageIndex"),
            ({"annotations": {"a": 1}}, r"ImageManifest\.annotations\['a'\]: expected a string"),
            ({"annotations": []}, r"ImageManifest\.annotations: expected an object"),
            ({"subject": "x"}, r"ImageManifest\.subject: expected a JSON object, got a string"),
        ],
    )
    def test_manifest_fields(self, change: Dict[str, Any], match: str) -> None:
        with pytest.raises(ConfigurationError, match=match):
            ImageManifest.from_json({**OCI_MANIFEST, **change})

    @pytest.mark.parametrize(
        ("layer", "match"),
        [
            ({"digest": D1, "size": 1}, r"layers\[1\]\.mediaType: required member is missing"),
            ({"mediaType": "x", "size": 1}, r"layers\[1\]\.digest: required member is missing"),
            ({"mediaType": "x", "digest": D1}, r"layers\[1\]\.size: required member is missing"),
            (
                {"mediaType": "x", "digest": D1, "size": 1.0},
                r"\.size: expected a size >= 0, got a num",
            ),
            (
                {"mediaType": "x", "digest": D1, "size": -1},
                r"layers\[1\]\.size: expected a size >= 0",
            ),
            (
                {"mediaType": "x", "digest": D1, "size": "1"},
                r"\.size: expected a size >= 0, got a str",
            ),
            (
                {"mediaType": "x", "digest": "sha256:abc", "size": 1},
                r"layers\[1\]\.digest: invalid",
            ),
            ({"mediaType": "x", "digest": 5, "size": 1}, r"layers\[1\]\.digest: expected a string"),
            (
                {"mediaType": "x", "digest": D1, "size": 1, "urls": "u"},
                r"\.urls: expected an array",
            ),
            (
                {"mediaType": "x", "digest": D1, "size": 1, "urls": [1]},
                r"\.urls\[0\]: expected a str",
            ),
            (
                {"mediaType": "x", "digest": D1, "size": 1, "platform": {"os": "linux"}},
                r"layers\[1\]\.platform\.architecture: required member is missing",
            ),
            (
                {
                    "mediaType": "x",
                    "digest": D1,
                    "size": 1,
                    "platform": {"os": "l", "architecture": 1},
                },
                r"layers\[1\]\.platform\.architecture: expected a string",
            ),
        ],
    )
    def test_descriptor_fields_name_their_path(self, layer: Dict[str, Any], match: str) -> None:
        doc = copy.deepcopy(OCI_MANIFEST)
        doc["layers"][1] = layer
        with pytest.raises(ConfigurationError, match=match):
            ImageManifest.from_json(doc)

    @pytest.mark.parametrize(
        ("change", "match"),
        [
            ({"architecture": 1}, r"ImageConfig\.architecture: expected a string"),
            ({"rootfs": {"type": "layers", "diff_ids": ["x"]}}, r"rootfs\.diff_ids\[0\]: invalid"),
            ({"rootfs": {"diff_ids": []}}, r"rootfs\.type: required member is missing"),
            ({"history": [{"empty_layer": "yes"}]}, r"history\[0\]\.empty_layer: expected a bool"),
            ({"config": {"Env": "A=1"}}, r"ImageConfig\.config\.Env: expected an array"),
            ({"config": {"Entrypoint": "sh"}}, r"config\.Entrypoint: expected an array"),
            (
                {"config": {"Labels": {"a": None}}},
                r"config\.Labels\['a'\]: expected a string, got null",
            ),
            ({"config": {"ExposedPorts": ["80/tcp"]}}, r"config\.ExposedPorts: expected an object"),
            ({"os.features": "x"}, r"ImageConfig\.os\.features: expected an array"),
        ],
    )
    def test_config_fields(self, change: Dict[str, Any], match: str) -> None:
        with pytest.raises(ConfigurationError, match=match):
            ImageConfig.from_json({**OCI_CONFIG, **change})

    def test_index(self) -> None:
        with pytest.raises(ConfigurationError, match=r"ImageIndex\.manifests: required|use Image"):
            ImageIndex.from_json({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_MANIFEST})
        with pytest.raises(ConfigurationError, match="use ImageManifest"):
            ImageIndex.from_json({"schemaVersion": 2, "mediaType": MEDIA_TYPE_DOCKER_MANIFEST})
        with pytest.raises(ConfigurationError, match=r"ImageIndex\.manifests\[0\]\.size"):
            ImageIndex.from_json(
                {"schemaVersion": 2, "manifests": [{"mediaType": "x", "digest": D1}]}
            )

    def test_layer_info(self) -> None:
        with pytest.raises(
            ConfigurationError, match=r"LayerInfo\.size: expected a size >= 0 or -1"
        ):
            LayerInfo.from_json({**LAYER_INFO, "size": -2})
        with pytest.raises(ConfigurationError, match=r"LayerInfo\.media_type: required"):
            LayerInfo.from_json({"digest": D1, "size": 1})

    def test_non_string_member_names(self) -> None:
        with pytest.raises(ConfigurationError, match="member names must be strings"):
            Platform.from_json({"architecture": "a", "os": "b", 1: "x"})  # type: ignore[dict-item]
        with pytest.raises(ConfigurationError, match=r"annotations: member names must be strings"):
            Descriptor.from_json(
                {"mediaType": "x", "digest": D1, "size": 1, "annotations": {1: "x"}}
            )

    @pytest.mark.parametrize(
        "raw",
        [b"", b"{", b"[]", b'"x"', b"\xff\xfe", b'{"schemaVersion": 2, "config": {}}', b"null"],
    )
    def test_from_bytes(self, raw: bytes) -> None:
        with pytest.raises(ConfigurationError, match="ImageManifest"):
            ImageManifest.from_bytes(raw)

    def test_from_bytes_needs_bytes(self) -> None:
        with pytest.raises(ConfigurationError, match="expected bytes, got a string"):
            ImageManifest.from_bytes("{}")  # type: ignore[arg-type]

    @pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 900, 100_000])
    def test_deep_nesting(self, depth: int) -> None:
        # 900 levels decode (under Python's recursion limit) and are still refused, so no
        # later walk over the extra members (to_json, json.dumps) can overflow the stack
        raw = b'{"schemaVersion": 2, "x": ' + b"[" * depth + b"]" * depth + b"}"
        with pytest.raises(ConfigurationError, match="nested more than 256 levels deep"):
            ImageManifest.from_bytes(raw)

    def test_nesting_within_the_bound(self) -> None:
        doc: Any = []
        for _ in range(MAX_JSON_DEPTH - 2):  # with the manifest object: the bound exactly
            doc = [doc]
        raw = json.dumps({**OCI_MANIFEST, "x": doc}).encode()
        manifest = ImageManifest.from_bytes(raw)
        assert json.dumps(manifest.to_json()).encode() == raw

    def test_errors_are_value_errors(self) -> None:
        with pytest.raises(ValueError):
            Platform.from_json({})


# --- property tests --------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
texts = st.text(max_size=8)
text_lists = st.lists(texts, max_size=3)
text_maps = st.dictionaries(texts, texts, max_size=3)
digests = st.sampled_from([("sha256", 64), ("sha384", 96), ("sha512", 128)]).flatmap(
    lambda a: st.text("0123456789abcdef", min_size=a[1], max_size=a[1]).map(lambda h: f"{a[0]}:{h}")
)


@st.composite
def documents(draw: Any, required: Dict[str, Any], optional: Dict[str, Any]) -> Dict[str, Any]:
    """A JSON object with the required members, each optional one absent, null or set, and
    unknown members, in a random order."""
    items = [(key, draw(strategy)) for key, strategy in required.items()]
    for key, strategy in optional.items():
        choice = draw(st.sampled_from(["absent", "null", "value"]))
        if choice != "absent":
            items.append((key, None if choice == "null" else draw(strategy)))
    known = set(required) | set(optional)
    unknown = st.text(max_size=6).filter(lambda k: k not in known)
    items += draw(st.dictionaries(unknown, json_values, max_size=2)).items()
    return dict(draw(st.permutations(items)))


platforms = documents(
    {"architecture": texts, "os": texts},
    {"variant": texts, "os.version": texts, "os.features": text_lists},
)
descriptors = documents(
    {"mediaType": texts, "digest": digests, "size": st.integers(0, 2**53)},
    {
        "urls": text_lists,
        "annotations": text_maps,
        "platform": platforms,
        "artifactType": texts,
        "data": texts,
    },
)
common = {"annotations": text_maps, "subject": descriptors, "artifactType": texts}
manifests = documents(
    {"schemaVersion": st.integers(2, 3), "config": descriptors},
    {
        "mediaType": st.sampled_from([MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST, "x"]),
        "layers": st.lists(descriptors, max_size=3),
        **common,
    },
)
indexes = documents(
    {"schemaVersion": st.integers(2, 3)},
    {
        "mediaType": st.sampled_from([MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST]),
        "manifests": st.lists(descriptors, max_size=3),
        **common,
    },
)
runtime_configs = documents(
    {},
    {
        "User": texts,
        "ExposedPorts": st.dictionaries(texts, json_values, max_size=2),
        "Env": text_lists,
        "Entrypoint": text_lists,
        "Cmd": text_lists,
        "Volumes": st.dictionaries(texts, json_values, max_size=2),
        "WorkingDir": texts,
        "Labels": text_maps,
        "StopSignal": texts,
    },
)
histories = documents(
    {},
    {
        "created": texts,
        "created_by": texts,
        "author": texts,
        "comment": texts,
        "empty_layer": st.booleans(),
    },
)
configs = documents(
    {},
    {
        "architecture": texts,
        "os": texts,
        "variant": texts,
        "os.version": texts,
        "os.features": text_lists,
        "created": texts,
        "author": texts,
        "config": runtime_configs,
        "rootfs": documents({"type": texts}, {"diff_ids": st.lists(digests, max_size=2)}),
        "history": st.lists(histories, max_size=2),
    },
)
layer_infos = documents(
    {"digest": digests, "size": st.integers(-1, 2**53), "media_type": texts}, {}
)

MODELS = st.one_of(
    st.tuples(st.just(Platform), platforms),
    st.tuples(st.just(Descriptor), descriptors),
    st.tuples(st.just(ImageManifest), manifests),
    st.tuples(st.just(ImageIndex), indexes),
    st.tuples(st.just(ImageConfig), configs),
    st.tuples(st.just(LayerInfo), layer_infos),
)


@settings(max_examples=300, deadline=None)
@given(MODELS)
def test_round_trip_property(case: Any) -> None:
    cls, doc = case
    obj = cls.from_json(doc)
    out = obj.to_json()
    assert out == doc
    assert list(out) == list(doc)
    assert cls.from_bytes(json.dumps(doc).encode()).to_json() == doc
    # Without the remembered shape the JSON may differ, but it parses to an equal object.
    assert cls.from_json(dataclasses.replace(obj).to_json()) == obj


KEYS = [
    "schemaVersion",
    "mediaType",
    "config",
    "layers",
    "manifests",
    "digest",
    "size",
    "urls",
    "annotations",
    "platform",
    "architecture",
    "os",
    "variant",
    "os.version",
    "os.features",
    "rootfs",
    "history",
    "type",
    "diff_ids",
    "media_type",
    "Env",
    "Entrypoint",
    "Labels",
]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        [
            Platform,
            Descriptor,
            ImageManifest,
            ImageIndex,
            ImageConfig,
            LayerInfo,
            RootFS,
            History,
            RuntimeConfig,
        ]
    ),
    st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6),
)
def test_arbitrary_json_fails_cleanly(cls: Any, doc: Dict[str, Any]) -> None:
    try:
        obj = cls.from_json(doc)
    except ConfigurationError:
        return
    assert obj.to_json() == doc
