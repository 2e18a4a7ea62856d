"""Our tar reader against Go's archive/tar, entry by entry, on edge cases and mutants.

Every archive goes to both readers: the Go lister (tests/testbed/tarlist, archive/tar's
Reader.Next() and Read) and ours (layers._tar.TarReader). They must return the same
headers, field by field, the same data, and end the same way: where Go reports EOF ours
ends cleanly, where Go fails ours raises LayerFormatError, after the same entries.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.tarcases import CASES, sparse_file, tarfile_archive
from testbed.tarcraft import (
    END,
    GNU,
    USTAR,
    V7,
    GoLister,
    compare,
    entry,
    fix_checksum,
    header,
    our_listing,
    pad,
    pax_record,
)


@pytest.fixture(scope="module")
def gnu_tar_sparse(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Archives of sparse files written by GNU tar --sparse, in each sparse format."""
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    src = tmp_path_factory.mktemp("sparse")
    block = 4096
    many = [(i * 8 * block, bytes([65 + i % 26]) * 3000) for i in range(12)]  # > 4: extended
    sparse_file(src / "many", many, 12 * 8 * block + 5 * block)
    sparse_file(src / "tail", [(0, b"start")], 1 << 20)
    sparse_file(src / "hole", [], 256 * 1024)
    sparse_file(src / "dense", [(0, os.urandom(3 * block))], 3 * block)
    out = {}
    variants = {
        "gnu": ["--format=gnu"],
        "pax-0.0": ["--format=posix", "--sparse-version=0.0"],
        "pax-0.1": ["--format=posix", "--sparse-version=0.1"],
        "pax-1.0": ["--format=posix", "--sparse-version=1.0"],
    }
    for name, flags in variants.items():
        proc = subprocess.run(
            ["tar", "-c", "--sparse", *flags, "-C", str(src), "many", "tail", "hole", "dense"],
            capture_output=True,
            check=True,
        )
        out[name] = proc.stdout
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_hand_made_archives_read_as_go_reads_them(go_tarlist: GoLister, case: str) -> None:
    archive = CASES[case]()
    compare(go_tarlist.list(archive), our_listing(archive))


@pytest.mark.parametrize("variant", ["gnu", "pax-0.0", "pax-0.1", "pax-1.0"])
def test_gnu_tar_sparse_archives(
    go_tarlist: GoLister, gnu_tar_sparse: dict[str, bytes], variant: str
) -> None:
    archive = gnu_tar_sparse[variant]
    go = go_tarlist.list(archive)
    assert go.end == "EOF" and len(go.entries) == 4
    compare(go, our_listing(archive))


# --- mutants -----------------------------------------------------------------------------


def _seeds() -> list[bytes]:
    return [
        tarfile_archive(tarfile.USTAR_FORMAT),
        tarfile_archive(tarfile.GNU_FORMAT),
        tarfile_archive(tarfile.PAX_FORMAT),
        CASES["old-gnu-sparse-extended"](),
        CASES["sparse-1.0-by-hand"](),
        CASES["sparse-0.1-by-hand"](),
        CASES["gnu-long-name"](),
        CASES["pax-global-path-not-applied"](),
        CASES["star"](),
    ]


SEEDS = _seeds()
_FIELD_SPOTS = [
    0,
    99,
    100,
    108,
    116,
    124,
    130,
    135,
    136,
    156,
    157,
    257,
    263,
    329,
    345,
    386,
    482,
    483,
]
_VALUES = [b"\0", b" ", b"0", b"7", b"8", b"\x80", b"\xff", b"/", b"\n", b"=", b",", b"-", b"x"]


@st.composite
def mutants(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    blocks = len(data) // 512
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["field", "byte", "truncate", "zero-block", "record"]))
        b = draw(st.integers(0, max(blocks - 1, 0)))
        if kind == "field":
            # a header field's byte changed and the checksum made right: past the
            # checksum test, into the parser
            at = b * 512 + draw(st.sampled_from(_FIELD_SPOTS)) + draw(st.integers(0, 11))
            if at < len(data):
                data[at : at + 1] = draw(st.sampled_from(_VALUES))
                blk = data[b * 512 : b * 512 + 512]
                if len(blk) == 512:
                    fix_checksum(blk)
                    data[b * 512 : b * 512 + 512] = blk
        elif kind == "byte":
            at = draw(st.integers(0, max(len(data) - 1, 0)))
            if data:
                data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif kind == "zero-block":
            data[b * 512 : b * 512] = bytes(512)
        else:
            # a PAX record appended in place of a block's data
            key = draw(st.sampled_from([b"path", b"size", b"mtime", b"uid", b"GNU.sparse.map"]))
            value = draw(st.sampled_from([b"-1", b"1.5", b"", b"a\0b", b"0,1", b"99999999999"]))
            data[b * 512 : b * 512 + 512] = pad(pax_record(key, value))
    return bytes(data)


@settings(
    derandomize=True,
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(archive=mutants())
def test_mutated_archives_read_as_go_reads_them(go_tarlist: GoLister, archive: bytes) -> None:
    compare(go_tarlist.list(archive), our_listing(archive))


@settings(derandomize=True, max_examples=100, deadline=None)
@given(
    name=st.binary(min_size=0, max_size=100),
    numbers=st.lists(st.binary(min_size=0, max_size=12), min_size=6, max_size=6),
    typeflag=st.sampled_from(list(b"0125\0xgLKS7A")),
    fmt=st.sampled_from([USTAR, GNU, V7]),
    data=st.binary(max_size=1100),
)
def test_random_header_fields_read_as_go_reads_them(
    go_tarlist: GoLister,
    name: bytes,
    numbers: list[bytes],
    typeflag: int,
    fmt: tuple[bytes, bytes],
    data: bytes,
) -> None:
    mode, uid, gid, size, mtime, dev = numbers
    blk = header(
        name=name,
        typeflag=bytes([typeflag]),
        fmt=fmt,
        mode=mode[:8],  # type: ignore[arg-type]
        uid=uid[:8],
        gid=gid[:8],
        size=size,  # type: ignore[arg-type]
        mtime=mtime,  # type: ignore[arg-type]
        devmajor=dev[:8],
    )
    archive = blk + data + entry(b"after", name=b"after") + END
    compare(go_tarlist.list(archive), our_listing(archive))
