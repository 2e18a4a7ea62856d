"""Hostile layers that cost memory, disk, descriptors or time out of proportion to their
size: sparse files, deep trees, many replaced directories (issues 10 and 14).

Sparse layers are made by GNU tar (``--sparse``) from real sparse files, or by tarfile
as a writer for the sparse maps GNU tar would never write. Every unpack that fails is
checked to leave nothing next to the destination.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from containers_image_proxy import ProxyError
from containers_image_proxy.layers import (
    LayerFormatError,
    UnsafeLayerError,
    copy_file_from_layers,
    list_dir_from_layers,
    read_file_from_layers,
    unpack_layers,
)
from containers_image_proxy.layers._content import CHUNK
from containers_image_proxy.layers._paths import MAX_DEPTH, PATH_MAX, remove_at
from testbed.images import LayoutBuilder, make_tar
from testbed.layers import OCI_TAR, Blob, E, Image, d, f, hl, image, sha256, sym, wh
from testbed.releases import SkopeoRelease, available_releases

MIB = 1024 * 1024
TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def sparse_layer(tmp: Path, size: int, pieces: dict[int, bytes], fmt: str = "gnu") -> Image:
    """A one-layer image holding ``big``: ``size`` bytes, ``pieces`` written, holes between."""
    src = tmp / f"sparse-src-{fmt}"
    src.mkdir(exist_ok=True)
    path = src / "big"
    with open(path, "wb") as fh:
        fh.truncate(size)
        for offset, data in pieces.items():
            fh.seek(offset)
            fh.write(data)
    tar = subprocess.run(
        ["tar", "--sparse", f"--format={fmt}", "--owner=0", "--group=0", "-cf", "-", "big"],
        cwd=src,
        check=True,
        capture_output=True,
    ).stdout
    path.unlink()
    return Image([Blob(tar, OCI_TAR, sha256(tar))])


def leftovers(parent: Path) -> list[str]:
    return [n for n in os.listdir(parent) if ".unpacking-" in n]


@pytest.fixture
def deep_tmp(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, emptied with the engine's own iterative removal afterwards: pytest's
    cleanup (shutil.rmtree) recurses, and a 1500-deep tree would break it."""
    yield tmp_path
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in os.listdir(fd):
            remove_at(fd, name)
    finally:
        os.close(fd)


