"""The listing behind ``ls`` (layers/_listing.py), checked against ``unpack_layers``: for the
layer engine's own tricky images, every directory of the unpacked tree must list exactly as
the in-memory merge says (names, types, modes, sizes, link targets, hardlink counts)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from containers_image_proxy.layers import LayerDigestError, UnsafeLayerError, unpack_layers
from containers_image_proxy.layers._listing import DirEntry, list_dir_from_layers, merge_layers
from test_layers_umoci import LAYERS
from testbed.layers import MTIME, Image, d, f, hl, image, sym, wh

IMAGES: dict[str, Image] = {
    "umoci": image(*LAYERS),
    "whiteouts": image(
        [f("keep", b"k"), f("gone", b"g"), f("dir/a", b"a"), f("dir/sub/b", b"b"), d("d2")],
        [wh(".wh.gone"), wh(".wh.dir"), wh(".wh.never-existed"), wh("nodir/.wh.x")],
    ),
    "opaque": image(
        [f("o/old1", b"1"), f("o/sub/old2", b"2"), f("other", b"x")],
        [d("o"), wh("o/.wh..wh..opq"), f("o/new", b"n")],
        [f("o/newer", b"n2"), f("o/sub/kept", b"k"), wh("o/.wh..wh..opq")],
    ),
    "same-layer": image(
        [f("a/b/lower", b"l")],
        [f("a/b/upper", b"u"), wh("a/.wh.b"), f("c", b"c"), wh(".wh.c")],
    ),
    "replace": image(
        [d("x"), f("x/deep/file", b"1"), f("y", b"file"), d("z"), f("z/in", b"z")],
        [f("x", b"now a file"), d("y", mode=0o711), f("y/in", b"2"), sym("z", "y")],
    ),
    "merge": image(
        [d("m", mode=0o700, mtime=MTIME), f("m/lower", b"l")],
        [d("m", mode=0o750, mtime=MTIME + 50), f("m/upper", b"u")],
    ),
    "hardlinks": image(
        [f("bin/busybox", b"BB", mode=0o755), f("etc/old", b"old")],
        [hl("bin/sh", "bin/busybox"), hl("bin/ls", "/bin/busybox"), hl("etc/link", "etc/old")],
        [f("etc/old", b"replaced")],
    ),
    "usrmerge": image(
        [d("usr/bin"), d("usr/lib"), sym("bin", "usr/bin"), sym("lib", "/usr/lib")],
        [f("bin/x", b"x"), f("lib/libc.so", b"c"), hl("bin/y", "lib/libc.so")],
        [wh("bin/.wh.x")],
    ),
}


def on_disk(root: Path, rel: str) -> list[tuple[object, ...]]:
    out = []
    for name in sorted(os.listdir(root / rel)):
        st = os.lstat(root / rel / name)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            out.append((name, "symlink", os.readlink(root / rel / name)))
        elif stat.S_ISDIR(st.st_mode):
            out.append((name, "dir", oct(mode)))
        else:
            out.append((name, "file", oct(mode), st.st_size, st.st_nlink))
    return out


def listed(entries: list[DirEntry]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for e in entries:
        if e.kind == "symlink":
            out.append((e.name, "symlink", e.linkname))
        elif e.kind == "dir":
            out.append((e.name, "dir", oct(e.mode)))
        else:
            # Compared with a rootless unpack, which drops setuid/setgid (the listing
            # shows the image's bits, as a rootful unpack keeps them).
            out.append((e.name, e.kind, oct(e.mode & ~0o6000), e.size, e.nlink))
    return out


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_listing_matches_unpack(name: str, tmp_path: Path) -> None:
    img = IMAGES[name]
    root = tmp_path / "root"
    unpack_layers(img.sources, root, rootless=True)
    tree = merge_layers(img.sources)
    for dirpath, _dirs, _files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel
        assert listed(tree.list("/" + rel)) == on_disk(root, rel), rel


def test_paths_resolve_through_symlinks_and_misses_raise() -> None:
    tree = merge_layers(IMAGES["usrmerge"].sources)
    assert [e.name for e in tree.list("/bin")] == ["y"]  # bin -> usr/bin, x whited out
    (entry,) = tree.list("/lib/libc.so")  # a file lists itself, at its real path
    assert entry.path == "/usr/lib/libc.so" and entry.nlink == 2
    assert entry.st_mode == stat.S_IFREG | 0o644
    with pytest.raises(FileNotFoundError):
        tree.list("/bin/x")
    with pytest.raises(NotADirectoryError):
        tree.list("/usr/lib/libc.so/inside")
    assert [e.name for e in tree.list("/usr/../usr/./bin/")] == ["y"]


def test_every_layer_is_verified() -> None:
    img = IMAGES["opaque"]
    sources = img.sources
    sources[1] = type(sources[1])(sources[1].digest, sources[1].media_type,
                                  "sha256:" + "0" * 64, sources[1].open)  # fmt: skip
    with pytest.raises(LayerDigestError):
        list_dir_from_layers(sources, "/")
    assert img.all_drained()


def test_unsafe_entries_are_refused() -> None:
    with pytest.raises(UnsafeLayerError, match="hardlink target"):
        list_dir_from_layers(image([hl("a", "missing")]).sources)
    with pytest.raises(UnsafeLayerError, match="not a directory"):
        list_dir_from_layers(image([f("file", b"x"), f("file/below", b"y")]).sources)


def test_entry_json() -> None:
    (entry,) = merge_layers(image([sym("s", "/etc/x")]).sources).list("/")
    assert entry.to_json()["linkname"] == "/etc/x"
    assert entry.to_json()["kind"] == "symlink"


def test_entry_layer_is_the_layer_that_wrote_the_name_last() -> None:
    img = image(
        [f("bin/busybox", b"BB"), d("etc"), f("etc/old", b"o"), f("etc/keep", b"k")],
        [hl("bin/sh", "bin/busybox"), d("etc", mode=0o750), f("etc/old", b"new"), f("n/x", b"")],
        [hl("bin/ls", "bin/sh")],
    )
    lower, middle, top = (src.digest for src in img.sources)
    tree = merge_layers(img.sources)
    layers = {e.path: e.layer for e in tree.list("/bin") + tree.list("/etc") + tree.list("/")}
    # A hardlink names the layer that wrote the link, not the one that wrote its target.
    assert layers["/bin/busybox"] == lower
    assert layers["/bin/sh"] == middle
    assert layers["/bin/ls"] == top
    assert layers["/etc/keep"] == lower
    assert layers["/etc/old"] == middle  # replaced
    assert layers["/etc"] == middle  # a directory entry over a directory merges, and names it
    assert layers["/n"] == middle  # implied by n/x
    assert layers["/bin"] == lower
    # A non-directory lists itself, with its own name's layer too.
    ((sh,), (busybox,)) = tree.list("/bin/sh"), tree.list("/bin/busybox")
    assert (sh.layer, sh.nlink, busybox.layer, busybox.nlink) == (middle, 3, lower, 3)
    # A later plain file over the link name takes it back from the link.
    again = image(*[[f("bin/busybox", b"BB")], [hl("bin/sh", "bin/busybox")], [f("bin/sh", b"")]])
    ((sh,),) = (merge_layers(again.sources).list("/bin/sh"),)
    assert (sh.layer, sh.nlink) == (again.sources[2].digest, 1)


def test_missing_paths_are_named_absolute() -> None:
    img = image([f("etc/passwd", b"root"), sym("lnk", "etc/passwd")])
    tree = merge_layers(img.sources)
    for asked in ("etc/nope", "/etc/nope"):
        with pytest.raises(FileNotFoundError) as missing:
            tree.list(asked)
        assert missing.value.filename == "/etc/nope"
    with pytest.raises(NotADirectoryError) as not_dir:
        tree.list("etc/passwd/x")
    assert not_dir.value.filename == "/etc/passwd"
    ((entry,),) = (tree.list("lnk"),)
    assert entry.path == "/etc/passwd"
    with pytest.raises(UnsafeLayerError, match="/file is not a directory"):
        list_dir_from_layers(image([f("file", b"x"), f("file/below", b"y")]).sources)
