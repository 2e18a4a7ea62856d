"""Layers that once read differently for us and for runtimes (issue 10), each still with a
valid diff_id: what Go's archive/tar sees, what our reader sees, and what ``ls``, ``cat``
and ``unpack`` see. Each case also shows that tarfile, our former reader, got it wrong,
so that the archive really is the attack it is named after.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import tracemalloc
import zlib
from pathlib import Path

import pytest

from containers_image_proxy.layers import (
    LayerFormatError,
    LayerStream,
    list_dir_from_layers,
    read_file_from_layers,
    unpack_layers,
)
from testbed.layers import OCI_GZIP, OCI_TAR, Blob, Image, gz, sha256
from testbed.tarcraft import END, GNU, GoLister, compare, entry, header, our_listing, pax

EVIL = b"planted by the layer\n"


def tarfile_names(archive: bytes) -> list[str]:
    """The names Python's tarfile reads (stopping quietly where it stops)."""
    names = []
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        for member in tar:
            names.append(member.name)
    return names


def layer(archive: bytes) -> Image:
    return Image([Blob(gz(archive), OCI_GZIP, sha256(archive))])


def stream_names(archive: bytes) -> list[str]:
    stream = LayerStream(io.BytesIO(archive), OCI_TAR, diff_id=sha256(archive))
    names = [info.name for info, _ in stream]
    stream.finish()
    return names


def size_with_leading_nul() -> bytes:
    """A file whose size field starts with a NUL. Go reads the size; tarfile reads 0, and
    takes the file's data for a header whose size swallows the next entry, etc/evil."""
    decoy = header(name=b"decoy", size=512 + 512 + 512)
    carrier = header(name=b"etc/motd", size=b"\x00" + b"%010o" % 1024) + decoy + bytes(512)
    return carrier + entry(EVIL, name=b"etc/evil") + END


def test_regression_size_with_leading_nul_not_swallowing_next_entry(
    go_tarlist: GoLister,
) -> None:
    archive = size_with_leading_nul()
    assert "etc/evil" not in tarfile_names(archive)
    go = go_tarlist.list(archive)
    assert [e["name"] for e in go.entries] == [b"etc/motd", b"etc/evil"]
    compare(go, our_listing(archive))
    assert stream_names(archive) == ["etc/motd", "etc/evil"]
    img = layer(archive)
    assert read_file_from_layers(img.sources, "etc/evil") == EVIL
    assert [e.name for e in list_dir_from_layers(img.sources, "/etc")] == ["evil", "motd"]


