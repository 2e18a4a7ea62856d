"""Unpacking layers with OCI semantics into a directory (the engine, on in-memory blobs)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from containers_image_proxy import ConfigurationError
from containers_image_proxy.layers import LayerDigestError, LayerFormatError, unpack_layers
from testbed.layers import (
    MTIME,
    OCI_GZIP,
    OCI_ZSTD,
    Blob,
    E,
    Image,
    blob,
    d,
    f,
    gz,
    hl,
    image,
    make_tar,
    read,
    sha256,
    snapshot,
    sym,
    wh,
    zst,
    zstd_skippable,
)

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root")


def unpack(img: Image, dest: Path, *, rootless: bool = False) -> Path:
    unpack_layers(img.sources, dest, rootless=rootless)
    assert img.all_drained(), "every blob is read to its end and closed"
    return dest


def xattrs_supported(path: Path) -> bool:
    probe = path / "xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def test_files_dirs_symlinks_hardlinks_modes_and_times(tmp_path: Path) -> None:
    img = image(
        [
            d("etc", mode=0o755, mtime=MTIME + 1),
            f("etc/hostname", b"box\n", mode=0o644, mtime=MTIME + 2),
            f("usr/bin/su", b"#!su", mode=0o4755),
            f("usr/bin/wall", b"#!wall", mode=0o2755),
            d("tmp", mode=0o1777),
            f("secret", b"s", mode=0o000),
            sym("etc/localtime", "/usr/share/zoneinfo/UTC", mtime=MTIME + 3),
            hl("usr/bin/su-again", "usr/bin/su"),
            d("ro", mode=0o555),
            f("ro/inside", b"i", mode=0o444),
        ]
    )
    root = unpack(img, tmp_path / "root")
    assert read(str(root), "etc/hostname") == b"box\n"
    assert stat.S_IMODE(os.lstat(root / "usr/bin/su").st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(root / "usr/bin/wall").st_mode) == 0o2755
    assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.lstat(root / "secret").st_mode) == 0
    assert stat.S_IMODE(os.lstat(root / "ro").st_mode) == 0o555
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert os.lstat(root / "usr/bin/su").st_ino == os.lstat(root / "usr/bin/su-again").st_ino
    assert os.lstat(root / "etc/hostname").st_mtime_ns == (MTIME + 2) * 10**9
    assert os.lstat(root / "etc/localtime").st_mtime_ns == (MTIME + 3) * 10**9
    # Directory times survive the children written into them afterwards.
    assert os.lstat(root / "etc").st_mtime_ns == (MTIME + 1) * 10**9
    # Parents that no entry names are made 0755.
    assert stat.S_IMODE(os.lstat(root / "usr").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o755
    assert not [p for p in os.listdir(tmp_path) if p != "root"], "no staging left behind"


def test_pax_sub_second_mtimes(tmp_path: Path) -> None:
    img = image([f("a", b"x", pax={"mtime": "1600000000.123456789"})])
    root = unpack(img, tmp_path / "root")
    assert os.lstat(root / "a").st_mtime_ns == 1_600_000_000_123_456_789


@needs_root
def test_ownership_is_applied_as_root(tmp_path: Path) -> None:
    img = image(
        [
            d("home/user", uid=1000, gid=1000, mode=0o700),
            f("home/user/file", b"x", uid=1000, gid=2000, mode=0o4750),
            sym("home/user/link", "file", uid=1001, gid=1002),
            # Big ids travel in PAX headers.
            f("big", b"", uid=3_000_000, gid=3_000_001),
        ]
    )
    root = unpack(img, tmp_path / "root")
    st = os.lstat(root / "home/user/file")
    assert (st.st_uid, st.st_gid) == (1000, 2000)
    # chown comes before chmod: the setuid bit survives.
    assert stat.S_IMODE(st.st_mode) == 0o4750
    assert (os.lstat(root / "home/user").st_uid, os.lstat(root / "home/user").st_gid) == (
        1000,
        1000,
    )
    assert os.lstat(root / "home/user/link").st_uid == 1001
    assert os.lstat(root / "big").st_uid == 3_000_000


def test_rootless_keeps_the_tree_but_not_the_ownership(tmp_path: Path) -> None:
    entries = [
        d("home/user", uid=1000, gid=1000, mode=0o750),
        f("home/user/file", b"x", uid=1000, gid=2000, mode=0o4750),
        E("dev/null", "chr", devmajor=1, devminor=3, mode=0o666),
        E("fifo", "fifo", mode=0o600),
    ]
    root = unpack(image(entries), tmp_path / "root", rootless=True)
    me = (os.geteuid(), os.getegid())
    st = os.lstat(root / "home/user/file")
    assert (st.st_uid, st.st_gid) == me
    # setuid was meant for uid 1000, not for the caller: dropped (test_layers_bounds has more)
    assert stat.S_IMODE(st.st_mode) == 0o750
    assert stat.S_IMODE(os.lstat(root / "home/user").st_mode) == 0o750
    assert not (root / "dev/null").exists(), "no device nodes in rootless mode"
    assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)


@needs_root
def test_device_nodes_and_fifos_as_root(tmp_path: Path) -> None:
    entries = [
        E("dev/null", "chr", devmajor=1, devminor=3, mode=0o666),
        E("dev/loop0", "blk", devmajor=7, devminor=0, mode=0o660, gid=6),
        E("run/fifo", "fifo", mode=0o620),
    ]
    root = unpack(image(entries), tmp_path / "root")
    st = os.lstat(root / "dev/null")
    if stat.S_ISCHR(st.st_mode):  # where mknod is permitted
        assert os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
        assert stat.S_IMODE(st.st_mode) == 0o666
        assert stat.S_ISBLK(os.lstat(root / "dev/loop0").st_mode)
    st = os.lstat(root / "run/fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620


def test_xattrs_from_pax_headers(tmp_path: Path) -> None:
    if not xattrs_supported(tmp_path):
        pytest.skip("no user xattrs on this filesystem")
    img = image(
        [
            f("f", b"x", pax={"SCHILY.xattr.user.color": "blue"}),
            d("dir", pax={"SCHILY.xattr.user.kind": "folder"}),
            # Not accepted on a symlink (user.* namespace): skipped, not fatal.
            sym("l", "f", pax={"SCHILY.xattr.user.nope": "x"}),
            f("g", b"y", pax={"LIBARCHIVE.xattr.user.b64": "aGVsbG8"}),
        ]
    )
    root = unpack(img, tmp_path / "root")
    assert os.getxattr(root / "f", "user.color") == b"blue"
    assert os.getxattr(root / "dir", "user.kind") == b"folder"
    assert os.getxattr(root / "g", "user.b64") == b"hello"


def test_long_and_non_ascii_names(tmp_path: Path) -> None:
    long_dir = "/".join(["d" * 60] * 3)
    long_name = f"{long_dir}/{'f' * 200}"
    img = image(
        [
            f(long_name, b"long"),
            f("répertoire/ファイル", b"utf8"),
            sym("l" * 120, long_name),
            hl("h" * 150, long_name),
        ]
    )
    root = unpack(img, tmp_path / "root")
    assert read(str(root), long_name) == b"long"
    assert read(str(root), "répertoire/ファイル") == b"utf8"
    assert os.readlink(root / ("l" * 120)) == long_name
    assert read(str(root), "h" * 150) == b"long"


def test_whiteouts_remove_files_and_whole_directories(tmp_path: Path) -> None:
    img = image(
        [f("keep", b"k"), f("gone", b"g"), f("dir/a", b"a"), f("dir/sub/b", b"b"), d("d2")],
        [wh(".wh.gone"), wh(".wh.dir"), wh(".wh.never-existed"), wh("nodir/.wh.x")],
    )
    root = unpack(img, tmp_path / "root")
    assert sorted(os.listdir(root)) == ["d2", "keep"]


def test_opaque_directory_hides_lower_content_not_its_own(tmp_path: Path) -> None:
    img = image(
        [f("o/old1", b"1"), f("o/sub/old2", b"2"), f("other", b"x")],
        # Marker first (as docker writes it) ...
        [d("o"), wh("o/.wh..wh..opq"), f("o/new", b"n")],
        # ... or after the layer's own entries: they stay either way.
        [f("o/newer", b"n2"), f("o/sub/kept", b"k"), wh("o/.wh..wh..opq")],
    )
    root = unpack(img, tmp_path / "root")
    assert sorted(os.listdir(root / "o")) == ["newer", "sub"]
    assert os.listdir(root / "o/sub") == ["kept"]
    assert read(str(root), "other") == b"x"


def test_whiteout_does_not_hide_what_its_own_layer_adds(tmp_path: Path) -> None:
    img = image(
        [f("a/b/lower", b"l")],
        [f("a/b/upper", b"u"), wh("a/.wh.b"), f("c", b"c"), wh(".wh.c")],
    )
    root = unpack(img, tmp_path / "root")
    assert os.listdir(root / "a/b") == ["upper"]
    assert read(str(root), "c") == b"c"


def test_file_replaces_directory_and_directory_replaces_file(tmp_path: Path) -> None:
    img = image(
        [d("x"), f("x/deep/file", b"1"), f("y", b"file"), d("z"), f("z/in", b"z")],
        [f("x", b"now a file"), d("y", mode=0o711), f("y/in", b"2"), sym("z", "y")],
    )
    root = unpack(img, tmp_path / "root")
    assert read(str(root), "x") == b"now a file"
    assert stat.S_ISDIR(os.lstat(root / "y").st_mode)
    assert stat.S_IMODE(os.lstat(root / "y").st_mode) == 0o711
    assert read(str(root), "y/in") == b"2"
    assert os.readlink(root / "z") == "y"


def test_directory_over_directory_merges_and_takes_the_new_metadata(tmp_path: Path) -> None:
    img = image(
        [d("m", mode=0o700, mtime=MTIME), f("m/lower", b"l")],
        [d("m", mode=0o750, mtime=MTIME + 50), f("m/upper", b"u")],
    )
    root = unpack(img, tmp_path / "root")
    assert sorted(os.listdir(root / "m")) == ["lower", "upper"]
    st = os.lstat(root / "m")
    assert stat.S_IMODE(st.st_mode) == 0o750
    assert st.st_mtime_ns == (MTIME + 50) * 10**9


def test_hardlinks_to_files_of_earlier_layers(tmp_path: Path) -> None:
    img = image(
        [f("bin/busybox", b"BB", mode=0o755), f("etc/old", b"old")],
        [hl("bin/sh", "bin/busybox"), hl("bin/ls", "/bin/busybox"), hl("etc/link", "etc/old")],
        [f("etc/old", b"replaced")],
    )
    root = unpack(img, tmp_path / "root")
    inode = os.lstat(root / "bin/busybox").st_ino
    assert os.lstat(root / "bin/sh").st_ino == inode
    assert os.lstat(root / "bin/ls").st_ino == inode
    # Replacing a file makes a new inode: the other link keeps the old content.
    assert read(str(root), "etc/link") == b"old"
    assert read(str(root), "etc/old") == b"replaced"


def test_hardlink_to_a_symlink_links_the_symlink(tmp_path: Path) -> None:
    img = image([f("target", b"t"), sym("s", "target"), hl("s2", "s")])
    root = unpack(img, tmp_path / "root")
    assert os.readlink(root / "s2") == "target"
    assert os.lstat(root / "s2").st_ino == os.lstat(root / "s").st_ino


def test_hardlink_to_itself_is_harmless(tmp_path: Path) -> None:
    root = unpack(image([f("a", b"x"), hl("a", "a")]), tmp_path / "root")
    assert read(str(root), "a") == b"x"


def test_writing_through_usrmerge_symlinks(tmp_path: Path) -> None:
    # /bin -> usr/bin (relative) and /lib -> /usr/lib (absolute): later layers write bin/x.
    img = image(
        [d("usr/bin"), d("usr/lib"), sym("bin", "usr/bin"), sym("lib", "/usr/lib")],
        [f("bin/x", b"x"), f("lib/libc.so", b"c"), hl("bin/y", "lib/libc.so")],
        [wh("bin/.wh.x")],
    )
    root = unpack(img, tmp_path / "root")
    assert os.readlink(root / "bin") == "usr/bin"
    assert os.readlink(root / "lib") == "/usr/lib"
    assert read(str(root), "usr/lib/libc.so") == b"c"
    assert read(str(root), "usr/bin/y") == b"c"
    assert not (root / "usr/bin/x").exists()


def test_root_entry_sets_the_root_metadata(tmp_path: Path) -> None:
    root = unpack(image([d("./", mode=0o750), f("a", b"")]), tmp_path / "root")
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o750


def test_empty_existing_destination_is_used(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    dest.mkdir(mode=0o711)
    os.chmod(dest, 0o711)
    unpack(image([f("a", b"x")]), dest)
    assert read(str(dest), "a") == b"x"
    assert stat.S_IMODE(os.lstat(dest).st_mode) == 0o711


def test_destination_must_be_absent_or_empty(tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_bytes(b"")
    for dest in (full, full / "x", tmp_path / "no" / "parent"):
        with pytest.raises(ConfigurationError):
            unpack_layers(image([f("a")]).sources, dest, rootless=True)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "empty", target_is_directory=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigurationError):
        unpack_layers(image([f("a")]).sources, link, rootless=True)


def test_ownership_without_root_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ConfigurationError, match="rootless"):
        unpack_layers(image([f("a")]).sources, tmp_path / "root")


def test_a_failed_unpack_leaves_the_destination_as_it_was(tmp_path: Path) -> None:
    good = blob([f("a", b"x"), d("big")])
    bad = blob([f("b", b"y")])
    bad.diff_id = sha256(b"not it")
    img = Image([good, bad])
    dest = tmp_path / "root"
    with pytest.raises(LayerDigestError):
        unpack_layers(img.sources, dest)
    assert not dest.exists()
    assert os.listdir(tmp_path) == [], "the staged tree is removed"
    dest.mkdir()
    with pytest.raises(LayerDigestError):
        unpack_layers(img.sources, dest)
    assert os.listdir(dest) == []
    assert os.listdir(tmp_path) == ["root"]


def test_corrupt_layer_fails_cleanly(tmp_path: Path) -> None:
    data = gz(make_tar([f("a", b"x" * 100_000)]))
    img = Image([Blob(data[: len(data) // 2], OCI_GZIP, sha256(b""))])
    with pytest.raises(LayerFormatError):
        unpack_layers(img.sources, tmp_path / "root")
    assert os.listdir(tmp_path) == []
    assert all(r.was_closed for r in img.readers)


def test_mislabelled_and_padded_layers(tmp_path: Path) -> None:
    tar1 = make_tar([f("one", b"1")])
    tar2 = make_tar([f("two", b"2")])
    tar3 = make_tar([f("three", b"3")])
    img = Image(
        [
            Blob(tar1, OCI_GZIP, sha256(tar1)),  # plain tar served as gzip
            Blob(gz(tar2) + b"\0" * 1000 + b"trailing", OCI_ZSTD, sha256(tar2)),
            Blob(zst(tar3) + zstd_skippable(b"toc" * 50), OCI_ZSTD, sha256(tar3)),
        ]
    )
    root = unpack(img, tmp_path / "root")
    assert sorted(os.listdir(root)) == ["one", "three", "two"]


def test_empty_layers(tmp_path: Path) -> None:
    img = Image([Blob(b"", "application/vnd.oci.image.layer.v1.tar", sha256(b"")), blob([])])
    root = unpack(img, tmp_path / "root")
    assert os.listdir(root) == []


def test_many_layers_in_order(tmp_path: Path) -> None:
    layers = [[f("counter", str(i).encode()), f(f"layer{i}", b"")] for i in range(12)]
    root = unpack(image(*layers), tmp_path / "root")
    assert read(str(root), "counter") == b"11"
    assert len(os.listdir(root)) == 13


def test_big_files_stream_through(tmp_path: Path) -> None:
    big = os.urandom(8 * 1024 * 1024 + 123)
    root = unpack(image([f("big", big)], compression="zstd"), tmp_path / "root")
    assert read(str(root), "big") == big


def test_unpack_is_deterministic(tmp_path: Path) -> None:
    layers = (
        [d("a", mode=0o750), f("a/x", b"x"), sym("a/l", "x"), hl("a/h", "a/x")],
        [f("a/y", b"y"), wh("a/.wh.x")],
    )
    one = unpack(image(*layers), tmp_path / "one")
    two = unpack(image(*layers), tmp_path / "two")
    assert snapshot(str(one)) == snapshot(str(two))


@pytest.mark.skipif(not ROOT or sys.platform != "linux", reason="needs root to switch users")
def test_rootless_as_an_unprivileged_user() -> None:
    # Read-only directories and files must not stop later layers (or a failed unpack's
    # cleanup) when the caller has no root powers to bypass permissions.
    import shutil
    import signal
    import tempfile
    import time
    import warnings

    work = Path(tempfile.mkdtemp(prefix="layers-rootless-", dir="/tmp"))
    os.chmod(work, 0o755)
    os.chown(work, 65534, 65534)
    img = image(
        [d("ro", mode=0o555), f("ro/a", b"a", mode=0o444), f("ro/z", b"z", mode=0o000)],
        [f("ro/b", b"b"), wh("ro/.wh.a"), f("ro/z", b"new", mode=0o400)],
    )
    bad = Image([*img.layers, blob([d("ro2", mode=0o500), f("ro2/x", b"")])])
    bad.layers[-1].diff_id = sha256(b"wrong")
    with warnings.catch_warnings():
        # A child that only unpacks; the parent kills it if it ever hangs.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            unpack_layers(img.sources, work / "root", rootless=True)
            try:
                unpack_layers(bad.sources, work / "bad", rootless=True)
            except LayerDigestError:
                code = 0 if os.listdir(work) == ["root"] else 3
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 2
        os._exit(code)
    try:
        deadline = time.monotonic() + 60
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("the unprivileged unpack hung")
            time.sleep(0.02)
        assert os.waitstatus_to_exitcode(status) == 0
        root = work / "root"
        assert sorted(os.listdir(root / "ro")) == ["b", "z"]
        assert stat.S_IMODE(os.lstat(root / "ro").st_mode) == 0o555
        assert read(str(root), "ro/z") == b"new"
        assert os.lstat(root / "ro/b").st_uid == 65534
    finally:
        shutil.rmtree(work)
