"""docs/cli.md against the parser, and the layout of ``--help``: every command, option and
exit status the page lists is the tool's, with the same names and metavars, and the other
way round; a command's help shows its own options before the global ones, which it lists
once. No skopeo needed: the parser is built in-process (COLUMNS fixed, so no terminal width
changes the text)."""

from __future__ import annotations

import argparse
import re

import pytest

from containers_image_proxy.cli._errors import EXIT_STATUSES
from containers_image_proxy.cli._options import build_parser
from testbed.cli import ROOT

DOC = (ROOT / "docs" / "cli.md").read_text()
OPTION = re.compile(r"(?<![\w-])(--?[a-z][\w.-]*)")


@pytest.fixture(autouse=True)
def fixed_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")


def section(title: str) -> str:
    """The text of the ``## title`` section (its ### subsections included)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, re.M | re.S)
    assert match, title
    return match.group(1)


def first_cells(text: str) -> list[str]:
    """The first cell of each row of the tables in ``text`` (header rows left out)."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    # a pipe inside a cell is escaped (\|), as GitHub's and MkDocs' tables want it
    cells = [
        re.split(r"(?<!\\)\|", row)[1].strip().replace("\\|", "|")
        for row in rows
        if not row.startswith("|---")
    ]
    return [c for c in cells if c not in ("command", "option", "status")]


def split_synopsis(text: str) -> list[str]:
    """``pull IMAGE DIR[:TAG] [-j N]`` -> ``["pull", "IMAGE", "DIR[:TAG]", "[-j N]"]``:
    words split at spaces outside brackets (a metavar may hold brackets of its own)."""
    words, word, depth = [], "", 0
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == " " and depth == 0:
            words.append(word)
            word = ""
        else:
            word += ch
    return [w for w in [*words, word] if w]


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def global_actions() -> list[argparse.Action]:
    parser = build_parser()
    (group,) = [g for g in parser._action_groups if g.title and g.title.startswith("global")]
    return list(group._group_actions)


def own_actions(p: argparse.ArgumentParser) -> list[argparse.Action]:
    """A command's own arguments: not help, not a global option."""
    shared = {a.dest for a in global_actions()}
    return [a for a in p._actions if a.dest not in shared and a.dest != "help"]


# --- docs/cli.md and the parser --------------------------------------------------------------


def test_the_command_table_is_the_parser() -> None:
    cells = [c.strip("`").split("`")[0] for c in first_cells(section("Commands"))]
    documented = {c.split()[0]: c for c in cells}
    parsers = commands()
    assert sorted(documented) == sorted(parsers)
    for name, p in parsers.items():
        synopsis = documented[name]
        own = own_actions(p)
        positionals = [a for a in own if not a.option_strings]
        words = split_synopsis(synopsis)[1:]
        # the arguments, in order (an optional one in brackets)
        want = [f"[{a.metavar}]" if a.nargs == "?" else str(a.metavar) for a in positionals]
        assert [w for w in words if not w.startswith("[-")] == want, name
        # the options, each with its metavar, and no other
        shown: dict[str, object] = {}
        for w in words:
            if w.startswith("[-"):
                option, _, metavar = w[1:-1].partition(" ")
                shown[option] = metavar or None
        options = [a for a in own if a.option_strings]
        for action in options:
            (name_shown,) = set(action.option_strings) & set(shown)
            metavar = None if action.nargs == 0 else action.metavar
            assert shown[name_shown] == metavar, (name, name_shown)
        assert len(shown) == len(options), (name, shown)


def test_the_global_option_table_is_the_parser() -> None:
    cells = first_cells(section("Global options"))
    actions = global_actions()
    by_string = {s: a for a in actions for s in a.option_strings}
    mentioned = {s for cell in cells for s in OPTION.findall(cell)}
    assert mentioned <= set(by_string), mentioned - set(by_string)
    for action in actions:
        assert set(action.option_strings) & mentioned, action.option_strings
    # a metavar, where the table gives one, is the parser's
    for cell in cells:
        for opt, meta in re.findall(r"`(--?[a-z][\w.-]*)(?:\[=| )([A-Z]+)\]?`", cell):
            assert by_string[opt].metavar == meta, opt


def test_exit_statuses_in_docs_and_help_are_the_same() -> None:
    rows = [line.split("|")[1].strip() for line in section("Exit status").splitlines()
            if re.match(r"\| \d+ \|", line)]  # fmt: skip
    documented = [int(code) for code in rows]
    top = build_parser().format_help()
    listed = top.split("exit status:\n", 1)[1]
    in_help = [int(m) for m in re.findall(r"^  (\d+) ", listed, re.M)]
    assert documented == in_help == [code for code, _ in EXIT_STATUSES]
    assert {0, 1, 2, 3, 130, 143} <= set(in_help)


# --- the layout of --help ---------------------------------------------------------------------


def test_command_help_shows_its_own_options_first_and_the_global_ones_once() -> None:
    globals_ = global_actions()
    for name, p in commands().items():
        text = p.format_help()
        usage = text.split("\n\n", 1)[0]
        assert usage.startswith(f"usage: containers-image-proxy {name} "), name
        assert usage.endswith("[GLOBAL OPTIONS]"), usage
        for action in globals_:
            assert not set(action.option_strings) & set(OPTION.findall(usage)), (name, usage)
        lines = text.splitlines()
        heading = lines.index("global options (before or after the command):")
        # every global option listed once, all of them under the last heading
        for action in globals_:
            listed = [
                i for i, line in enumerate(lines)
                if re.match(rf"  {re.escape(action.option_strings[0])}[ ,]", line)
            ]  # fmt: skip
            assert len(listed) == 1 and listed[0] > heading, (name, action.option_strings)
        # the command's own options before it
        for action in own_actions(p):
            where = [i for i, line in enumerate(lines) if line.startswith(f"  {action.metavar}")]
            if action.option_strings:
                where = [
                    i for i, line in enumerate(lines)
                    if line.startswith(f"  {action.option_strings[0]}")
                ]  # fmt: skip
            assert where and all(i < heading for i in where), (name, action.dest)
