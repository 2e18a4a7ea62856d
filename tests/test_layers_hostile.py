"""Hostile layers: nothing is ever written outside the destination.

Every test unpacks next to an ``outside`` directory holding a secret file, and checks
afterwards that ``outside`` (and everything else next to the destination) is exactly as
it was, whether the unpack succeeded or raised UnsafeLayerError.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from containers_image_proxy import ProxyError
from containers_image_proxy.layers import UnsafeLayerError, unpack_layers
from containers_image_proxy.layers._paths import clean_name
from testbed.layers import E, d, f, hl, image, read, snapshot, sym, wh


class Scene:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.outside = base / "outside"
        self.outside.mkdir()
        (self.outside / "secret").write_bytes(b"secret")
        os.chmod(self.outside / "secret", 0o600)
        self.dest = base / "root"
        self.before = self._state()

    def _state(self) -> dict[str, object]:
        state: dict[str, object] = {"listing": sorted(os.listdir(self.base))}
        state.update(snapshot(str(self.outside)))
        st = os.lstat(self.outside)
        state["outside"] = (st.st_mode, st.st_mtime_ns, st.st_nlink)
        return state

    def unpack(self, *layers: Sequence[E], rootless: bool = False) -> Path:
        unpack_layers(image(*layers).sources, self.dest, rootless=rootless)
        return self.dest

    def check(self) -> None:
        after = self._state()
        listing = after.pop("listing")
        before = dict(self.before)
        before.pop("listing")
        assert after == before, "something outside the destination changed"
        assert set(listing) <= {"outside", "root"}  # type: ignore[call-overload]
        secret = self.outside / "secret"
        assert secret.read_bytes() == b"secret"
        assert os.lstat(secret).st_nlink == 1, "no hardlink was made to the secret"


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    s = Scene(tmp_path)
    yield s
    s.check()


def test_dotdot_names_stop_at_the_root(scene: Scene) -> None:
    root = scene.unpack([f("../escape", b"1"), f("a/../../../../outside/secret", b"2")])
    assert read(str(root), "escape") == b"1"
    assert read(str(root), "outside/secret") == b"2"


def test_absolute_names_point_into_the_root(scene: Scene) -> None:
    root = scene.unpack([f(str(scene.outside / "secret"), b"abs"), d("/etc"), f("/etc/x", b"x")])
    assert read(str(root), str(scene.outside / "secret").lstrip("/")) == b"abs"
    assert read(str(root), "etc/x") == b"x"


@pytest.mark.parametrize("target", ["/", "../../..", "../../../../../..", "/..", "."])
def test_symlink_to_the_root_written_through_by_a_later_layer(scene: Scene, target: str) -> None:
    root = scene.unpack(
        [sym("evil", target)],
        [f("evil/outside/secret", b"pwned"), f("evil/new", b"n")],
    )
    assert os.readlink(root / "evil") == target
    assert read(str(root), "outside/secret") == b"pwned"
    assert read(str(root), "new") == b"n"


def test_symlink_to_a_host_path_is_resolved_inside_the_root(scene: Scene) -> None:
    host = str(scene.outside)
    root = scene.unpack([sym("out", host)], [f("out/secret", b"pwned"), f("out/new", b"n")])
    inside = root / host.lstrip("/")
    assert (inside / "secret").read_bytes() == b"pwned"
    assert (inside / "new").read_bytes() == b"n"


def test_symlink_planted_and_used_in_the_same_layer(scene: Scene) -> None:
    root = scene.unpack([sym("up", "../../../.."), f("up/outside/secret", b"pwned")])
    assert read(str(root), "outside/secret") == b"pwned"


def test_relative_symlink_climbing_out_of_a_subdirectory(scene: Scene) -> None:
    root = scene.unpack(
        [d("a/b"), sym("a/b/c", "../../../../outside")],
        [f("a/b/c/secret", b"pwned")],
    )
    assert read(str(root), "outside/secret") == b"pwned"


def test_chained_symlinks_stay_inside(scene: Scene) -> None:
    host = str(scene.outside)
    root = scene.unpack(
        [sym("one", "two/.."), sym("two", "/three"), sym("three", host + "/..")],
        [f("one/outside/secret", b"pwned")],
    )
    # one -> two/.. ; two -> /three -> <host>/outside/.. : all inside the root.
    assert b"pwned" in [p.read_bytes() for p in root.rglob("secret") if p.is_file()]


def test_symlink_loop_is_unsafe(scene: Scene) -> None:
    with pytest.raises(UnsafeLayerError, match="symbolic links"):
        scene.unpack([sym("a", "b"), sym("b", "a")], [f("a/x", b"")])
    assert not scene.dest.exists()


def test_entry_replacing_a_planted_symlink_replaces_the_link_not_its_target(scene: Scene) -> None:
    host_secret = str(scene.outside / "secret")
    root = scene.unpack(
        [sym("link", host_secret), sym("dirlink", str(scene.outside))],
        [
            f("link", b"file now", mode=0o777),
            d("dirlink", mode=0o700),
            E("link2", "fifo"),
        ],
    )
    assert read(str(root), "link") == b"file now"
    assert stat.S_ISDIR(os.lstat(root / "dirlink").st_mode)


def test_metadata_of_a_symlink_entry_never_touches_its_target(scene: Scene) -> None:
    host_secret = str(scene.outside / "secret")
    scene.unpack([sym("s", host_secret, mode=0o777, mtime=1, uid=1234)])
    # scene.check() verifies the secret's mode, owner and mtime are unchanged.


@pytest.mark.parametrize(
    "target",
    ["/etc/passwd", "../../../etc/passwd", "../../../../outside/secret", "nothing/here"],
)
def test_hardlink_to_a_path_the_tree_does_not_have(scene: Scene, target: str) -> None:
    with pytest.raises(UnsafeLayerError) as info:
        scene.unpack([f("ok", b"")], [hl("stolen", target)])
    assert info.value.entry == "stolen"
    assert "not in the tree" in str(info.value)
    assert isinstance(info.value, ProxyError)
    assert info.value.layer.startswith("sha256:")
    assert not scene.dest.exists()


def test_hardlink_through_a_planted_symlink_stays_inside(scene: Scene) -> None:
    host = str(scene.outside)
    with pytest.raises(UnsafeLayerError):
        scene.unpack([sym("h", host)], [hl("x", "h/secret")])
    # With the target present inside the root (at the link's resolution), it links that.
    root = scene.unpack(
        [sym("h", host), f(host + "/secret", b"inside copy")], [hl("x", "h/secret")]
    )
    assert read(str(root), "x") == b"inside copy"


def test_hardlink_to_a_directory_or_the_root_is_unsafe(scene: Scene) -> None:
    for target in ("dir", "/", ".."):
        with pytest.raises(UnsafeLayerError):
            scene.unpack([d("dir")], [hl("x", target)])


@pytest.mark.parametrize("name", [".wh..", ".wh...", "a/.wh...", "a/b/../../.wh..", ".wh."])
def test_whiteouts_naming_the_root_or_above_are_unsafe(scene: Scene, name: str) -> None:
    with pytest.raises(UnsafeLayerError, match="whiteout"):
        scene.unpack([f("a/keep", b"k")], [wh(name)])
    assert not scene.dest.exists()


def test_whiteouts_with_dotdot_stay_inside(scene: Scene) -> None:
    root = scene.unpack(
        [f("outside/secret", b"inside"), f("keep", b"k")],
        [wh("../../outside/.wh.secret"), wh("../.wh.outside")],
    )
    assert os.listdir(root) == ["keep"]


def test_whiteout_through_a_symlink_to_a_host_path(scene: Scene) -> None:
    host = str(scene.outside)
    root = scene.unpack([sym("out", host), f("keep", b"")], [wh("out/.wh.secret")])
    assert sorted(os.listdir(root)) == ["keep", "out"]


def test_opaque_marker_through_a_symlink_to_the_root(scene: Scene) -> None:
    root = scene.unpack([f("lower", b""), sym("evil", "/")], [wh("evil/.wh..wh..opq")])
    # The root itself became opaque: everything below is gone, nothing outside is touched.
    assert os.listdir(root) == []


@pytest.mark.parametrize("name", ["", ".", "./", "/", "a/.."])
def test_non_directory_entries_naming_the_root_are_unsafe(scene: Scene, name: str) -> None:
    with pytest.raises(UnsafeLayerError):
        scene.unpack([f(name, b"x")])


def test_entry_under_a_regular_file_is_unsafe(scene: Scene) -> None:
    with pytest.raises(UnsafeLayerError, match="not a directory"):
        scene.unpack([f("file", b"")], [f("file/x", b"")])


def test_symlink_with_no_target_is_unsafe(scene: Scene) -> None:
    with pytest.raises(UnsafeLayerError):
        scene.unpack([sym("s", "")])


def test_names_that_are_too_long_are_unsafe(scene: Scene) -> None:
    with pytest.raises(UnsafeLayerError, match="not a valid name"):
        scene.unpack([f("x" * 300, b"")])


def test_nul_bytes_make_a_name_invalid() -> None:
    for name in ("a\0b", ""):
        with pytest.raises(UnsafeLayerError):
            clean_name(name)
    assert clean_name("/../a/./b//c/..") == ("a", "b")


def test_device_entries_are_skipped_rootless(scene: Scene) -> None:
    root = scene.unpack([E("dev/sda", "blk", devmajor=8, devminor=0)], rootless=True)
    assert os.listdir(root / "dev") == []
