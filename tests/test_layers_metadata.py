"""Metadata a hostile layer can carry: privileged bits, the runtime's own xattrs, and
numbers out of range (issue 10).

The same entry must behave the same in unpack, list_dir and read_file: refused with
UnsafeLayerError by all three (unpack leaving nothing behind), or clamped the same way.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import tarfile
from pathlib import Path
from typing import Any

import pytest

from containers_image_proxy.layers import (
    LayerFormatError,
    UnsafeLayerError,
    list_dir_from_layers,
    read_file_from_layers,
    unpack_layers,
)
from containers_image_proxy.layers._meta import check_entry
from testbed.layers import OCI_TAR, Blob, E, Image, f, image, make_tar, sha256

LAYER_ERRORS = (UnsafeLayerError, LayerFormatError)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

# A valid VFS_CAP_REVISION_2 value: effective, CAP_NET_BIND_SERVICE permitted.
CAP_NET_BIND = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


def xattrs(path: Path) -> dict[str, bytes]:
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in os.listxattr(path)}


def xattrs_work(tmp_path: Path, name: str) -> bool:
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, name, b"1")
        return True
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM, errno.EINVAL):
            return False
        raise
    finally:
        probe.unlink()


# --- least privilege -----------------------------------------------------------------------


@needs_root
def test_rootless_drops_setuid_setgid_and_capabilities(tmp_path: Path) -> None:
    if not xattrs_work(tmp_path, "security.capability") and not xattrs_work(tmp_path, "user.x"):
        pytest.skip("no xattrs here")
    cap = {"SCHILY.xattr.security.capability": CAP_NET_BIND.decode("latin-1")}
    entries = [
        f("bin/suid", b"x", uid=1000, mode=0o4755),
        f("bin/sgid", b"x", gid=1000, mode=0o2711),
        f("bin/ping", b"x", mode=0o755, pax=cap),
        E("dir", "dir", mode=0o2775),
        E("fifo", "fifo", mode=0o4644),
    ]
    # tarfile keeps PAX values as str: latin-1 round-trips the raw bytes through UTF-8.
    entries[2].pax = {
        k: v.encode("latin-1").decode("utf-8", "surrogateescape") for k, v in cap.items()
    }
    img = image(entries)
    rooted = tmp_path / "rooted"
    unpack_layers(img.sources, rooted, rootless=False)
    assert os.stat(rooted / "bin/suid").st_mode & 0o7777 == 0o4755, "root keeps what it owns"
    assert os.stat(rooted / "bin/suid").st_uid == 1000
    has_caps = "security.capability" in xattrs(rooted / "bin/ping")
    mine = tmp_path / "mine"
    unpack_layers(img.sources, mine, rootless=True)
    st = os.stat(mine / "bin/suid")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755), "no setuid root file"
    assert stat.S_IMODE(os.stat(mine / "bin/sgid").st_mode) == 0o711
    assert stat.S_IMODE(os.lstat(mine / "fifo").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(mine / "dir").st_mode) == 0o2775, "a directory's setgid stays"
    assert "security.capability" not in xattrs(mine / "bin/ping")
    if has_caps:
        assert xattrs(rooted / "bin/ping")["security.capability"] == CAP_NET_BIND
    # The listing shows the image's bits (what a rootful unpack keeps).
    listed = {e.name: e.mode for e in list_dir_from_layers(img.sources, "/bin")}
    assert listed["suid"] == 0o4755


@needs_root
@pytest.mark.parametrize("rootless", [False, True])
def test_runtime_xattrs_are_never_applied(tmp_path: Path, rootless: bool) -> None:
    if not xattrs_work(tmp_path, "trusted.probe"):
        pytest.skip("no trusted xattrs here")
    forbidden = [
        "security.selinux",
        "trusted.overlay.opaque",
        "trusted.overlay.redirect",
        "trusted.overlay.metacopy",
        "user.overlay.opaque",
    ]
    pax = {f"SCHILY.xattr.{name}": "y" for name in forbidden}
    pax["SCHILY.xattr.user.kept"] = "v"
    pax["SCHILY.xattr.trusted.other"] = "t"
    img = image([f("file", b"", pax=pax), E("d", "dir", pax=pax)])
    root = tmp_path / "root"
    unpack_layers(img.sources, root, rootless=rootless)
    for rel in ("file", "d"):
        got = xattrs(root / rel)
        assert not set(forbidden) & set(got), rel
        assert got.get("user.kept") == b"v"
        assert got.get("trusted.other") == b"t"


# --- odd numbers ---------------------------------------------------------------------------

REFUSED: dict[str, dict[str, Any]] = {
    "mtime-nan": {"pax": {"mtime": "nan"}},
    "mtime-inf": {"pax": {"mtime": "inf"}},
    "mtime-1e30": {"pax": {"mtime": "1e30"}},
    "mtime-past-int64": {"pax": {"mtime": "99999999999999999999"}},
    "atime-junk": {"pax": {"atime": "soon"}},
    "uid-2**32": {"uid": 2**32},
    "gid-2**40": {"gid": 2**40},
    "uid-negative": {"uid": -1},
    "xattr-name-nul": {"pax": {"SCHILY.xattr.user.a\0b": "v"}},
    "xattr-name-empty": {"pax": {"SCHILY.xattr.": "v"}},
    "xattr-name-too-long": {"pax": {"SCHILY.xattr.user." + "n" * 300: "v"}},
    "xattr-value-too-long": {"pax": {"SCHILY.xattr.user.big": "v" * 70000}},
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_odd_metadata_is_refused_by_all_three(tmp_path: Path, case: str) -> None:
    img = image([f("etc/ok", b"ok"), f("etc/odd", b"odd", **REFUSED[case])])
    # A Go-compatible tar reader refuses some of these headers itself (LayerFormatError);
    # what it lets through, the engine refuses (UnsafeLayerError). Either way, all three.
    with pytest.raises(LAYER_ERRORS) as info:
        unpack_layers(img.sources, tmp_path / "root", rootless=True)
    assert info.value.layer.startswith("sha256:")
    if isinstance(info.value, UnsafeLayerError):
        assert info.value.entry == "etc/odd"
    assert os.listdir(tmp_path) == [], "nothing left behind"
    with pytest.raises(type(info.value)):
        list_dir_from_layers(img.sources, "/etc")
    with pytest.raises(type(info.value)):
        read_file_from_layers(img.sources, "/etc/odd")
    with pytest.raises(type(info.value)):
        read_file_from_layers(img.sources, "/etc/ok")  # the same layer: refused whole


CLAMPED = {
    "negative": ({"mtime": -1}, 0),
    "negative-pax-fraction": ({"pax": {"mtime": "-5.5"}}, 0),
    "past-2262": ({"mtime": 2**40}, 0),
    "pax-precision": ({"pax": {"mtime": "1600000000.123456789"}}, 1_600_000_000_123_456_789),
    "pax-plus-sign": ({"pax": {"mtime": "+1600000000.5"}}, 1_600_000_000_500_000_000),
}


@pytest.mark.parametrize("case", sorted(CLAMPED))
def test_times_out_of_range_are_clamped_the_same_everywhere(tmp_path: Path, case: str) -> None:
    fields, want_ns = CLAMPED[case]
    img = image([f("etc/odd", b"odd", **fields)])
    root = tmp_path / "root"
    unpack_layers(img.sources, root, rootless=True)
    assert os.stat(root / "etc/odd").st_mtime_ns == want_ns
    (entry,) = list_dir_from_layers(img.sources, "/etc/odd")
    assert entry.mtime == want_ns / 1e9
    assert read_file_from_layers(img.sources, "/etc/odd") == b"odd"


def test_device_numbers_out_of_range_are_refused(tmp_path: Path) -> None:
    # GNU format: base-256 numbers, the only way tarfile writes a device number this big.
    entries = [E("dev/x", "chr", devmajor=1, devminor=3), E("dev/y", "blk", devmajor=2**33)]
    tar = make_tar(entries, fmt=tarfile.GNU_FORMAT)
    img = Image([Blob(tar, OCI_TAR, sha256(tar))])
    with pytest.raises(UnsafeLayerError, match="device major"):
        unpack_layers(img.sources, tmp_path / "root", rootless=True)
    assert os.listdir(tmp_path) == []
    with pytest.raises(UnsafeLayerError, match="device major"):
        list_dir_from_layers(img.sources, "/dev")


def test_values_no_tar_parser_gives_today_are_refused_too() -> None:
    """A parser may hand over what tarfile cannot write: the checks do not trust it."""
    for field, value in [
        ("size", -1),
        ("size", 2**63),
        ("mtime", float("nan")),
        ("mtime", float("-inf")),
        ("mtime", "x"),
        ("uid", 1.5),
    ]:
        info = tarfile.TarInfo("odd")
        setattr(info, field, value)
        with pytest.raises(UnsafeLayerError):
            check_entry(info)
    assert check_entry(tarfile.TarInfo("fine")) == (0, 0)
