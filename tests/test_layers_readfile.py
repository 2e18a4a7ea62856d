"""Reading one file out of the merged filesystem, top down, without unpacking."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from containers_image_proxy import ProxyError
from containers_image_proxy.layers import (
    LayerDigestError,
    UnsafeLayerError,
    merge_layers,
    read_file_from_layers,
    unpack_layers,
)
from test_cli_ls import listed, on_disk
from testbed.layers import E, Image, blob, d, f, hl, image, sha256, sym, wh


def read(img: Image, path: str) -> bytes:
    data = read_file_from_layers(img.sources, path)
    assert img.all_drained(), "every blob opened is read to its end and closed"
    return data


def test_reads_a_file_from_the_top_layer_only() -> None:
    img = image([f("etc/os-release", b"old")], [f("other", b"")], [f("etc/os-release", b"new")])
    assert read(img, "/etc/os-release") == b"new"
    assert img.opened == [2], "the answer was in the top layer: nothing below was fetched"


def test_goes_down_until_the_answer_is_known() -> None:
    img = image([f("etc/os-release", b"base")], [f("usr/x", b"")], [f("opt/y", b"")])
    assert read(img, "etc/os-release") == b"base"
    assert img.opened == [2, 1, 0]


def test_missing_file_and_directory() -> None:
    img = image([f("etc/a", b"")])
    with pytest.raises(FileNotFoundError):
        read(img, "etc/b")
    with pytest.raises(FileNotFoundError):
        read(img, "nope/a")
    with pytest.raises(FileNotFoundError):
        read(img, "etc/a/below-a-file")
    with pytest.raises(IsADirectoryError):
        read(img, "etc")
    with pytest.raises(IsADirectoryError):
        read(img, "/")


def test_whiteout_above_hides_and_stops_the_scan() -> None:
    img = image([f("a/file", b"1")], [f("b", b"")], [d("a"), wh("a/.wh.file")], [f("c", b"")])
    with pytest.raises(FileNotFoundError):
        read(img, "a/file")
    assert img.opened == [3, 2], "the whiteout settles it: the layers below are not fetched"


def test_whiteout_of_a_parent_directory_hides() -> None:
    img = image([f("a/b/file", b"1")], [wh(".wh.a")], [d("a")])
    with pytest.raises(FileNotFoundError):
        read(img, "a/b/file")


def test_opaque_directory_above_hides_lower_content() -> None:
    img = image(
        [f("o/sub/lower", b"1"), f("o/kept-below", b"2")],
        [d("o"), wh("o/.wh..wh..opq"), f("o/upper", b"3")],
    )
    with pytest.raises(FileNotFoundError):
        read(img, "o/sub/lower")
    with pytest.raises(FileNotFoundError):
        read(img, "o/kept-below")
    assert read(img, "o/upper") == b"3"
    assert img.opened.count(0) == 0


def test_file_replacing_a_directory_hides_what_was_under_it() -> None:
    img = image([f("x/y", b"1")], [f("x", b"file")], [d("x"), f("x/z", b"2")])
    with pytest.raises(FileNotFoundError):
        read(img, "x/y")
    assert read(img, "x/z") == b"2"


def test_symlinks_are_followed_inside_the_root() -> None:
    img = image(
        [
            f("usr/share/zoneinfo/UTC", b"utc"),
            d("etc"),
            sym("etc/localtime", "/usr/share/zoneinfo/UTC"),
            sym("etc/rel", "../usr/share/zoneinfo/UTC"),
            sym("etc/escape", "../../../../../usr/share/zoneinfo/UTC"),
            sym("zi", "usr/share/zoneinfo"),
        ],
        [f("other", b"")],
    )
    for path in ("etc/localtime", "etc/rel", "etc/escape", "zi/UTC", "/zi/../zoneinfo/./UTC"):
        assert read(img, path) == b"utc"


def test_symlink_loops() -> None:
    img = image([sym("a", "b"), sym("b", "a")])
    with pytest.raises(OSError) as info:
        read(img, "a")
    assert info.value.errno == errno.ELOOP


def test_dangling_symlink_is_not_found() -> None:
    with pytest.raises(FileNotFoundError):
        read(image([sym("a", "/nowhere")]), "a")


def test_names_written_through_a_lower_symlink() -> None:
    # /bin -> usr/bin in the base; a later layer writes bin/x (no bin/ entry of its own).
    img = image([d("usr/bin"), sym("bin", "usr/bin"), f("usr/bin/old", b"o")], [f("bin/x", b"x")])
    assert read(img, "/usr/bin/x") == b"x"
    assert read(img, "/bin/x") == b"x"
    assert read(img, "/bin/old") == b"o"


def test_directory_entry_replacing_a_lower_symlink() -> None:
    img = image(
        [d("usr/bin"), sym("bin", "usr/bin"), f("usr/bin/a", b"a")], [d("bin"), f("bin/b", b"b")]
    )
    assert read(img, "bin/b") == b"b"
    with pytest.raises(FileNotFoundError):
        read(img, "bin/a")
    with pytest.raises(FileNotFoundError):
        read(img, "usr/bin/b")


def test_hardlinks_in_the_same_layer_and_across_layers() -> None:
    img = image([f("bin/busybox", b"BB")], [hl("bin/sh", "bin/busybox"), f("x", b"")])
    assert read(img, "bin/sh") == b"BB"
    img = image([f("bin/busybox", b"BB"), hl("bin/ls", "/bin/busybox")])
    assert read(img, "bin/ls") == b"BB"
    img = image([f("a", b"old")], [hl("b", "a"), f("a", b"new")])
    assert read(img, "b") == b"old"
    assert read(img, "a") == b"new"


def test_hardlink_to_nothing_is_unsafe() -> None:
    with pytest.raises(UnsafeLayerError):
        read(image([hl("b", "/etc/passwd")]), "b")


def test_implicit_parent_directories() -> None:
    assert read(image([f("a/b/c", b"c")]), "a/b/c") == b"c"


def test_a_digest_mismatch_in_a_scanned_layer_raises() -> None:
    bad = blob([f("a", b"x")])
    bad.diff_id = sha256(b"other")
    with pytest.raises(LayerDigestError):
        read_file_from_layers(Image([bad]).sources, "a")


def test_hostile_names_in_read_file() -> None:
    img = image([f("../../etc/passwd", b"inside"), sym("up", "../../..")])
    assert read(img, "/etc/passwd") == b"inside"
    assert read(img, "up/etc/passwd") == b"inside"
    assert read(img, "../../../etc/passwd") == b"inside"
    with pytest.raises(UnsafeLayerError):
        read(image([wh("a/.wh...")]), "x")


def test_fifo_is_not_a_regular_file() -> None:
    with pytest.raises(OSError) as info:
        read(image([E("p", "fifo")]), "p")
    assert info.value.errno == errno.EINVAL


# --- read_file agrees with unpack -----------------------------------------------------------

NAMES = ["a", "b", "a/x", "a/y", "b/x", "a/x/z"]
# Targets with ".." after a name ("a/x/..") are left out: read_file walks those
# physically while a layer may create the name on the way (a known approximation).
TARGETS = ["a", "b", "/a", "../b", "a/x", "/a/x", "x", "../../a", "nowhere", "."]


def _entries(draw: st.DrawFn) -> list[E]:
    n = draw(st.integers(1, 5))
    out: list[E] = []
    for _ in range(n):
        name = draw(st.sampled_from(NAMES))
        kind = draw(st.sampled_from(["file", "file", "dir", "symlink", "link", "wh", "opq"]))
        if kind == "file":
            out.append(f(name, draw(st.sampled_from([b"1", b"2", b"3"]))))
        elif kind == "dir":
            out.append(d(name))
        elif kind == "symlink":
            out.append(sym(name, draw(st.sampled_from(TARGETS))))
        elif kind == "link":
            out.append(hl(name, draw(st.sampled_from(NAMES))))
        elif kind == "wh":
            parent, _, base = name.rpartition("/")
            out.append(wh(f"{parent}/.wh.{base}" if parent else f".wh.{base}"))
        else:
            out.append(wh(f"{name}/.wh..wh..opq"))
    return out


@st.composite
def stacks(draw: st.DrawFn) -> list[list[E]]:
    layers = [_entries(draw) for _ in range(draw(st.integers(1, 3)))]
    # Within one layer a name appears once (ordering inside a layer is not modelled).
    for layer in layers:
        seen: set[str] = set()
        for e in list(layer):
            key = e.name.replace(".wh.", "").rstrip("/")
            if key in seen:
                layer.remove(e)
            seen.add(key)
        # Image builders list the directories they write into, parents first: add them.
        names = {e.name for e in layer}
        for e in list(layer):
            parts = e.name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                parent = "/".join(parts[:i])
                if parent not in names:
                    names.add(parent)
                    layer.append(d(parent))
        layer.sort(key=lambda e: e.name.replace(".wh.", ""))
    return layers


def describe(layers: list[list[E]]) -> str:
    return " | ".join(
        ", ".join(f"{e.kind}:{e.name}" + (f"->{e.linkname}" if e.linkname else "") for e in layer)
        for layer in layers
    )


def read_in_root(root: str, path: str) -> Optional[bytes]:
    """Read ``path`` in the unpacked tree, following symlinks confined to ``root``."""
    todo = [p for p in path.split("/") if p]
    real: list[str] = []
    for _ in range(200):
        if not todo:
            break
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if real:
                real.pop()
            continue
        full = os.path.join(root, *real, part)
        try:
            st_ = os.lstat(full)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st_.st_mode):
            target = os.readlink(full)
            if target.startswith("/"):
                real = []
            todo = [p for p in target.split("/") if p] + todo
            continue
        if todo and not stat.S_ISDIR(st_.st_mode):
            return None
        real.append(part)
    else:
        return b"<loop>"
    full = os.path.join(root, *real)
    if not real or not stat.S_ISREG(os.lstat(full).st_mode):
        return b"<not a file>"
    with open(full, "rb") as fh:
        return fh.read()


def read_merged(img: Image, path: str) -> Optional[bytes]:
    try:
        return read_file_from_layers(img.sources, path)
    except FileNotFoundError:
        return None
    except (IsADirectoryError, UnsafeLayerError):
        return b"<not a file>"
    except OSError as e:
        return b"<loop>" if e.errno == errno.ELOOP else b"<not a file>"


# Derandomized: the same examples on every run (CI stays deterministic); see the module
# docstring of _readfile for the in-layer orderings read_file only approximates.
@settings(
    max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(stacks())
def test_read_file_and_list_dir_agree_with_unpack(
    tmp_path_factory: pytest.TempPathFactory, layers: list[list[E]]
) -> None:
    img = image(*layers)
    dest = tmp_path_factory.mktemp("agree") / "root"
    try:
        unpack_layers(img.sources, dest, rootless=True)
    except UnsafeLayerError as e:
        # list_dir applies every entry with the same rules: it refuses the same one.
        with pytest.raises(UnsafeLayerError) as listing_error:
            merge_layers(img.sources)
        assert (listing_error.value.entry, listing_error.value.reason) == (e.entry, e.reason)
        return  # read_file may or may not meet the same entry; nothing to compare
    for path in [*NAMES, "a/x/z/.."]:
        expected = read_in_root(str(dest), path)
        got = read_merged(img, path)
        assert got == expected, f"{path}: {got!r} != {expected!r} in {describe(layers)}"
    # Every directory of the unpacked tree lists as the in-memory merge says.
    tree = merge_layers(img.sources)
    for dirpath, _dirs, _files in os.walk(dest):
        rel = os.path.relpath(dirpath, dest)
        rel = "" if rel == "." else rel
        got_list, want = listed(tree.list("/" + rel)), on_disk(dest, rel)
        assert got_list == want, f"/{rel}: {got_list} != {want} in {describe(layers)}"


def test_reading_does_not_need_a_directory(tmp_path: Path) -> None:
    img = image([f("a", b"x")])
    os.chdir(tmp_path)
    assert read(img, "a") == b"x"
    assert os.listdir(tmp_path) == []


def test_errors_name_paths_absolute_as_in_the_image() -> None:
    img = image([f("etc/passwd", b"root:x"), d("etc/dir"), sym("loop", "loop")])
    for asked, error in [
        ("etc/nope", FileNotFoundError),
        ("/etc/dir", IsADirectoryError),
        ("etc/dir", IsADirectoryError),
        ("etc/passwd/x", FileNotFoundError),
    ]:
        with pytest.raises(error) as caught:
            read_file_from_layers(img.sources, asked)
        assert caught.value.filename == "/" + asked.lstrip("/"), asked
    with pytest.raises(OSError) as looped:
        read_file_from_layers(img.sources, "loop")
    assert looped.value.errno == errno.ELOOP and looped.value.filename == "/loop"
    with pytest.raises(ProxyError, match="^/etc/passwd: the file is 6 bytes"):
        read_file_from_layers(img.sources, "etc/passwd", max_size=3)