# --- sparse files --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_sparse_file_is_unpacked_with_its_holes(tmp_path: Path, fmt: str) -> None:
    size = 64 * MIB + 3
    img = sparse_layer(tmp_path, size, {MIB: b"middle", 64 * MIB: b"end"}, fmt)
    assert len(img.layers[0].data) < 20 * 1024, "a small layer declaring a big file"
    root = tmp_path / "root"
    unpack_layers(img.sources, root, rootless=True)
    st = os.stat(root / "big")
    assert st.st_size == size
    assert st.st_blocks * 512 < MIB, "holes stay holes (st_blocks)"
    with open(root / "big", "rb") as fh:
        fh.seek(MIB)
        assert fh.read(6) == b"middle"
        fh.seek(64 * MIB)
        assert fh.read() == b"end"
        fh.seek(MIB // 2)
        assert fh.read(16) == bytes(16)


def test_sparse_file_in_listing_read_file_and_copy(tmp_path: Path) -> None:
    size = 8 * MIB
    img = sparse_layer(tmp_path, size, {0: b"head", 5 * MIB: b"five"})
    (entry,) = list_dir_from_layers(img.sources, "/big")
    assert entry.size == size
    data = read_file_from_layers(img.sources, "/big")
    assert len(data) == size and data[:4] == b"head" and data[5 * MIB : 5 * MIB + 4] == b"five"
    assert data.count(0) == size - 8
    chunks: list[bytes] = []
    assert copy_file_from_layers(img.sources, "/big", chunks.append) == size
    assert max(map(len, chunks)) <= CHUNK
    assert b"".join(chunks) == data
    assert img.all_drained()


def test_max_size_refuses_a_big_file_before_keeping_it(tmp_path: Path) -> None:
    # A terabyte declared in a 10 KiB layer: kept in memory or on disk it would not fit.
    img = sparse_layer(tmp_path, 2**40, {0: b"x"})
    for reader in (
        read_file_from_layers,
        lambda s, p, **kw: copy_file_from_layers(s, p, print, **kw),
    ):
        with pytest.raises(ProxyError, match=f"{2**40} bytes, over the limit of {MIB}"):
            reader(img.sources, "/big", max_size=MIB)
    small = image([f("etc/hostname", b"box\n")])
    assert read_file_from_layers(small.sources, "etc/hostname", max_size=4) == b"box\n"
    with pytest.raises(ProxyError, match="4 bytes, over the limit of 3"):
        read_file_from_layers(small.sources, "etc/hostname", max_size=3)


def _sparse_entry(size: str, mapping: str, data: bytes) -> E:
    """A PAX 0.1 sparse entry (GNU.sparse.map), which tarfile writes verbatim."""
    pax = {
        "GNU.sparse.major": "0",
        "GNU.sparse.minor": "1",
        "GNU.sparse.name": "s",
        "GNU.sparse.size": size,
        "GNU.sparse.numblocks": str(len(mapping.split(",")) // 2),
        "GNU.sparse.map": mapping,
    }
    return f("s", data, pax=pax)


@pytest.mark.parametrize(
    "size, mapping",
    [("100", "0,10,200,5"), ("100", "0,10,5,5"), ("100", "50,10,0,5"), ("100", "95,10,0,5")],
    ids=["past-the-size", "overlapping", "unordered", "straddling-the-size"],
)
def test_sparse_map_that_does_not_fit_is_refused_everywhere(
    tmp_path: Path, size: str, mapping: str
) -> None:
    img = image([f("ok", b"1"), _sparse_entry(size, mapping, b"0123456789abcde")])
    with pytest.raises(LayerFormatError):
        unpack_layers(img.sources, tmp_path / "root", rootless=True)
    assert os.listdir(tmp_path) == []
    with pytest.raises(LayerFormatError):
        list_dir_from_layers(img.sources, "/")
    with pytest.raises(LayerFormatError):
        read_file_from_layers(img.sources, "/ok")


def test_sparse_size_over_the_filesystem_limit_is_refused(tmp_path: Path) -> None:
    huge = 2**62
    probe = tmp_path / "probe"
    try:
        with open(probe, "wb") as fh:
            fh.truncate(huge)
        pytest.skip("this filesystem takes a 4 EiB sparse file")
    except OSError:
        pass
    finally:
        probe.unlink(missing_ok=True)
    img = image([f("ok", b"1"), _sparse_entry(str(huge), "0,5", b"01234")])
    with pytest.raises(UnsafeLayerError, match="cannot be stored here"):
        unpack_layers(img.sources, tmp_path / "root", rootless=True)
    assert os.listdir(tmp_path) == []
    # The listing says what the image declares; reading it with a limit refuses it.
    assert list_dir_from_layers(img.sources, "/s")[0].size == huge
    with pytest.raises(ProxyError, match=str(huge)):
        read_file_from_layers(img.sources, "/s", max_size=MIB)


# --- deep trees ----------------------------------------------------------------------------

DEEP = "/".join(["a"] * 1499) + "/f"  # 1500 components, 3000 bytes: under PATH_MAX


def test_1500_component_name_everywhere(deep_tmp: Path) -> None:
    img = image([f(DEEP, b"deep")])
    root = deep_tmp / "root"
    unpack_layers(img.sources, root, rootless=True)
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(1499):
            nfd = os.open("a", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        assert os.stat("f", dir_fd=fd).st_size == 4
    finally:
        os.close(fd)
    assert read_file_from_layers(img.sources, DEEP) == b"deep"
    assert [e.name for e in list_dir_from_layers(img.sources, DEEP.rsplit("/", 1)[0])] == ["f"]


def test_failure_after_a_deep_tree_leaves_no_staging_directory(deep_tmp: Path) -> None:
    img = image([f(DEEP, b"deep"), d("ro", mode=0o500)], [hl("stolen", "nothing/here")])
    with pytest.raises(UnsafeLayerError, match="not in the tree"):
        unpack_layers(img.sources, deep_tmp / "root", rootless=True)
    assert os.listdir(deep_tmp) == []


def test_deep_opaque_directory_is_emptied(deep_tmp: Path) -> None:
    deep = "o/" + DEEP
    img = image(
        [f(deep, b"lower"), f("o/keep-below", b"")],
        [d("o", mode=0o750), wh("o/.wh..wh..opq"), f("o/upper", b"u")],
    )
    root = deep_tmp / "root"
    unpack_layers(img.sources, root, rootless=True)
    assert os.listdir(root / "o") == ["upper"]
    assert [e.name for e in list_dir_from_layers(img.sources, "/o")] == ["upper"]
    with pytest.raises(FileNotFoundError):
        read_file_from_layers(img.sources, deep)
    # The same tree whited out, then a failure: the cleanup walks it without recursion.
    bad = image([f(deep, b"lower")], [wh(".wh.o"), sym("s", "")])
    with pytest.raises(UnsafeLayerError):
        unpack_layers(bad.sources, deep_tmp / "again", rootless=True)
    assert leftovers(deep_tmp) == []


def test_name_over_path_max_is_refused_everywhere(deep_tmp: Path) -> None:
    name = "/".join(["a"] * (PATH_MAX // 2)) + "/f"
    img = image([f("ok", b""), f(name, b"x")])
    with pytest.raises(UnsafeLayerError, match="PATH_MAX"):
        unpack_layers(img.sources, deep_tmp / "root", rootless=True)
    assert os.listdir(deep_tmp) == []
    with pytest.raises(UnsafeLayerError, match="PATH_MAX"):
        list_dir_from_layers(img.sources, "/")
    with pytest.raises(UnsafeLayerError, match="PATH_MAX"):
        read_file_from_layers(img.sources, "/ok")


def test_depth_through_a_symlink_is_bounded(deep_tmp: Path) -> None:
    # Each name is short; together, through the symlink, they go past MAX_DEPTH.
    target = "/".join(["a"] * (MAX_DEPTH - 10))
    img = image([sym("l", target), f("l/" + "/".join(["b"] * 20) + "/x", b"")])
    with pytest.raises(UnsafeLayerError, match=f"deeper than {MAX_DEPTH}"):
        unpack_layers(img.sources, deep_tmp / "root", rootless=True)
    assert os.listdir(deep_tmp) == []
    with pytest.raises(UnsafeLayerError, match=f"deeper than {MAX_DEPTH}"):
        list_dir_from_layers(img.sources, "/")
    # read lands the name at its real path: over PATH_MAX, as any path that deep is.
    with pytest.raises(UnsafeLayerError, match="PATH_MAX"):
        read_file_from_layers(img.sources, "l/" + "/".join(["b"] * 20) + "/x")


_FD_SCRIPT = textwrap.dedent(
    """
    import os, resource, sys
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    from testbed.layers import d, f, hl, image, wh
    from containers_image_proxy.layers import (
        UnsafeLayerError, list_dir_from_layers, read_file_from_layers, unpack_layers)
    limit = int(sys.argv[4])
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    base = sys.argv[3]
    deep = "/".join(["d"] * 399) + "/f"
    dirs = ["/".join(["d"] * i) for i in range(1, 400)]
    layer = [d(p, mode=0o555) for p in dirs] + [f(deep, b"x")]
    img = image(layer, [f("other", b"")])
    unpack_layers(img.sources, os.path.join(base, "ok"), rootless=True)
    assert read_file_from_layers(img.sources, deep) == b"x"
    assert len(list_dir_from_layers(img.sources, "/")) == 2
    gone = image(layer, [wh(".wh.d"), f("d/new", b"")])
    unpack_layers(gone.sources, os.path.join(base, "whiteout"), rootless=True)
    assert os.listdir(os.path.join(base, "whiteout", "d")) == ["new"]
    bad = image(layer, [hl("x", "missing")])
    try:
        unpack_layers(bad.sources, os.path.join(base, "bad"), rootless=True)
    except UnsafeLayerError:
        pass
    else:
        raise SystemExit("no error")
    print("ok", sorted(os.listdir(base)))
    """
)


@pytest.mark.parametrize("limit", [256, 64])
def test_deep_tree_under_a_small_descriptor_limit(deep_tmp: Path, limit: int) -> None:
    base = deep_tmp / "out"
    base.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _FD_SCRIPT, str(SRC), str(TESTS), str(base), str(limit)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[0] == "ok ['ok', 'whiteout']"


# --- many replaced directories (issue 14) --------------------------------------------------


def test_removed_directories_lose_their_recorded_modes(tmp_path: Path) -> None:
    img = image(
        [d("x", mode=0o700), d("y/z", mode=0o711), d("k", mode=0o701), d("k/sub", mode=0o702)],
        [wh(".wh.x"), f("x/new", b""), f("y", b"file now")],
        [f("y2", b""), d("k"), wh("k/.wh..wh..opq"), d("k/sub")],
    )
    root = tmp_path / "root"
    unpack_layers(img.sources, root, rootless=True)
    # x was whited out and made again, implicitly: the usual mode, not the old record's.
    assert os.stat(root / "x").st_mode & 0o7777 == 0o755
    assert (root / "y").read_bytes() == b"file now"
    # k/sub came back in the opaque layer (its own mode), what was under it is gone.
    assert os.stat(root / "k/sub").st_mode & 0o7777 == 0o755
    assert os.listdir(root / "k") == ["sub"]


# --- the command line's cat streams --------------------------------------------------------

_CAT_SCRIPT = """
import resource, sys
from containers_image_proxy.cli import main
code = main(sys.argv[1:])
sys.stderr.write(f"\\nMAXRSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n")
sys.exit(code)
"""


def _cat_peak(release: SkopeoRelease, ref: str, path: str, out: Path) -> int:
    """The cat command's peak RSS in KiB (its own process, not skopeo's), output to ``out``."""
    with open(out, "wb") as fh:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                _CAT_SCRIPT,
                "--skopeo",
                shlex.join(release.argv),
                "cat",
                ref,
                path,
            ],
            stdout=fh,
            stderr=subprocess.PIPE,
            text=False,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(SRC)},
        )
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, err
    return int(err.rsplit("MAXRSS ", 1)[1].split()[0])


def test_cli_cat_streams_a_large_file(tmp_path: Path) -> None:
    releases = available_releases()
    if not releases:
        pytest.fail("no skopeo release available (run scripts/setup.sh)")
    size = 160 * MIB
    sparse = sparse_layer(tmp_path, size, {0: b"first", size - 4: b"last"})
    builder = LayoutBuilder(tmp_path / "oci")
    builder.add_image("big", [sparse.layers[0].data, make_tar({"small": b"tiny\n"})])
    ref = builder.ref("big")
    small_peak = _cat_peak(releases[-1], ref, "/small", tmp_path / "small.out")
    assert (tmp_path / "small.out").read_bytes() == b"tiny\n"
    big_peak = _cat_peak(releases[-1], ref, "/big", tmp_path / "big.out")
    out = tmp_path / "big.out"
    assert out.stat().st_size == size
    with open(out, "rb") as fh:
        assert fh.read(5) == b"first"
        fh.seek(size - 4)
        assert fh.read() == b"last"
    out.unlink()
    # Buffered, the file alone would add 160 MiB to the peak; streamed, a few chunks.
    assert big_peak - small_peak < 48 * 1024, (small_peak, big_peak)
