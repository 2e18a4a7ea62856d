"""Decompression and streaming tar: sniffing, draining, diff_id checks."""

from __future__ import annotations

import bz2
import io
import lzma
import tarfile

import pytest

from containers_image_proxy import BlobVerificationError, ProxyError
from containers_image_proxy.layers import (
    DecompressingReader,
    LayerDigestError,
    LayerFormatError,
    LayerStream,
    iter_layer,
)
from containers_image_proxy.layers._compression import sniff
from testbed.layers import (
    DOCKER_GZIP,
    OCI_GZIP,
    OCI_TAR,
    OCI_ZSTD,
    TrackingReader,
    d,
    f,
    gz,
    hl,
    make_tar,
    sha256,
    sym,
    zst,
    zstd_skippable,
)

TAR = make_tar([d("etc"), f("etc/hostname", b"box\n"), f("big", bytes(range(256)) * 4096)])


def decompress(data: bytes, media_type: str = "") -> tuple[bytes, TrackingReader]:
    log: list[TrackingReader] = []
    src = TrackingReader(data, log)
    reader = DecompressingReader(src, media_type)
    out = io.BufferedReader(reader).read()
    return out, src


@pytest.mark.parametrize(
    ("blob", "media_type", "kind"),
    [
        (TAR, OCI_TAR, "none"),
        (gz(TAR), OCI_GZIP, "gzip"),
        (gz(TAR), DOCKER_GZIP, "gzip"),
        (zst(TAR), OCI_ZSTD, "zstd"),
        (bz2.compress(TAR), "", "bzip2"),
        (lzma.compress(TAR), "", "xz"),
        # Mislabelled: docker-daemon/containers-storage serve plain tars as gzip/zstd ...
        (TAR, OCI_GZIP, "none"),
        (TAR, OCI_ZSTD, "none"),
        (TAR, DOCKER_GZIP, "none"),
        # ... and a compressed blob may be labelled as a plain tar.
        (gz(TAR), OCI_TAR, "gzip"),
        (zst(TAR), OCI_GZIP, "zstd"),
    ],
)
def test_bytes_decide_the_compression(blob: bytes, media_type: str, kind: str) -> None:
    out, src = decompress(blob, media_type)
    assert out == TAR
    assert sniff(blob[:512]) == kind
    assert src.reached_eof


def test_plain_tar_whose_first_name_starts_like_bzip2_is_not_taken_for_it() -> None:
    tar = make_tar([f("BZh91AY&SY-not-bzip2", b"x")])
    assert sniff(tar[:512]) == "none"
    assert decompress(tar)[0] == tar


def test_encrypted_layers_are_refused() -> None:
    with pytest.raises(LayerFormatError, match="encrypted"):
        DecompressingReader(io.BytesIO(gz(TAR)), OCI_GZIP + "+encrypted")


@pytest.mark.parametrize("trailing", [b"\0" * 4096, b"garbage after the stream" * 1000])
@pytest.mark.parametrize("compress", [gz, zst])
def test_trailing_data_after_the_stream_is_read_and_dropped(compress, trailing) -> None:  # type: ignore[no-untyped-def]
    out, src = decompress(compress(TAR) + trailing)
    assert out == TAR
    assert src.reached_eof


def test_concatenated_gzip_members_are_all_decoded() -> None:
    assert decompress(gz(TAR[:5000]) + gz(TAR[5000:]))[0] == TAR


def test_zstd_frames_and_skippable_frames_are_all_read() -> None:
    # zstd:chunked: many frames, then skippable frames with metadata at the end.
    blob = (
        zst(TAR[:3000])
        + zstd_skippable(b"manifest" * 100, 3)
        + zst(TAR[3000:])
        + zstd_skippable(b"footer", 15)
    )
    out, src = decompress(blob, OCI_ZSTD)
    assert out == TAR
    assert src.reached_eof


def test_a_blob_starting_with_a_skippable_frame_is_zstd() -> None:
    assert decompress(zstd_skippable(b"meta") + zst(TAR))[0] == TAR


