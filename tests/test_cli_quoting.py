"""How the tool shows names from an image on a terminal, checked against the real GNU ``ls``
(``--quoting-style=shell-escape``, its default on a terminal) and against bash, which must
read every quoted name back as the exact bytes of the name."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from containers_image_proxy.cli._quoting import escape_controls, shell_escape

# Every printable ASCII character, inside a name and at its start, and names that mix
# quotes, shell characters, controls, bytes that are not UTF-8 and printable non-ASCII.
NAMES: list[bytes] = [
    *(b"x" + bytes([c]) + b"y" for c in range(0x20, 0x7F) if c != ord("/")),
    *(bytes([c]) + b"y" for c in range(0x20, 0x7F) if c not in b"/."),
    *(b"a" + bytes([c]) + b"b" for c in range(1, 0x20)),
    b"plain", b"{", b"}", b"{}", b"#", b"~", b"'", b"''", b"a''b", b"a'b", b"a'b c",
    b"a'b$", b"a'b#", b"a'b{", b"a'b@", b"a'b~", b"\xc3\xa9'b c", b"'\xc3\xa9'",
    b"\nb", b"a\n", b"a\n\tb", b"a b\n", b"\x1b]0;title\x07", b"a\x1b[2Jb",
    b"\x7f", b"a\x7fb", b"\xff", b"a\xffb", b"\xc3", b"a\xe2\x80b", b"caf\xc3\xa9",
    b"a\xc2\x85b", b"a\xc2\x9bb", b"a'\nb", b"'\n", b"''\n", b"\n'", b"a\x1b'b",
    b"a\x1b''b", b"'a\tb", b"\tx'", b"a\x1b\\b", b"\xe6\x97\xa5\xe6\x9c\xac",
]  # fmt: skip

# Where ls is knowingly not followed (see cli/_quoting.py): characters glibc calls
# printable and Python does not, and names with a quote whose quoting ls restarts while
# it still thinks it is inside $'...' (a redundant '', or a wrong quoting).
DIFFERENT_FROM_LS: dict[bytes, str] = {
    b"\xe2\x80\xaeb": "'"  + "'$'\\342\\200\\256''b'",  # RIGHT-TO-LEFT OVERRIDE
    b"\xc2\xa0x": "''$'\\302\\240''x'",  # NO-BREAK SPACE
    b"a'b\t": "'a'\\''b'$'\\t'",  # ls: '''a'\''b'$'\t'
    b"a'\xc2\x85": "'a'\\'''$'\\302\\205'",  # ls: '''a'\'''$'\302\205'
    b"\ta'b\n": "''$'\\t''a'\\''b'$'\\n'",  # ls: '\t''a'\''b'$'\n', which reads as \t
}  # fmt: skip


def show(name: bytes) -> str:
    return shell_escape(os.fsdecode(name))


def ls_lines(directory: Path) -> list[str]:
    out = subprocess.run(
        ["ls", "-1", "--quoting-style=shell-escape", str(directory)],
        env={**os.environ, "LC_ALL": "C.UTF-8"},
        capture_output=True,
        check=True,
    ).stdout
    return out.decode("utf-8").splitlines()


@pytest.fixture(scope="module")
def ls_version() -> str:
    if shutil.which("ls") is None:
        pytest.skip("no ls")
    first = subprocess.run(["ls", "--version"], capture_output=True, text=True).stdout
    if "GNU coreutils" not in first:
        pytest.skip("ls is not GNU ls")
    return first.splitlines()[0]


def make_files(directory: Path, names: list[bytes]) -> None:
    directory.mkdir()
    for name in names:
        with open(os.path.join(os.fsencode(directory), name), "wb"):
            pass


def test_same_as_gnu_ls(ls_version: str, tmp_path: Path) -> None:
    assert len(set(NAMES)) == len(NAMES)
    make_files(tmp_path / "names", NAMES)
    expected = sorted(ls_lines(tmp_path / "names"))
    assert len(expected) == len(NAMES)  # one line per name: ls escaped every newline
    assert sorted(show(n) for n in NAMES) == expected


def test_where_ls_is_not_followed(ls_version: str, tmp_path: Path) -> None:
    make_files(tmp_path / "names", list(DIFFERENT_FROM_LS))
    by_ls = set(ls_lines(tmp_path / "names"))
    for name, ours in DIFFERENT_FROM_LS.items():
        assert show(name) == ours
        assert ours not in by_ls  # still a difference: if ls changes, so can we


def test_bash_reads_every_quoting_back_exactly(tmp_path: Path) -> None:
    names = [*NAMES, *DIFFERENT_FROM_LS, b"", b"-n", b"a  b", b"\\", b"$(reboot)", b"`id`"]
    script = "".join(f"printf '%s\\0' {show(n)}\n" for n in names)
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True).stdout
    assert out.split(b"\0")[:-1] == names


@pytest.mark.parametrize("name", NAMES + list(DIFFERENT_FROM_LS))
def test_nothing_unprintable_gets_through(name: bytes) -> None:
    assert show(name).isprintable()


def test_messages_escape_only_what_cannot_be_shown() -> None:
    assert escape_controls("ls: /etc: é ok") == "ls: /etc: é ok"
    text = "GetBlob: \x1b]0;owned\x07 \udcff \u202e"
    assert escape_controls(text) == "GetBlob: \\033]0;owned\\a \\377 \\342\\200\\256"
