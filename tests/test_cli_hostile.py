"""The tool facing an image built to attack the terminal, and the modes of what it writes.

The image's file names, link target and labels carry escape sequences (a window title, a
screen clear), a newline that would forge a line of ``ls -l`` and a byte that is not UTF-8.
On a terminal they are shown escaped as GNU ``ls`` shows names; through a pipe, and as
JSON, they stay exact. Files the tool creates get ``0666 & ~umask``; ``unpack`` gives the
destination directory the umask's mode too, while the tree inside keeps the layers' modes.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.cli import TOOL, cli, ok, one_line_error, run_in_pty, screen
from testbed.images import ImageInfo, LayoutBuilder, Layouts, corrupt_blob

pytestmark = pytest.mark.integration

TITLE = "\x1b]0;pwned\x07"  # sets the window title
CLEAR = "\x1b[2J"  # clears the screen
NAMES = {  # name in the image -> as shown on a terminal
    f"evil{TITLE}": "'evil'$'\\033'']0;pwned'$'\\a'",
    "line\n-rw-r--r--  1 root 1 1970-01-01 00:00 forged": (
        "'line'$'\\n''-rw-r--r--  1 root 1 1970-01-01 00:00 forged'"
    ),
    "bad\udcff": "'bad'$'\\377'",  # the byte 0xff, not UTF-8
    "link": "link",
    "plain": "plain",
}
LINK_TARGET = f"{CLEAR}/target"
LABELS = {f"key{CLEAR}": f"value{TITLE}", "note": "two\nlines", "ok": "fine"}


def tar_member(
    tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, **kw: str
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, 0
    info.linkname = kw.get("link", "")
    data = kw.get("data", "").encode("utf-8", "surrogateescape")
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def hostile_layer() -> bytes:
    buf = io.BytesIO()
    # GNU format with surrogateescape: the names' bytes go into the headers as they are
    with tarfile.open(
        fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, errors="surrogateescape"
    ) as tar:
        tar_member(tar, "./", tarfile.DIRTYPE, mode=0o777)  # the root: world-writable
        for name in NAMES:
            if name == "link":
                tar_member(tar, name, tarfile.SYMTYPE, mode=0o777, link=LINK_TARGET)
            else:
                tar_member(tar, name, mode=0o640 if name == "plain" else 0o644, data=name[:4])
    return buf.getvalue()


@dataclass(frozen=True)
class Hostile:
    builder: LayoutBuilder
    image: ImageInfo

    @property
    def ref(self) -> str:
        return self.builder.ref("hostile")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    builder = LayoutBuilder(tmp_path_factory.mktemp("hostile") / "oci")
    info = builder.add_image(
        "hostile",
        [hostile_layer()],
        config_extra={"config": {"Labels": LABELS, "Cmd": [f"/bin/{TITLE}"]}},
    )
    return Hostile(builder, info)


def on_terminal(*args: str) -> tuple[int, bytes]:
    return run_in_pty([*TOOL, "--quiet", *args])


def assert_inert(output: bytes) -> None:
    """Nothing from the image that a terminal would act on reached it."""
    assert b"\x1b" not in output and b"\x07" not in output, output
    assert b"\xff" not in output


# --- names, link targets, labels -------------------------------------------------------------


def test_ls_on_a_terminal_escapes_names(hostile: Hostile) -> None:
    code, out = on_terminal("ls", hostile.ref, "/")
    assert code == 0, out
    assert_inert(out)
    assert screen(out) == sorted(NAMES.values(), key=lambda s: s.strip("'"))


def test_ls_long_on_a_terminal_escapes_names_and_link_targets(hostile: Hostile) -> None:
    code, out = on_terminal("ls", "-l", hostile.ref, "/")
    assert code == 0, out
    assert_inert(out)
    lines = screen(out)
    assert len(lines) == len(NAMES)  # the newline in a name forged no line
    shown = {line.split(" 00:00 ", 1)[1] for line in lines}
    expected = set(NAMES.values()) - {"link"}
    assert shown == expected | {"link -> ''$'\\033''[2J/target'"}


def test_through_a_pipe_names_and_json_are_exact(hostile: Hostile) -> None:
    raw = ok(cli("ls", hostile.ref, "/"))
    expected = sorted(os.fsencode(n) for n in NAMES)
    assert raw == b"".join(n + b"\n" for n in expected)
    entries = json.loads(ok(cli("ls", "--json", hostile.ref, "/")))
    assert sorted(os.fsencode(e["name"]) for e in entries) == expected
    link = next(e for e in entries if e["name"] == "link")
    assert link["linkname"] == LINK_TARGET
    doc = json.loads(ok(cli("inspect", "--json", hostile.ref)))
    assert doc["config"]["config"]["Labels"] == LABELS


def test_json_on_a_terminal_is_exact_and_inert(hostile: Hostile) -> None:
    code, out = on_terminal("inspect", "--json", hostile.ref)
    assert code == 0, out
    assert_inert(out)  # JSON escapes every control character
    doc = json.loads(out.replace(b"\r\n", b"\n"))
    assert doc["config"]["config"]["Labels"] == LABELS


def test_inspect_on_a_terminal_escapes_labels_and_cmd(hostile: Hostile) -> None:
    code, out = on_terminal("inspect", hostile.ref)
    assert code == 0, out
    assert_inert(out)
    lines = screen(out)
    start = lines.index("Labels:")
    assert lines[start + 1 :] == [
        "  'key'$'\\033''[2J'='value'$'\\033'']0;pwned'$'\\a'",
        "  note='two'$'\\n''lines'",
        "  ok=fine",
    ]
    assert 'Cmd:        ["/bin/\\u001b]0;pwned\\u0007"]' in lines
    # through a pipe, the summary shows the labels as they are
    text = ok(cli("inspect", hostile.ref)).decode()
    assert f"  key{CLEAR}=value{TITLE}\n" in text


def test_error_messages_escape_paths(hostile: Hostile) -> None:
    path = f"/nope{TITLE}\nforged"
    shown = "'/nope'$'\\033'']0;pwned'$'\\a\\n''forged'"
    code, out = on_terminal("ls", hostile.ref, path)
    assert code == 3
    assert_inert(out)
    message = f"containers-image-proxy: {shown}: no such file or directory in the image"
    assert screen(out) == [message]
    # stderr is for a person even when it is not a terminal
    assert one_line_error(cli("ls", hostile.ref, path)) == message


# --- modes of what the tool writes -----------------------------------------------------------


def run_with_umask(umask: int, args: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*TOOL, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        preexec_fn=lambda: os.umask(umask),
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("umask,expected", [(0o077, 0o600), (0o022, 0o644), (0o002, 0o664)])
def test_blob_output_follows_the_umask(
    layouts: Layouts, tmp_path: Path, umask: int, expected: int
) -> None:
    layer = layouts.small.layers[0]
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    existing.write_bytes(b"old")
    existing.chmod(0o600)
    for target in (fresh, existing):
        ok(run_with_umask(umask, ["blob", "-o", str(target), layouts.ref("small"), layer.digest]))
        assert target.read_bytes() == layer.blob
        assert mode(target) == expected, oct(mode(target))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "fresh"]


def test_pull_follows_the_umask(layouts: Layouts, tmp_path: Path) -> None:
    dest = tmp_path / "layout"
    ok(run_with_umask(0o027, ["pull", layouts.ref("small"), f"{dest}:x"]))
    paths = [dest, *dest.rglob("*")]
    assert len(paths) > 6  # oci-layout, index.json, blobs/sha256 and five blobs
    for path in paths:
        assert mode(path) == (0o750 if path.is_dir() else 0o640), (path, oct(mode(path)))


def test_unpack_destination_follows_the_umask(hostile: Hostile, tmp_path: Path) -> None:
    new = tmp_path / "new"
    ok(run_with_umask(0o027, ["unpack", "--rootless", hostile.ref, str(new)]))
    # the layer's "./" entry says 0777: the directory the user asked for follows the umask
    assert mode(new) == 0o750
    # inside, the layers' own modes, whatever the umask
    assert mode(new / "plain") == 0o640 and mode(new / "bad\udcff") == 0o644
    assert os.readlink(new / "link") == LINK_TARGET

    existing = tmp_path / "existing"
    existing.mkdir(mode=0o700)
    ok(run_with_umask(0o022, ["unpack", "--rootless", hostile.ref, str(existing)]))
    assert mode(existing) == 0o700 and (existing / "plain").read_bytes() == b"plai"


def test_failed_unpack_leaves_no_destination(layout_builder: LayoutBuilder, tmp_path: Path) -> None:
    info = layout_builder.add_image("broken", [hostile_layer()])
    corrupt_blob(layout_builder, info.layers[0].digest)
    dest = tmp_path / "rootfs"
    proc = run_with_umask(0o022, ["unpack", "--rootless", layout_builder.ref("broken"), str(dest)])
    assert proc.returncode == 1, proc.stderr
    assert not dest.exists()
    assert sorted(os.listdir(tmp_path)) == ["oci"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