@pytest.mark.parametrize("compress", [gz, zst, bz2.compress])
def test_truncated_compressed_data_is_a_format_error(compress) -> None:  # type: ignore[no-untyped-def]
    blob = compress(TAR)
    with pytest.raises(LayerFormatError, match="truncated|corrupt"):
        decompress(blob[: len(blob) // 2])


def test_corrupt_gzip_is_a_format_error() -> None:
    blob = bytearray(gz(TAR))
    blob[len(blob) // 2] ^= 0xFF
    blob[len(blob) // 2 + 1] ^= 0xFF
    with pytest.raises(LayerFormatError) as info:
        decompress(bytes(blob))
    assert isinstance(info.value, ProxyError)


# --- LayerStream ---------------------------------------------------------------------------


def entries_of(stream: LayerStream) -> list[tuple[str, bytes | None]]:
    return [(i.name, data.read() if data else None) for i, data in stream]


def test_stream_yields_entries_with_data_and_checks_diff_id() -> None:
    log: list[TrackingReader] = []
    stream = LayerStream(TrackingReader(gz(TAR), log), OCI_GZIP, diff_id=sha256(TAR))
    got = entries_of(stream)
    assert [n for n, _ in got] == ["etc", "etc/hostname", "big"]
    assert got[1][1] == b"box\n"
    assert got[0][1] is None
    assert stream.finish() == sha256(TAR)
    assert log[0].reached_eof


def test_entries_can_be_skipped_without_reading_their_data() -> None:
    stream = LayerStream(io.BytesIO(zst(TAR)), OCI_ZSTD, diff_id=sha256(TAR))
    names = [info.name for info, _ in stream]
    assert names == ["etc", "etc/hostname", "big"]
    stream.finish()


def test_diff_id_mismatch_raises_after_reading_everything() -> None:
    log: list[TrackingReader] = []
    wrong = sha256(b"something else")
    stream = LayerStream(TrackingReader(gz(TAR), log), OCI_GZIP, diff_id=wrong, layer="sha256:x")
    entries_of(stream)
    with pytest.raises(LayerDigestError) as info:
        stream.finish()
    assert isinstance(info.value, BlobVerificationError)
    assert info.value.expected == wrong and info.value.actual == sha256(TAR)
    assert log[0].reached_eof


def test_bytes_after_the_tar_end_marker_count_in_the_diff_id() -> None:
    tar = TAR + b"\0" * 10240 + b"junk after the archive"
    stream = LayerStream(io.BytesIO(gz(tar)), OCI_GZIP, diff_id=sha256(tar))
    entries_of(stream)
    assert stream.finish() == sha256(tar)


def test_iter_layer_checks_at_the_end() -> None:
    items = list(iter_layer(io.BytesIO(TAR), OCI_TAR, diff_id=sha256(TAR)))
    assert len(items) == 3
    with pytest.raises(LayerDigestError):
        list(iter_layer(io.BytesIO(TAR), OCI_TAR, diff_id=sha256(b"")))


def test_empty_stream_is_an_empty_layer() -> None:
    stream = LayerStream(io.BytesIO(b""), OCI_TAR, diff_id=sha256(b""))
    assert entries_of(stream) == []
    stream.finish()
    empty_tar = make_tar([])
    stream = LayerStream(io.BytesIO(gz(empty_tar)), OCI_GZIP, diff_id=sha256(empty_tar))
    assert entries_of(stream) == []
    stream.finish()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_and_non_ascii_names(fmt: int) -> None:
    long = "/".join(["d" * 60] * 4) + "/file-" + "x" * 120
    names = [long, "répertoire/ファイル", "emoji-🙂"]
    tar = make_tar([f(n, n.encode()) for n in names] + [sym("l" * 150, long)], fmt=fmt)
    stream = LayerStream(io.BytesIO(tar), OCI_TAR, diff_id=sha256(tar))
    got = [(i.name, i.linkname, data.read() if data else None) for i, data in stream]
    assert [g[0] for g in got] == [*names, "l" * 150]
    assert got[0][2] == long.encode()
    assert got[3][1] == long
    stream.finish()


def test_corrupt_tar_is_a_format_error() -> None:
    junk = b"this is not a tar archive at all" * 40
    stream = LayerStream(io.BytesIO(junk), OCI_TAR)
    with pytest.raises(LayerFormatError):
        entries_of(stream)


def test_truncated_tar_data_is_a_format_error() -> None:
    tar = make_tar([f("big", b"x" * 100_000)])
    stream = LayerStream(io.BytesIO(tar[:50_000]), OCI_TAR)
    with pytest.raises(LayerFormatError):
        entries_of(stream)


def test_unsupported_diff_id_algorithm() -> None:
    with pytest.raises(LayerFormatError, match="diff_id"):
        LayerStream(io.BytesIO(TAR), OCI_TAR, diff_id="md5:abc")


def test_sha512_diff_ids_are_checked() -> None:
    import hashlib

    did = "sha512:" + hashlib.sha512(TAR).hexdigest()
    stream = LayerStream(io.BytesIO(TAR), OCI_TAR, diff_id=did)
    entries_of(stream)
    assert stream.finish() == did


def test_hardlink_entries_have_no_data_object() -> None:
    tar = make_tar([f("a", b"1"), hl("b", "a")])
    got = entries_of(LayerStream(io.BytesIO(tar), OCI_TAR))
    assert got == [("a", b"1"), ("b", None)]


def test_only_tar_layer_media_types_are_filesystem_layers() -> None:
    from containers_image_proxy.layers._compression import check_filesystem_layer

    for media_type in (
        OCI_GZIP,
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "",  # Docker schema 1: no media type, always a tar
    ):
        check_filesystem_layer(media_type)
    for media_type in ("application/wasm", "application/vnd.oci.image.config.v1+json"):
        with pytest.raises(LayerFormatError, match="is not a filesystem layer") as caught:
            check_filesystem_layer(media_type, "sha256:" + "a" * 64)
        assert media_type in str(caught.value) and caught.value.layer == "sha256:" + "a" * 64
    with pytest.raises(LayerFormatError, match="encrypted"):
        check_filesystem_layer(OCI_GZIP + "+encrypted")
