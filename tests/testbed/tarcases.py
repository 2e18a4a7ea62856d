"""Hand-made tar archives for the differential test (tests/test_tar_go.py): every format,
field encoding, extended header, sparse flavour and ending that Go's archive/tar reads in
its own way, valid or not. ``CASES`` maps a name to a function building the archive.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Callable

from .tarcraft import END, GNU, USTAR, V7, entry, header, octal, pad, pax, pax_record

MTIME = 1_600_000_000


def tarfile_archive(fmt: int) -> bytes:
    """An archive of every kind of entry, written by tarfile in format ``fmt``."""
    buf = io.BytesIO()
    long = "d/" + "long-name-" * 12
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8") as tar:

        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **kw: object) -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mtime = MTIME
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            for key, value in kw.items():
                setattr(info, key, value)
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("d", tarfile.DIRTYPE, uname="root", gname="wheel")
        add("d/file", data=b"hello\n" * 100, uid=1000, gid=1000)
        add("d/empty")
        add("d/sym", tarfile.SYMTYPE, linkname="../target")
        add("d/hard", tarfile.LNKTYPE, linkname="d/file")
        add("d/fifo", tarfile.FIFOTYPE)
        add("d/chr", tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("d/blk", tarfile.BLKTYPE, devmajor=8, devminor=1)
        add("d/" + "p" * 90 + "/" + "n" * 90, data=b"prefix")  # USTAR prefix
        if fmt != tarfile.USTAR_FORMAT:
            add(long, data=b"x")
            add("d/longsym", tarfile.SYMTYPE, linkname="../" + "t" * 120)
            add("d/naïve-ütf8", data=b"u")
            add("d/big-ids", uid=0o7777777 + 5, gid=1 << 40)  # base-256 in GNU
            add("d/old", mtime=-5)
        if fmt == tarfile.PAX_FORMAT:
            add(
                "d/xattr",
                data=b"x",
                pax_headers={
                    "SCHILY.xattr.user.k": "v",
                    "mtime": "1600000000.123456789",
                    "atime": "-1.5",
                },
            )
    return buf.getvalue()


def sparse_file(path: Path, regions: list[tuple[int, bytes]], size: int) -> None:
    with open(path, "wb") as f:
        for offset, data in regions:
            f.seek(offset)
            f.write(data)
        f.truncate(size)


def _old_gnu_sparse(
    regions: list[tuple[int, int]], real: int, physical: int, data: bytes, ext: int = 0
) -> bytes:
    """A hand-made GNU 'S' entry: up to 4 regions in the header, the rest in ``ext``
    extension blocks of 21."""

    def field(pairs: list[tuple[int, int]], slots: int) -> bytes:
        return b"".join(octal(o, 12) + octal(n, 12) for o, n in pairs).ljust(24 * slots, b"\0")

    head, rest = regions[:4], regions[4:]
    blocks = []
    chunks = [rest[i : i + 21] for i in range(0, len(rest), 21)] or ([[]] if ext else [])
    for i, chunk in enumerate(chunks):
        blocks.append(field(chunk, 21) + (b"\1" if i + 1 < len(chunks) else b"\0") + bytes(7))
    hdr = header(
        name=b"sparse",
        typeflag=b"S",
        size=physical,
        fmt=GNU,
        sparse=field(head, 4),
        isextended=b"\1" if blocks else b"\0",
        realsize=real,
    )
    return hdr + b"".join(blocks) + pad(data)


def _ustar_with(**raw: object) -> bytes:
    return entry(b"data!", **raw) + entry(b"second", name=b"next") + END  # type: ignore[arg-type]


CASES: dict[str, Callable[[], bytes]] = {
    "empty-stream": lambda: b"",
    "only-end-blocks": lambda: END,
    "one-zero-block-then-eof": lambda: bytes(512),
    "zero-block-then-header": lambda: bytes(512) + entry(b"x") + END,
    "zero-block-then-partial": lambda: bytes(512) + b"x" * 100,
    "partial-first-block": lambda: b"x" * 100,
    "no-end-blocks-after-data": lambda: entry(b"abc", name=b"a") + entry(b"last", name=b"b"),
    "no-padding-after-last-data": lambda: entry(b"abc") + header(name=b"b", size=4) + b"last",
    "cut-in-padding": lambda: entry(b"abc") + header(size=4) + b"last" + bytes(10),
    "cut-in-data": lambda: entry(b"abc") + header(size=100) + b"x" * 50,
    "cut-in-header": lambda: entry(b"abc") + header()[:300],
    "data-after-end-blocks": lambda: entry(b"abc") + END + b"garbage" * 100,
    "tarfile-ustar": lambda: tarfile_archive(tarfile.USTAR_FORMAT),
    "tarfile-gnu": lambda: tarfile_archive(tarfile.GNU_FORMAT),
    "tarfile-pax": lambda: tarfile_archive(tarfile.PAX_FORMAT),
    "v7": lambda: entry(b"v7 data", fmt=V7, uname=b"ignored") + END,
    "v7-trailing-slash-rega": lambda: entry(b"", name=b"dir/", typeflag=b"\0", fmt=V7) + END,
    "rega-trailing-slash-with-size": lambda: (
        header(name=b"dir/", typeflag=b"\0", size=512) + entry(b"inner", name=b"hidden") + END
    ),
    "rega-plain": lambda: entry(b"abc", typeflag=b"\0") + END,
    "reg-trailing-slash-stays-reg": lambda: entry(b"abc", name=b"f/") + END,
    "ustar-prefix": lambda: entry(b"p", name=b"name", prefix=b"some/prefix") + END,
    "gnu-ignores-prefix": lambda: entry(b"p", name=b"n", fmt=GNU, atime=5, ctime=6) + END,
    "gnu-pre-go18-prefix": lambda: entry(b"p", name=b"n", fmt=GNU, prefix=b"old/prefix") + END,
    "gnu-pre-go18-non-ascii": lambda: entry(b"p", name=b"n", fmt=GNU, prefix=b"\xffold") + END,
    "star": lambda: (
        entry(b"s", name=b"n", star_prefix=b"pre", star_atime=7, star_ctime=8, trailer=b"tar\0")
        + END
    ),
    "star-bad-atime": lambda: entry(b"s", star_atime=b"9x", trailer=b"tar\0") + END,
    "ustar-wrong-version": lambda: entry(b"u", fmt=(b"ustar\0", b"xx"), prefix=b"pp") + END,
    "gnu-wrong-version-is-v7": lambda: entry(b"u", fmt=(b"ustar ", b"00"), uname=b"u") + END,
    "size-with-leading-nul": lambda: _ustar_with(size=b"\x0000000000005"),
    "size-space-padded": lambda: _ustar_with(size=b"    5  \0 "),
    "size-nul-inside": lambda: _ustar_with(size=b"5\x009999"),
    "size-space-inside": lambda: _ustar_with(size=b"1 5"),
    "size-with-8": lambda: _ustar_with(size=b"00000000008\0"),
    "size-with-sign": lambda: _ustar_with(size=b"+5"),
    "size-base256": lambda: _ustar_with(size=b"\x80" + bytes(10) + b"\x05"),
    "size-base256-negative": lambda: _ustar_with(size=b"\xff" * 12),
    "size-base256-overflow": lambda: _ustar_with(size=b"\x80\x01" + bytes(10)),
    "uid-base256-negative": lambda: _ustar_with(uid=b"\xff" * 7 + b"\xfe"),
    "mtime-base256": lambda: _ustar_with(mtime=b"\x80" + b"\x7f" + b"\xff" * 10),
    "mode-all-spaces": lambda: _ustar_with(mode=b"        "),
    "devmajor-bad": lambda: _ustar_with(typeflag=b"3", devmajor=b"zz"),
    "devmajor-bad-v7-ignored": lambda: entry(b"x", fmt=V7, devmajor=b"zz") + END,
    "bad-checksum": lambda: entry(b"x", chksum=b"0000000\0") + END,
    "checksum-not-octal": lambda: entry(b"x", chksum=b"12x\0") + END,
    "signed-checksum": lambda: entry(b"x", name=b"\xe9\xe8", signed=True) + END,
    "unsigned-checksum-high-bytes": lambda: entry(b"x", name=b"\xe9\xe8") + END,
    "corrupt-second-header": lambda: entry(b"one") + b"\x01" * 512 + entry(b"two") + END,
    "hardlink-with-size": lambda: (
        entry(b"", name=b"l", typeflag=b"1", linkname=b"t", size=700) + entry(b"x") + END
    ),
    "dir-with-size": lambda: header(name=b"d", typeflag=b"5", size=10) + entry(b"x") + END,
    "unknown-type-with-data": lambda: entry(b"zzz", typeflag=b"A") + END,
    "contiguous-type": lambda: entry(b"zzz", typeflag=b"7") + END,
    "name-with-nul": lambda: entry(b"x", name=b"a\0b") + END,
    "name-full-100": lambda: entry(b"x", name=b"n" * 100, linkname=b"l" * 100) + END,
    "gnu-long-name": lambda: (
        entry(b"L" * 300 + b"\0junk", name=b"././@LongLink", typeflag=b"L", fmt=GNU)
        + entry(b"K" * 200, name=b"././@LongLink", typeflag=b"K", fmt=GNU)
        + entry(b"", name=b"short", typeflag=b"2", fmt=GNU)
        + END
    ),
    "gnu-empty-long-name": lambda: (
        entry(b"\0", typeflag=b"L", fmt=GNU) + entry(b"x", name=b"kept", fmt=GNU) + END
    ),
    "gnu-long-name-then-global": lambda: (
        entry(b"lost", typeflag=b"L", fmt=GNU) + pax([(b"k", b"v")], b"g") + entry(b"x") + END
    ),
    "gnu-long-name-too-big": lambda: header(typeflag=b"L", size=(1 << 20) + 1) + END,
    "gnu-long-name-wins-over-pax-path": lambda: (
        pax([(b"path", b"from-pax")])
        + entry(b"from-gnu", typeflag=b"L", fmt=GNU)
        + entry(b"x")
        + END
    ),
    "pax-path-linkpath-ids": lambda: (
        pax(
            [
                (b"path", b"pax/path"),
                (b"linkpath", b"pax/link"),
                (b"uid", b"+70000"),
                (b"gid", b"0070001"),
                (b"uname", b"user"),
                (b"gname", b"group"),
                (b"mtime", b"1600000000.1234567891"),
                (b"atime", b"-1.5"),
                (b"ctime", b"-0.25"),
                (b"SCHILY.xattr.user.a", b"\xff\x00bin"),
                (b"comment", b"anything"),
            ]
        )
        + entry(b"", typeflag=b"2")
        + END
    ),
    "pax-empty-values-keep-header": lambda: (
        pax([(b"path", b""), (b"uid", b""), (b"size", b"")]) + entry(b"data", uid=5) + END
    ),
    "pax-size-override": lambda: pax([(b"size", b"3")]) + entry(b"abc", size=0) + END,
    "pax-size-negative-dir": lambda: (
        pax([(b"size", b"-3")]) + entry(b"", typeflag=b"5", name=b"d") + END
    ),
    "pax-size-negative-file": lambda: pax([(b"size", b"-3")]) + entry(b"") + END,
    "pax-bad-uid": lambda: pax([(b"uid", b"12a")]) + entry(b"x") + END,
    "pax-uid-overflow": lambda: pax([(b"uid", b"9223372036854775808")]) + entry(b"x") + END,
    "pax-mtime-no-seconds": lambda: pax([(b"mtime", b".5")]) + entry(b"x") + END,
    "pax-mtime-trailing-dot": lambda: pax([(b"mtime", b"5.")]) + entry(b"x") + END,
    "pax-mtime-bad-fraction": lambda: pax([(b"mtime", b"5.5e")]) + entry(b"x") + END,
    "pax-path-with-nul": lambda: pax([(b"path", b"a\0b")]) + entry(b"x") + END,
    "pax-key-with-nul": lambda: pax([(b"a\0b", b"v")]) + entry(b"x") + END,
    "pax-value-with-nul": lambda: pax([(b"comment", b"a\0b")]) + entry(b"x") + END,
    "pax-empty-key": lambda: pax([], raw=b"6 =ab\n") + entry(b"x") + END,
    "pax-no-equals": lambda: pax([], raw=b"6 abc\n") + entry(b"x") + END,
    "pax-length-too-short": lambda: pax([], raw=b"4 a=\n") + entry(b"x") + END,
    "pax-length-past-end": lambda: pax([], raw=b"99 a=b\n") + entry(b"x") + END,
    "pax-length-plus-sign": lambda: pax([], raw=b"+8 a=bc\n") + entry(b"x") + END,
    "pax-length-leading-zeros": lambda: pax([], raw=b"009 a=bcd\n") + entry(b"x") + END,
    "pax-no-newline": lambda: pax([], raw=b"7 a=bcd") + entry(b"x") + END,
    "pax-no-space": lambda: pax([], raw=b"7a=bcd\n") + entry(b"x") + END,
    "pax-duplicate-keys": lambda: pax([(b"path", b"one"), (b"path", b"two")]) + entry(b"x") + END,
    "pax-then-eof-in-padding": lambda: pax([(b"path", b"p")])[:600],
    "pax-too-big": lambda: header(typeflag=b"x", size=(1 << 20) + 1) + END,
    "pax-exactly-1mib": lambda: pax([(b"comment", b"c" * ((1 << 20) - 17))]) + entry(b"x") + END,
    "pax-global-path-not-applied": lambda: (
        pax([(b"path", b"etc/evil"), (b"uid", b"7")], b"g") + entry(b"x", name=b"a") + END
    ),
    "pax-global-bad-uid": lambda: pax([(b"uid", b"bad")], b"g") + entry(b"x") + END,
    "pax-then-global": lambda: (
        pax([(b"path", b"lost")]) + pax([(b"k", b"v")], b"g") + entry(b"x", name=b"a") + END
    ),
    "pax-global-bad-record": lambda: pax([], b"g", raw=b"5 a=\n") + END,
    "sparse-0.0-out-of-order": lambda: (
        pax([(b"GNU.sparse.numbytes", b"1"), (b"GNU.sparse.offset", b"0")]) + entry(b"x") + END
    ),
    "sparse-0.0-comma": lambda: (
        pax([(b"GNU.sparse.offset", b"0,1"), (b"GNU.sparse.numbytes", b"1")]) + entry(b"x") + END
    ),
    "sparse-0.1-by-hand": lambda: (
        pax(
            [
                (b"GNU.sparse.major", b"0"),
                (b"GNU.sparse.minor", b"1"),
                (b"GNU.sparse.name", b"real-name"),
                (b"GNU.sparse.realsize", b"100"),
                (b"GNU.sparse.numblocks", b"2"),
                (b"GNU.sparse.map", b"10,3,50,2"),
            ]
        )
        + entry(b"abcde", name=b"GNUSparseFile.0/x")
        + END
    ),
    "sparse-0.1-count-mismatch": lambda: (
        pax([(b"GNU.sparse.numblocks", b"2"), (b"GNU.sparse.map", b"10,3")]) + entry(b"abc") + END
    ),
    "sparse-0.1-unknown-version": lambda: (
        pax([(b"GNU.sparse.major", b"2"), (b"GNU.sparse.map", b"junk")]) + entry(b"abc") + END
    ),
    "sparse-0.1-overlap": lambda: (
        pax(
            [
                (b"GNU.sparse.size", b"100"),
                (b"GNU.sparse.numblocks", b"2"),
                (b"GNU.sparse.map", b"10,5,12,1"),
            ]
        )
        + entry(b"abcdef")
        + END
    ),
    "sparse-0.1-past-size": lambda: (
        pax(
            [
                (b"GNU.sparse.size", b"10"),
                (b"GNU.sparse.numblocks", b"1"),
                (b"GNU.sparse.map", b"8,5"),
            ]
        )
        + entry(b"abcde")
        + END
    ),
    "sparse-0.1-unreferenced-data": lambda: (
        pax(
            [
                (b"GNU.sparse.size", b"10"),
                (b"GNU.sparse.numblocks", b"1"),
                (b"GNU.sparse.map", b"0,2"),
            ]
        )
        + entry(b"abcde")
        + END
    ),
    "sparse-0.1-missing-data": lambda: (
        pax(
            [
                (b"GNU.sparse.size", b"10"),
                (b"GNU.sparse.numblocks", b"1"),
                (b"GNU.sparse.map", b"0,8"),
            ]
        )
        + entry(b"abc")
        + END
    ),
    "sparse-0.1-on-a-directory": lambda: (
        pax([(b"GNU.sparse.numblocks", b"1"), (b"GNU.sparse.map", b"0,1")])
        + entry(b"", typeflag=b"5", name=b"d")
        + END
    ),
    "sparse-1.0-by-hand": lambda: (
        pax(
            [
                (b"GNU.sparse.major", b"1"),
                (b"GNU.sparse.minor", b"0"),
                (b"GNU.sparse.realsize", b"3000"),
            ]
        )
        + entry(pad(b"2\n0005\n3\n+2000\n0\n") + b"abc", name=b"s")
        + END
    ),
    "sparse-1.0-bad-count": lambda: (
        pax([(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0")])
        + entry(pad(b"-1\n") + b"abc")
        + END
    ),
    "sparse-1.0-map-past-data": lambda: (
        pax([(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0")]) + entry(b"9\n1\n2\n") + END
    ),
    "sparse-1.0-long-zero-token": lambda: (
        pax([(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"), (b"GNU.sparse.size", b"10")])
        + entry(pad(b"1\n" + b"0" * 700 + b"1\n2\n") + b"ab")
        + END
    ),
    "old-gnu-sparse": lambda: _old_gnu_sparse([(0, 3), (100, 2)], 200, 5, b"abcde") + END,
    "old-gnu-sparse-extended": lambda: (
        _old_gnu_sparse([(i * 10, 2) for i in range(30)], 400, 60, b"z" * 60) + END
    ),
    "old-gnu-sparse-empty-ext": lambda: _old_gnu_sparse([(0, 1)], 5, 1, b"q", ext=1) + END,
    "old-gnu-sparse-truncated-ext": lambda: _old_gnu_sparse(
        [(i * 10, 2) for i in range(30)], 400, 60, b"z" * 60
    )[:700],
    "old-gnu-sparse-not-gnu": lambda: entry(b"abc", typeflag=b"S", fmt=USTAR) + END,
    "old-gnu-sparse-missing-data": lambda: _old_gnu_sparse([(0, 9)], 10, 3, b"abc") + END,
    "old-gnu-sparse-bad-ext-entry": lambda: (
        _old_gnu_sparse([(i * 10, 2) for i in range(6)], 100, 12, b"z" * 12).replace(
            octal(40, 12), b"4x".ljust(12, b"\0"), 1
        )
        + END
    ),
    "sparse-1.0-map-over-two-blocks": lambda: _pax_1x0(
        b"150\n" + b"".join(b"%d\n1\n" % (i * 10) for i in range(150)), 1500, b"d" * 150
    ),
    "sparse-1.0-huge-count": lambda: _pax_1x0(b"1000000000000\n0\n1\n", 10, b"x"),
    "sparse-1.0-extra-tokens-ignored": lambda: _pax_1x0(b"1\n0\n2\njunk\nmore\n", 10, b"ab"),
    "sparse-1.0-on-a-symlink": lambda: (
        pax([(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0")])
        + entry(b"", typeflag=b"2", linkname=b"t")
        + END
    ),
    "sparse-name-over-gnu-long-name": lambda: (
        entry(b"long/name", typeflag=b"L", fmt=GNU)
        + pax(
            [
                (b"GNU.sparse.name", b"sparse/name"),
                (b"GNU.sparse.map", b"0,1"),
                (b"GNU.sparse.numblocks", b"1"),
                (b"GNU.sparse.size", b"4"),
            ]
        )
        + entry(b"a")
        + END
    ),
    "rega-pax-path-with-slash": lambda: (
        pax([(b"path", b"made/a/dir/")]) + entry(b"", typeflag=b"\0") + END
    ),
    "pax-cut-at-a-record-boundary": lambda: pax([(b"path", b"a"), (b"uid", b"1")])[
        : 512 + len(pax_record(b"path", b"a"))
    ],
    "gnu-long-name-cut": lambda: entry(b"long-name" * 10, typeflag=b"L", fmt=GNU)[:520],
    "gnu-long-link-with-nul": lambda: (
        entry(b"tar\0get", typeflag=b"K", fmt=GNU) + entry(b"", typeflag=b"2", fmt=GNU) + END
    ),
}


def _pax_1x0(sparse_map: bytes, size: int, data: bytes) -> bytes:
    return (
        pax(
            [
                (b"GNU.sparse.major", b"1"),
                (b"GNU.sparse.minor", b"0"),
                (b"GNU.sparse.realsize", b"%d" % size),
            ]
        )
        + entry(pad(sparse_map) + data, name=b"s")
        + END
    )