def test_regression_size_with_leading_nul_unpacks_what_runtimes_unpack(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    unpack_layers(layer(size_with_leading_nul()).sources, dest, rootless=True)
    assert (dest / "etc/evil").read_bytes() == EVIL
    assert (dest / "etc/motd").stat().st_size == 1024
    assert not (dest / "decoy").exists()


def pax_global_path() -> bytes:
    return (
        pax([(b"path", b"etc/evil")], typeflag=b"g")
        + entry(b"a", name=b"a")
        + entry(EVIL, name=b"b")
        + END
    )


def test_regression_pax_global_path_not_applied(go_tarlist: GoLister) -> None:
    archive = pax_global_path()
    assert tarfile_names(archive) == ["etc/evil", "etc/evil"]
    go = go_tarlist.list(archive)
    # Go returns the global header itself, and applies it to nothing
    assert [(e["name"], chr(e["typeflag"])) for e in go.entries] == [
        (b"etc/evil", "g"),
        (b"a", "0"),
        (b"b", "0"),
    ]
    compare(go, our_listing(archive))
    assert stream_names(archive) == ["a", "b"]  # the global header is not an entry to apply
    img = layer(archive)
    with pytest.raises(FileNotFoundError):
        read_file_from_layers(img.sources, "etc/evil")
    assert read_file_from_layers(img.sources, "b") == EVIL


def corrupt_second_header() -> bytes:
    return entry(b"one", name=b"a") + b"\x01" * 512 + entry(EVIL, name=b"etc/evil") + END


def test_regression_corrupt_second_header_is_an_error(go_tarlist: GoLister) -> None:
    archive = corrupt_second_header()
    assert tarfile_names(archive) == ["a"]  # tarfile just stops
    go = go_tarlist.list(archive)
    assert go.end == "error" and "invalid tar header" in go.error
    compare(go, our_listing(archive))
    with pytest.raises(
        LayerFormatError, match=r"layer sha256:\w+: invalid tar header at byte 1024"
    ):
        read_file_from_layers(layer(archive).sources, "etc/evil")
    with pytest.raises(LayerFormatError, match="at byte 1024"):
        stream_names(archive)


RECORD = 128 << 20


def huge_pax_layer() -> tuple[bytes, str]:
    """A gzip layer (~130 KiB) holding a 128 MiB PAX record, and its diff_id; built in
    pieces, never whole."""
    import hashlib

    body_len = RECORD
    head = b"%d comment=" % body_len
    pieces = [
        header(name=b"PaxHeaders/x", typeflag=b"x", size=body_len),
        head,
    ]
    tail = [b"\n", bytes(-body_len % 512), entry(b"x", name=b"after"), END]
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    digest = hashlib.sha256()
    out = []
    filler = b"a" * (1 << 20)
    left = body_len - len(head) - 1
    for p in pieces:
        digest.update(p)
        out.append(comp.compress(p))
    while left:
        chunk = filler[: min(left, len(filler))]
        digest.update(chunk)
        out.append(comp.compress(chunk))
        left -= len(chunk)
    for p in tail:
        digest.update(p)
        out.append(comp.compress(p))
    out.append(comp.flush())
    return b"".join(out), "sha256:" + digest.hexdigest()


def test_regression_huge_pax_record_refused_before_buffering(go_tarlist: GoLister) -> None:
    blob, diff_id = huge_pax_layer()
    assert len(blob) < 1 << 20
    tracemalloc.start()
    try:
        stream = LayerStream(io.BytesIO(blob), OCI_GZIP, diff_id=diff_id)
        with pytest.raises(LayerFormatError, match=r"extended header of \d+ bytes"):
            list(stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak
    # Go refuses it too (it reads 1 MiB + 1 of it, then stops)
    proc = subprocess.Popen([str(go_tarlist.binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    d = zlib.decompressobj(31)
    try:
        for i in range(0, len(blob), 4096):
            proc.stdin.write(d.decompress(blob[i : i + 4096], 1 << 20))
            while d.unconsumed_tail:
                proc.stdin.write(d.decompress(d.unconsumed_tail, 1 << 20))
        proc.stdin.close()
    except BrokenPipeError:
        pass
    out = proc.stdout.read()
    assert proc.wait() == 0
    assert b'"end":"error"' in out and b"header field too long" in out


@pytest.mark.parametrize("typeflag", [b"x", b"g", b"L", b"K"])
def test_extended_headers_over_one_mib_are_refused(go_tarlist: GoLister, typeflag: bytes) -> None:
    archive = entry(b"7 a=b\n".ljust((1 << 20) + 1, b"\n"), typeflag=typeflag) + END
    go = go_tarlist.list(archive)
    assert go.end == "error" and "too long" in go.error
    compare(go, our_listing(archive))


def test_extended_header_of_exactly_one_mib_is_read(go_tarlist: GoLister) -> None:
    archive = entry(b"L" * (1 << 20), typeflag=b"L", fmt=GNU) + entry(b"x", fmt=GNU) + END
    go = go_tarlist.list(archive)
    assert go.end == "EOF" and go.entries[0]["name"] == b"L" * (1 << 20)
    compare(go, our_listing(archive))


def test_layer_ending_right_after_the_last_data_is_complete() -> None:
    # what umoci insert writes: no padding, no end blocks
    archive = entry(b"one", name=b"a") + header(name=b"b", size=3) + b"two"
    img = layer(archive)
    assert read_file_from_layers(img.sources, "b") == b"two"
    assert stream_names(archive) == ["a", "b"]


def test_layer_cut_inside_data_is_an_error() -> None:
    archive = entry(b"one", name=b"a") + header(name=b"b", size=30) + b"two"
    with pytest.raises(LayerFormatError, match="truncated in the data of the entry at byte 1024"):
        read_file_from_layers(layer(archive).sources, "b")


def test_data_object_is_stale_after_the_next_entry() -> None:
    archive = entry(b"one", name=b"a") + entry(b"two", name=b"b") + END
    stream = LayerStream(io.BytesIO(archive), OCI_TAR)
    it = iter(stream)
    _, first = next(it)
    next(it)
    assert first is not None
    with pytest.raises(RuntimeError, match="after the next entry"):
        first.read()


@pytest.fixture(scope="module")
def sparse_layer(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """A GNU tar --sparse archive (PAX 1.0) of one sparse file, and the file's bytes."""
    src = tmp_path_factory.mktemp("sparse")
    path = src / "sparse"
    with open(path, "wb") as f:
        for i in range(6):
            f.seek(i * 3 * 65536)
            f.write(os.urandom(5000))
        f.truncate(20 * 65536)
    proc = subprocess.run(
        ["tar", "-c", "--sparse", "--format=posix", "-C", str(src), "sparse"],
        capture_output=True,
        check=True,
    )
    return proc.stdout, path.read_bytes()


def test_sparse_entries_give_logical_bytes_and_data_fragments(
    sparse_layer: tuple[bytes, bytes],
) -> None:
    archive, content = sparse_layer
    stream = LayerStream(io.BytesIO(archive), OCI_TAR)
    for info, data in stream:
        assert info.name == "sparse" and info.size == len(content) and info.isreg()
        assert data is not None and info.sparse is not None
        assert len(info.sparse) >= 6
        seen = bytearray(len(content))
        for offset, chunk in data.fragments():
            assert len(chunk) <= 1 << 20
            assert any(o <= offset and offset + len(chunk) <= o + n for o, n in info.sparse)
            seen[offset : offset + len(chunk)] = chunk
        assert bytes(seen) == content
    stream.finish()
    stream = LayerStream(io.BytesIO(archive), OCI_TAR)
    for _, data in stream:
        assert data is not None
        assert data.read(100) + data.read() == content


def test_sparse_file_unpacks_to_its_logical_content(
    sparse_layer: tuple[bytes, bytes], tmp_path: Path
) -> None:
    archive, content = sparse_layer
    unpack_layers(layer(archive).sources, tmp_path / "root", rootless=True)
    assert (tmp_path / "root" / "sparse").read_bytes() == content


def test_plain_file_fragments_are_one_region() -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    archive = entry(data, name=b"big") + END
    for info, d in LayerStream(io.BytesIO(archive), OCI_TAR):
        assert info.sparse is None and d is not None
        frags = list(d.fragments())
        assert [o for o, _ in frags] == [0, 1 << 20, 2 << 20, 3 << 20]
        assert b"".join(c for _, c in frags) == data


def test_pax_records_reach_the_entry(go_tarlist: GoLister) -> None:
    archive = (
        pax([(b"mtime", b"1600000000.5"), (b"SCHILY.xattr.user.k", b"\xffv"), (b"uid", b"70000")])
        + entry(b"x", name=b"f")
        + END
    )
    compare(go_tarlist.list(archive), our_listing(archive))
    for info, _ in LayerStream(io.BytesIO(archive), OCI_TAR):
        assert info.mtime == 1600000000 and info.uid == 70000
        assert info.pax_headers["mtime"] == "1600000000.5"
        assert info.pax_headers["SCHILY.xattr.user.k"].encode("utf-8", "surrogateescape") == (
            b"\xffv"
        )
