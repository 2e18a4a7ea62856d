"""``read_files``: several files of the merged filesystem in one pass, each layer read at
most once and no further down than the paths need; the same answers as ``read_file``."""

from __future__ import annotations

import asyncio
import errno

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_config
from containers_image_proxy import (
    AsyncImageProxy,
    ConfigurationError,
    ImageProxy,
    ProxyError,
    read_file,
    read_files,
    read_files_async,
)
from containers_image_proxy.layers import read_file_from_layers, read_files_from_layers
from testbed.images import LayoutBuilder, make_tar
from testbed.layers import Image, d, f, image, sym, wh
from testbed.releases import SkopeoRelease

OS_RELEASE, DPKG = "/etc/os-release", "/var/lib/dpkg/status"


def test_each_layer_is_read_once_for_all_paths() -> None:
    img = image(
        [f("etc/os-release", b"base"), f("var/lib/dpkg/status", b"Package: a\n")],
        [f("usr/bin/x", b"")],
        [f("var/lib/dpkg/status", b"Package: b\n")],
    )
    assert read_files_from_layers(img.sources, [OS_RELEASE, DPKG]) == {
        OS_RELEASE: b"base",
        DPKG: b"Package: b\n",
    }
    # one pass, top down: two read_file calls would have fetched the top layer twice
    assert img.opened == [2, 1, 0]
    assert img.all_drained()


def test_stops_as_soon_as_every_path_is_settled() -> None:
    img = image(
        [f("etc/os-release", b"old"), f("var/lib/dpkg/status", b"old")],
        [f("etc/os-release", b"new"), f("var/lib/dpkg/status", b"new")],
    )
    assert read_files_from_layers(img.sources, [OS_RELEASE, DPKG]) == {
        OS_RELEASE: b"new",
        DPKG: b"new",
    }
    assert img.opened == [1], "the top layer settles both: the one below is never fetched"


def test_what_is_not_a_regular_file_is_left_out() -> None:
    img = image(
        [f("etc/os-release", b"x"), d("etc/dir"), f("etc/gone", b"")],
        [wh("etc/.wh.gone"), sym("etc/link", "os-release")],
    )
    got = read_files_from_layers(
        img.sources, ["/etc/link", "/etc/dir", "/etc/gone", "/nope", "/etc/os-release/x"]
    )
    assert got == {"/etc/link": b"x"}


def test_one_path_given_as_a_string_is_refused() -> None:
    img = image([f("etc/os-release", b"x")])
    with pytest.raises(ConfigurationError, match="list of paths"):
        read_files_from_layers(img.sources, "/etc/os-release")


def test_a_symlink_loop_is_left_out_and_the_rest_read() -> None:
    img = image([sym("etc/loop", "loop"), f("etc/os-release", b"x")])
    assert read_files_from_layers(img.sources, ["/etc/loop", OS_RELEASE]) == {OS_RELEASE: b"x"}


def test_max_size_refuses_before_keeping() -> None:
    img = image([f("etc/os-release", b"a" * 100), f("small", b"ok")])
    with pytest.raises(ProxyError, match="100 bytes"):
        read_files_from_layers(img.sources, ["/small", OS_RELEASE], max_size=10)
    assert read_files_from_layers(img.sources, ["/small"], max_size=10) == {"/small": b"ok"}


_names = st.sampled_from(["a", "b", "a/b", "a/c", "b/a", "c"])
_entry = st.one_of(
    st.builds(lambda n, data: f(n, data), _names, st.binary(max_size=4)),
    st.builds(d, _names),
    st.builds(wh, st.sampled_from([".wh.a", "a/.wh.b", "b/.wh.a", ".wh.c", "a/.wh..wh..opq"])),
    st.builds(lambda n, t: sym(n, t), _names, st.sampled_from(["a", "../b", "/a/b", "c"])),
)


@settings(
    max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(layers=st.lists(st.lists(_entry, max_size=5), min_size=1, max_size=4))
def test_agrees_with_read_file_path_by_path(layers: list[list[object]]) -> None:
    try:
        img: Image = image(*layers)  # type: ignore[arg-type]
    except Exception:
        return  # tarfile cannot write this combination
    paths = ["/a", "/b", "/a/b", "/a/c", "/b/a", "/c"]
    try:
        together = read_files_from_layers(img.sources, paths)
    except (ProxyError, OSError) as e:
        # an unsafe tree fails the same way path by path, for some path
        with pytest.raises(type(e)):
            for path in paths:
                try:
                    read_file_from_layers(img.sources, path)
                except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                    pass
                except OSError as inner:
                    if inner.errno not in (errno.EINVAL, errno.ELOOP):
                        raise
        return
    one_by_one = {}
    for path in paths:
        try:
            one_by_one[path] = read_file_from_layers(img.sources, path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            pass
        except OSError as e:
            assert e.errno in (errno.EINVAL, errno.ELOOP)  # not a regular file, a loop
    assert together == one_by_one


@pytest.mark.integration
def test_through_the_proxy_sync_and_async(
    skopeo_release: SkopeoRelease, layout_builder: LayoutBuilder
) -> None:
    layout_builder.add_image(
        "scan",
        [
            make_tar({"etc/os-release": b"ID=test\n", "var/lib/dpkg/status": b"Package: a\n"}),
            make_tar({"var/lib/dpkg/status": b"Package: b\n"}),
        ],
    )
    ref = layout_builder.ref("scan")
    expected = {OS_RELEASE: b"ID=test\n", DPKG: b"Package: b\n"}
    config = make_config(skopeo_release)
    with ImageProxy(config) as proxy, proxy.open_image(ref) as img:
        assert read_files(proxy, img, [OS_RELEASE, DPKG, "/missing"]) == expected
        assert read_file(proxy, img, DPKG) == expected[DPKG]

    async def main() -> dict[str, bytes]:
        async with AsyncImageProxy(config) as proxy:
            img = await proxy.open_image(ref)
            async with img:
                return await read_files_async(proxy, img, [OS_RELEASE, DPKG])

    assert asyncio.run(main()) == expected
